"""Carrying each sample's index through a DataLoader, next to its data.

The InfoBatch sampler needs to know which samples a batch's losses belong to. Instead of
patching PyTorch's loader, the dataset wrapper returns ``(index, item)`` and the collate
function splits them again, so the indices survive wrapped datasets, custom collate
functions and prefetching worker processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data._utils.collate import default_collate

from curator.train.sampler import InfoBatchSampler

__all__ = ["IndexedCollate", "IndexedDataset", "indexed_loader"]


class IndexedDataset(Dataset):
    """Wraps a map-style dataset so each item is ``(index, item)``.

    The index is the position in *this* dataset (what the sampler yields), so it stays
    right under ``Subset`` and other wrappers, and it travels inside the batch through
    worker processes and prefetch queues: no hook has to guess which batch is which.
    """

    def __init__(self, dataset: Dataset) -> None:
        if isinstance(dataset, IterableDataset):
            raise TypeError("InfoBatch needs a map-style dataset (with __getitem__ and __len__), "
                            "not an IterableDataset")
        if not hasattr(dataset, "__len__"):
            raise TypeError("InfoBatch needs a dataset with __len__")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, Any]]:
        # the DataLoader's batched fetch; keep the wrapped dataset's own fast path if it has one
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return list(zip(indices, items, strict=True))


class IndexedCollate:
    """Collate ``(index, item)`` pairs into ``(int64 index tensor, collate_fn(items))``.

    Lets a custom collate function see only the items, as it expects. A class rather than
    a closure so that it pickles into spawned worker processes.
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        self.collate_fn = default_collate if collate_fn is None else collate_fn

    def __call__(self, batch: list[tuple[int, Any]]) -> tuple[torch.Tensor, Any]:
        indices = torch.tensor([int(i) for i, _ in batch], dtype=torch.int64)
        return indices, self.collate_fn([item for _, item in batch])


def indexed_loader(dataset: Dataset, sampler: InfoBatchSampler,
                   collate_fn: Callable[[list[Any]], Any] | None = None, **loader_kwargs: Any) -> DataLoader:
    """A DataLoader over ``dataset`` whose batches are ``(indices, collate_fn(items))``."""
    if len(dataset) != sampler.num_samples:  # type: ignore[arg-type]
        raise ValueError(f"dataset has {len(dataset)} items but the sampler was built for "  # type: ignore[arg-type]
                         f"{sampler.num_samples}")
    for bad in ("shuffle", "batch_sampler"):
        if loader_kwargs.get(bad):
            raise ValueError(f"{bad} conflicts with the InfoBatch sampler (it shuffles itself)")
    return DataLoader(IndexedDataset(dataset), sampler=sampler, collate_fn=IndexedCollate(collate_fn),
                      **loader_kwargs)
