"""Training on a curated set with the InfoBatch sampler: the sampler, datasets, models, the loop.

Everything a training worker needs that does not need Ray: the InfoBatch sampler, its
pruning rule and score table, and the loader that carries sample indices (``sampler``,
``rule``, ``scores``, ``loader``), the curated set's committed Parquet parts read with
pyarrow and datasets over its Arrow columns (``datasets``), the three built-in models
(``models``), and :class:`EpochLoop`, one epoch of training plus evaluation with the
sampler (``loop``). ``pipelines/train.py`` runs it inside Ray Train workers; the InfoBatch
benchmark runs it in-process. It works the same in one process and under
``torch.distributed`` (the sampler exchanges losses between ranks once per epoch; the
loop all-reduces the epoch's metrics).

Built-in tasks:

- ``linear``: a linear probe on the stored embeddings (standardised with the training
  split's mean and std, kept as buffers so a checkpoint carries them);
- ``mlp``: two hidden layers on the same standardised embeddings;
- ``cnn``: a small BatchNorm CNN (three conv blocks, global average pooling) on the
  stored images, any size from 8x8 up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: where each public name lives. The package's modules need torch (~0.5 s and ~600 MB resident to
#: import), so a name is imported when it is first used: the `curator` command builds its parser from
#: every subcommand, and `curator serve`'s driver, `query` or `export` must not load torch for `train`.
_HOME = {
    "datasets": ("PRELOAD_BYTES", "ArrowEmbeddingDataset", "ArrowImageDataset", "build_dataset", "curated_parts",
                 "embedding_matrix", "initial_scores", "labels_of", "read_parts", "split_eval"),
    "loader": ("IndexedCollate", "IndexedDataset", "indexed_loader"),
    "loop": ("SAMPLER_PARTS", "EpochLoop", "TimedSampler", "make_sampler"),
    "models": ("Standardize", "build_model", "feature_stats", "load_model"),
    "rule": ("MAX_PRUNE_RATIO", "MULTI_BAND"),
    "sampler": ("InfoBatchSampler", "InfoBatchStats"),
    "tasks": ("TASK_COLUMNS", "TASKS", "TrainSettings", "parse_bands"),
}
_MODULE_OF = {name: mod for mod, names in _HOME.items() for name in names}

if TYPE_CHECKING:
    from curator.train.datasets import (
        PRELOAD_BYTES,
        ArrowEmbeddingDataset,
        ArrowImageDataset,
        build_dataset,
        curated_parts,
        embedding_matrix,
        initial_scores,
        labels_of,
        read_parts,
        split_eval,
    )
    from curator.train.loader import IndexedCollate, IndexedDataset, indexed_loader
    from curator.train.loop import SAMPLER_PARTS, EpochLoop, TimedSampler, make_sampler
    from curator.train.models import Standardize, build_model, feature_stats, load_model
    from curator.train.rule import MAX_PRUNE_RATIO, MULTI_BAND
    from curator.train.sampler import InfoBatchSampler, InfoBatchStats
    from curator.train.tasks import TASK_COLUMNS, TASKS, TrainSettings, parse_bands


def __getattr__(name: str) -> Any:
    mod = _MODULE_OF.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = [
    "MAX_PRUNE_RATIO",
    "MULTI_BAND",
    "PRELOAD_BYTES",
    "SAMPLER_PARTS",
    "TASKS",
    "TASK_COLUMNS",
    "ArrowEmbeddingDataset",
    "ArrowImageDataset",
    "EpochLoop",
    "IndexedCollate",
    "IndexedDataset",
    "InfoBatchSampler",
    "InfoBatchStats",
    "Standardize",
    "TimedSampler",
    "TrainSettings",
    "build_dataset",
    "build_model",
    "curated_parts",
    "embedding_matrix",
    "feature_stats",
    "indexed_loader",
    "initial_scores",
    "labels_of",
    "load_model",
    "make_sampler",
    "parse_bands",
    "read_parts",
    "split_eval",
]
