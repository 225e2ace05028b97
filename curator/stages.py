"""The stages of a run -- validate, filter (when the config has [[filters]]), embed, select-and-write --
and the one builder that makes them.

A stage says *what*; an executor says *how* (NeMo Curator's split). Every stage has a `name` (its
role), declared `resources`, a `setup()` that loads what it needs once in the process that will run
it, and a `process(batch)` from one typed batch (`curator.batch`) to the next. The in-process loop
(`curator.run`) and the Ray actor graph (`pipelines.executors`) run the *same* stage objects, as
`build_stages(cfg)` makes them, and address them by role (`Stages`). Only the last stage,
select-and-write, keeps state across batches and makes anything durable: every commit checkpoints
its selector with the rows it decided; the stages before it are plain batch-in, batch-out calls.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from curator.batch import (
    BatchOutcome,
    EmbeddedBatch,
    Positions,
    RawBatch,
    SelectedBatch,
    ValidBatch,
    advance,
    positions_from_json,
)
from curator.commit import Committed, Manifest
from curator.config import RunConfig
from curator.config_text import to_toml
from curator.embed import Embedder, PrecomputedEmbedder, build_embedder
from curator.embed.hashes import held_keys, keys_of
from curator.ops import build_rules
from curator.ops.stage import FilterStage
from curator.records import (
    DECISION_SCHEMA,
    Fault,
    Limits,
    Position,
    Rejection,
    rejection_decisions,
    rejections_table,
)
from curator.resources import Resources
from curator.select import InfoGrowthSelector, kept_table
from curator.select.hashdup import KEY_COLUMNS
from curator.select.shard import ShardClient
from curator.select.sharded import ShardedIndex, probe_cap
from curator.select.warm import load_compiled
from curator.store.lock import RunDirLock
from curator.store.shards import LocalStoredShard, StoredShard, StoredShardClient
from curator.store.writer import StoreError, StoreWriter, read_manifest, read_table
from curator.validate import validate_batch, validate_records

log = logging.getLogger(__name__)

S = TypeVar("S")




class Stage(Protocol):
    name: str
    resources: Resources

    def setup(self) -> Any:
        """Load models, open files, restore state: once, in the process that runs the stage."""
        ...

    def process(self, batch: Any) -> Any:
        """One typed batch in, the next typed batch out."""
        ...

    def teardown(self) -> None:
        ...


# --------------------------------------------------------------------------------------- validate
class ValidateStage:
    """Raw records -> validated samples and rejections (`curator.validate`: the only place)."""

    name = "validate"

    def __init__(self, limits: Limits, resources: Resources = Resources()) -> None:
        self.limits = limits
        self.resources = resources

    def setup(self) -> None:
        # One made-up record, so the first batch does not pay pyarrow's lazy imports (~0.2 s: pandas, on
        # the first Table.from_pylist in a process) while batches queue behind it.
        validate_records([{"id": "warm-up", "text": "warm-up", "image": b"warm-up", "label": 0}],
                         [Position("warm-up", 0, 0)], self.limits)

    def process(self, batch: RawBatch) -> ValidBatch:
        return validate_batch(batch, self.limits)

    def teardown(self) -> None:
        return None


# ------------------------------------------------------------------------------------------ embed
@dataclass(frozen=True)
class EmbedInfo:
    model_id: str
    image_dim: int | None
    text_dim: int | None


def embedding_rejections(samples: pa.Table, errors: dict[int, Fault]) -> list[Rejection]:
    """Rejections, at their positions, for the rows an embedder could not embed (in row order)."""
    out = []
    for j in sorted(errors):
        row = samples.slice(j, 1).select(["id", "source", "partition", "offset"]).to_pylist()[0]
        out.append(Rejection(Position(row["source"], row["partition"], row["offset"]), errors[j].reason, row["id"],
                             code=errors[j].code))
    return out


#: Why a record has no place in a run's space (`selector.space`), by space.
OUT_OF_SPACE = {
    "image": Fault("no-image", "record has no image, and this run compares items by their images "
                               "(selector.space = 'image'): a caption alone has no place among image embeddings; "
                               "give it an image (or a path or URI to one), or curate caption-only data with "
                               "--selector.space text"),
    "text": Fault("no-text", "record has no caption, and this run compares items by their captions alone "
                             "(selector.space = 'text'); give it a 'text' (or 'caption')"),
}


class EmbedStage:
    """Validated samples -> their embeddings; rows that cannot be embedded, or have no place in the run's
    space (`selector.space`), become rejections.

    In an image run every item the selector sees has an image embedding (and a text one when it has a
    caption); in a text run it has a text embedding and nothing else: images are not even decoded. So an
    item is never compared in a space it has no vector in, and the curated set's `embedding` column
    holds one kind of vector per run."""

    name = "embed"

    def __init__(self, embedder: Embedder, resources: Resources = Resources(cpus=1.0), space: str = "image") -> None:
        if space not in OUT_OF_SPACE:
            raise ValueError(f"space must be one of {', '.join(OUT_OF_SPACE)}, got {space!r}")
        self.embedder = embedder
        self.resources = resources
        self.space = space

    def setup(self) -> EmbedInfo:
        self.embedder.setup()
        return EmbedInfo(self.embedder.model_id, self.embedder.image_dim, self.embedder.text_dim)

    def process(self, batch: ValidBatch) -> EmbeddedBatch:
        e = self.embedder
        if batch.embedding_dim and isinstance(e, PrecomputedEmbedder) and e.image_dim is None:
            e.setup(batch.embedding_dim)  # the stream's dimension, so parallel embedders agree
        samples, rejects = batch.samples, list(batch.rejects)
        emb = None
        if samples.num_rows:
            if self.space == "text":  # the embedder is not handed the images; a row without a caption has no place
                emb = e.embed(samples.drop_columns(["image", "image_uri"]))
                missing = samples.column("text").is_null().to_numpy(zero_copy_only=False)
            else:
                emb = e.embed(samples)
                missing = ~emb.has_image & emb.ok
            for j in np.flatnonzero(missing):
                emb.errors[int(j)] = OUT_OF_SPACE[self.space]
        if emb is not None and emb.errors:
            rejects.extend(embedding_rejections(samples, emb.errors))
            good = np.setdiff1d(np.arange(samples.num_rows), np.asarray(sorted(emb.errors)))
            samples = samples.take(pa.array(good, pa.int64()))
            emb = emb.take(good)
        return EmbeddedBatch(samples, emb, rejects, batch.positions, batch.items, e.model_id, batch.trusted,
                             filtered=batch.filtered)

    def teardown(self) -> None:
        return None


# ------------------------------------------------------------------------------ select and write
@dataclass
class Resume:
    """Where a run continues from: what the select-and-write stage found in the run directory."""

    out: str
    positions: Positions
    commit: int  # the commit resumed from (0: a new run)
    bootstrapped: bool
    decided: int  # items the selector has decided (bootstrap included)
    index_size: int
    index_dim: int | None


class SelectWriteStage:
    """Embedded samples -> one decision each (InfoGrowth), staged for the next commit; `commit()` makes
    them durable together with the state of the selector that made them.

    One stage, not two, because a checkpoint must hold the very selector whose decisions it writes:
    this is the only stage that owns state across batches (the index, the run directory), the only one
    that makes anything durable, and so the one an executor places by itself. A commit writes every
    shard's staged Parquet parts and index snapshot, then the selector's state and the manifest naming
    all of it with the source positions it covers (`StoreWriter.commit`); `curator.commit` runs the rest
    of the protocol.
    """

    name = "select"

    def __init__(self, cfg: RunConfig, model_id: str, text_embedder: Embedder | None = None,
                 resources: Resources = Resources(cpus=1.0), shards: list[StoredShardClient] | None = None,
                 shard: int = 0, lock_timeout_s: float = 60.0) -> None:
        self.cfg = cfg
        self.model_id = model_id
        self.resources = resources
        self.fingerprint = cfg.fingerprint()
        self._text_embedder = text_embedder  # only a recaption hook needs it: loaded on first use
        # the shards: in this process unless an executor puts them elsewhere (`pipelines.executors.shards`)
        self.shards: list[StoredShardClient] = shards or [
            LocalStoredShard(StoredShard(k, cfg.index, cfg.store.out)) for k in range(cfg.selector.shards)]
        self.shard = shard
        self.lock_timeout_s = lock_timeout_s
        self.selector: InfoGrowthSelector | None = None
        self.writer: StoreWriter | None = None
        self.positions: Positions = {}
        self.counts: Counter[str] = Counter()
        self.bootstrapped = False
        self._lock: RunDirLock | None = None
        self._pending = 0

    # --- setup: the run directory, then the selector as its last commit left it ---------------------
    def setup(self) -> Resume:
        out = Path(self.cfg.store.out)
        self._lock = RunDirLock(out)
        self._lock.acquire(self.lock_timeout_s)
        self._check_shards(out)
        keys = self.cfg.embedder.content_keys
        self.writer = StoreWriter.open(out, {"model": self.model_id, "config_fingerprint": self.fingerprint,
                                             "content_keys": keys_of(keys)}, self.shard)
        m = self.writer.manifest
        m["content_keys"] = keys = self._run_keys(out, held_keys(m), keys)
        (out / "config.toml").write_text(to_toml(self.cfg))
        clients: list[ShardClient] = list(self.shards)
        self.selector = InfoGrowthSelector(self.cfg.selector, self.cfg.index, fingerprint=self.fingerprint,
                                           text_embed=self._embed_texts, shards=clients, keys=keys)
        for c in self.shards:
            c.setup(m if m["commit"] > 0 else None)  # each restores its index snapshot, drops uncommitted parts
        if m["commit"] > 0:
            self.positions = positions_from_json(m["positions"])
            self.counts = Counter(m.get("counts") or {})
            self.bootstrapped = bool(m.get("bootstrapped"))
            if m.get("selector_state"):
                self.restore(m["selector_state"])
            log.info("resuming %s from commit %d (%d items decided)", out, m["commit"], sum(self.counts.values()))
        log.debug("selection loop loaded in %.2f s", load_compiled(self.cfg.selector))  # not in the first batch
        return Resume(str(out.resolve()), {s: dict(p) for s, p in self.positions.items()}, int(m["commit"]),
                      self.bootstrapped, self.selector.seq, self.index_size, self.index_dim)

    @staticmethod
    def _run_keys(out: Path, held: str, asked: str) -> str:
        """The content keys this run computes: the ones its decisions hold (a copy of an earlier item is
        found only by equal keys), which `build_stages` gave the embedders (`with_run_keys`)."""
        if asked not in ("auto", held):
            raise StoreError(f"{out} holds content keys made with {held}, but this run makes {asked}: the "
                             "exact-copy rule would miss every copy of an item decided before. Run with "
                             f"--embedder.content_keys {held} (or auto), or start a new run directory")
        return held

    def _check_shards(self, out: Path) -> None:
        m0 = read_manifest(out)
        n = int(((m0 or {}).get("shards") or {}).get("n", 1)) if m0 else self.cfg.selector.shards
        if m0 and n != self.cfg.selector.shards:
            raise StoreError(f"{out} was curated with selector.shards = {n}; it cannot resume with "
                             f"{self.cfg.selector.shards} (each shard holds its own index): run with "
                             f"--selector.shards {n}, or start a new run directory")

    def restore(self, state: dict[str, Any]) -> None:
        """The selector's state from the manifest; its hash table from the committed decisions."""
        assert self.selector is not None and self.writer is not None
        self.selector.load_state_dict(state, self.writer.read_state_file)
        self.selector.restore_hashes(read_table(self.cfg.store.out, "decisions", KEY_COLUMNS))

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        if self._text_embedder is None:
            self._text_embedder = build_embedder(self.cfg.embedder)
        self._text_embedder.setup()
        return self._text_embedder.embed_texts(texts)

    @property
    def index_size(self) -> int:
        return len(self.selector) if self.selector is not None else 0

    @property
    def index_dim(self) -> int | None:
        sel = self.selector
        return sel.indexes["image"].dim if sel is not None and "image" in sel.indexes else None

    # --- one batch: decide, then stage its rows for the next commit -------------------------------------
    def process(self, batch: EmbeddedBatch) -> BatchOutcome:
        """Both steps, each timed under its own name (`select`, `write`) for the metrics."""
        t0 = time.perf_counter()
        selected = self.decide(batch)
        t1 = time.perf_counter()
        out = self.stage_rows(selected)
        out.seconds = {"select": t1 - t0, "write": time.perf_counter() - t1}
        return out

    def decide(self, batch: EmbeddedBatch) -> SelectedBatch:
        """One decision per item (rejections included) and the curated rows, with each row's shard."""
        sel = self.selector
        assert sel is not None, "call setup() first"
        sel.model_id = batch.model_id
        decisions, kept, homes, kept_homes = [], None, [], None
        if batch.samples.num_rows:
            assert batch.emb is not None
            s = (sel.bootstrap if batch.trusted else sel.select)(batch.samples, batch.emb)
            decisions.append(s.decisions)  # with the filters' scores the samples carry
            kept = kept_table(batch.samples, batch.emb, s, self.cfg.store.store_images)
            h = s.homes if s.homes is not None else np.zeros(batch.samples.num_rows, np.int64)
            homes.append(h)
            kept_homes = h[s.kept_rows]
        if batch.rejects:  # shard 0 writes rejected input, and filtered items
            decisions.append(rejection_decisions(batch.rejects, batch.model_id, self.fingerprint))
            homes.append(np.zeros(len(batch.rejects), np.int64))
        if batch.filtered is not None and batch.filtered.num_rows:
            decisions.append(batch.filtered)
            homes.append(np.zeros(batch.filtered.num_rows, np.int64))
        table = pa.concat_tables(decisions) if decisions else DECISION_SCHEMA.empty_table()
        return SelectedBatch(table, kept, batch.rejects, batch.positions, batch.items, self.index_size, batch.trusted,
                             np.concatenate(homes) if homes else None, kept_homes, self.shard_stats())

    def stage_rows(self, batch: SelectedBatch) -> BatchOutcome:
        """Each row to its shard's staged parts; the run's counts and positions move past the batch."""
        assert self.writer is not None, "call setup() first"
        for table, rows, homes in (("decisions", batch.decisions, batch.homes),
                                   ("kept", batch.kept, batch.kept_homes)):
            if rows is None or rows.num_rows == 0:
                continue
            if homes is None or len(self.shards) == 1:
                self.shards[0].stage(table, rows)
                continue
            for s in np.unique(homes):
                self.shards[int(s)].stage(table, rows.take(pa.array(np.flatnonzero(homes == s))))
        if batch.rejects:
            self.shards[0].stage("quarantine", rejections_table(batch.rejects))
        counts = Counter(batch.decisions.column("decision").to_pylist())
        self.counts.update(counts)
        if not batch.trusted:
            advance(self.positions, batch.positions)
        self._pending += batch.items
        return BatchOutcome(batch.items, dict(counts), batch.rejects, batch.index_size, self.index_dim,
                            shards=batch.shards)

    def shard_stats(self) -> dict[int, tuple[int, float]]:
        """Per shard: items of the primary index, and the last batch's search seconds there."""
        sel = self.selector
        index = sel.indexes.get(sel.primary or "") if sel is not None else None
        if not isinstance(index, ShardedIndex):
            return {}
        return {k: (int(n), float(index.latency.get(k, 0.0))) for k, n in enumerate(index.sizes)}

    # --- checkpoints ---------------------------------------------------------------------------
    def pending_items(self) -> int:
        """Items processed since the last commit (what a commit now would make durable)."""
        return self._pending

    def due(self) -> bool:
        """Enough items wait for a commit (`store.commit_every`)."""
        return self._pending >= self.cfg.store.commit_every

    def commit(self, bootstrapped: bool = False, extra: dict[str, Any] | None = None) -> Committed:
        """Steps 1-3 of `curator.commit`: every shard's parts and index snapshot (in parallel where shards
        are actors), then the selector's state and the manifest naming all of them."""
        w, sel = self.writer, self.selector
        assert w is not None and sel is not None, "call setup() first"
        t0 = time.perf_counter()
        if bootstrapped and not self.bootstrapped:
            sel.finish_bootstrap()  # the shard routers train on the trusted items
        self.bootstrapped = self.bootstrapped or bootstrapped
        no = w.commit_no + 1
        durable = [p.result() for p in [c.write(no) for c in self.shards]]
        n = len(self.shards)
        shards = {"n": n, "probe": probe_cap(self.cfg.selector.probe, n)}
        m = w.commit(self.positions, sel.state_dict(w.put_state_file), None,
                     {"bootstrapped": self.bootstrapped, "counts": dict(self.counts),
                      "calibration": sel.calibration_report(), **(extra or {}),
                      "shards": {**(w.manifest.get("shards") or {}), **shards}}, durable)
        self._pending = 0
        return Committed(int(m["commit"]), positions_from_json(m["positions"]), time.perf_counter() - t0)

    @property
    def manifest(self) -> Manifest:
        """The run directory's last committed manifest."""
        assert self.writer is not None, "call setup() first"
        return self.writer.manifest

    def teardown(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


# ---------------------------------------------------------------------------------------- builder
class Stages:
    """One run's stages in data-flow order, each addressed by its role (its `name`).

    The checkpointed select-and-write stage comes last; every stage before it is *upstream*: executors
    run those as one chain (in this process, or in each embedder actor) without knowing what they are.
    """

    def __init__(self, stages: list[Stage]) -> None:
        roles = [s.name for s in stages]
        if len(set(roles)) != len(roles):
            raise ValueError(f"each stage needs its own role, got {roles}")
        if not stages or not isinstance(stages[-1], SelectWriteStage):
            raise ValueError(f"the last stage must be the checkpointed select-and-write stage, got {roles}")
        self._stages = list(stages)
        self._by_role: dict[str, Stage] = {s.name: s for s in stages}

    def __iter__(self) -> Iterator[Stage]:
        return iter(self._stages)

    def __len__(self) -> int:
        return len(self._stages)

    @property
    def roles(self) -> list[str]:
        return [s.name for s in self._stages]

    def by_role(self, role: str) -> Stage:
        if role not in self._by_role:
            raise KeyError(f"no {role!r} stage in this run (its stages: {', '.join(self.roles)})")
        return self._by_role[role]

    @property
    def upstream(self) -> list[Stage]:
        """Every stage before the checkpointed one, in order."""
        return self._stages[:-1]

    @property
    def validate(self) -> ValidateStage:
        return _typed(self.by_role("validate"), ValidateStage)

    @property
    def embed(self) -> EmbedStage:
        return _typed(self.by_role("embed"), EmbedStage)

    @property
    def select(self) -> SelectWriteStage:
        """The checkpointed stage: it decides, writes, commits and resumes."""
        return _typed(self._stages[-1], SelectWriteStage)


def _typed(stage: Stage, cls: type[S]) -> S:
    if not isinstance(stage, cls):
        raise TypeError(f"the {stage.name!r} stage is a {type(stage).__name__}, not a {cls.__name__}")
    return stage


def with_run_keys(cfg: RunConfig) -> RunConfig:
    """`embedder.content_keys = 'auto'` made concrete where the stages are built, so every process
    that embeds (actors included) hashes as the run directory's decisions do: the scheme its manifest
    names, blake2b-64 for a run from before the scheme was recorded, the newest for a new run."""
    if cfg.embedder.content_keys != "auto":
        return cfg
    keys = held_keys(read_manifest(cfg.store.out))
    return dataclasses.replace(cfg, embedder=dataclasses.replace(cfg.embedder, content_keys=keys))


def build_stages(cfg: RunConfig, resources: dict[str, Resources] | None = None, shard: int = 0,
                 lock_timeout_s: float = 60.0, shards: list[StoredShardClient] | None = None) -> Stages:
    """The one builder: the stages of a run from its configuration, in data-flow order (nothing is
    loaded yet). `resources` by role; `shards`: clients of selector shards placed elsewhere (Ray
    actors); by default they live in the select-and-write stage."""
    res = resources or {}
    limits = Limits()
    cfg = with_run_keys(cfg)
    embed = EmbedStage(build_embedder(cfg.embedder, limits), res.get("embed", Resources(cpus=1.0)),
                       cfg.selector.space)
    filters = [FilterStage(build_rules(cfg.filters), embed.embedder.model_id, cfg.fingerprint(),
                           res.get("filter"))] if cfg.filters else []
    return Stages([
        ValidateStage(limits, res.get("validate", Resources())),
        *filters,
        embed,
        SelectWriteStage(cfg, embed.embedder.model_id, embed.embedder if cfg.selector.recaption_hook else None,
                         res.get("select", Resources(cpus=1.0)), shards, shard, lock_timeout_s),
    ])


def run_chain(stages: Iterable[Stage], batch: Any) -> Any:
    """Run stages in order on one batch; the output carries each stage's wall time in `seconds` (a stage
    that times its own steps, as the select-and-write stage does, gives them instead)."""
    seconds = dict(getattr(batch, "seconds", None) or {})
    out = batch
    for stage in stages:
        t0 = time.perf_counter()
        out = stage.process(out)
        elapsed = time.perf_counter() - t0
        own = {k: v for k, v in (getattr(out, "seconds", None) or {}).items() if k not in seconds}
        if not own:
            own = {stage.name: elapsed}
        for k, v in own.items():
            seconds[k] = seconds.get(k, 0.0) + v
    out.seconds = seconds
    return out
