"""The growing index of accepted items, with the id, vote label and stream position of each row.

Vectors are L2-normalised, so inner product is cosine similarity. Items are never removed
(InfoGrowth only inserts), so rows are insertion order. The index starts exact; a policy
(`curator.index.kinds`) schedules rebuilds into approximate kinds as it grows, each built in the
background (`curator.index.rebuild`) from the first `at` rows and put in service at a fixed stream
position -- `lag` positions after the one that indexed row `at` -- so which queries the new index
answers never depends on timing or batching. While the serving index is approximate, every query
also compares exactly with the items of the last `window` stream positions (`curator.index.recent`).
A snapshot is the whole index (`save`) or, between rebuilds, only the rows added since the last one
(`save_delta`, `curator.index.deltas`); `load` reads a base and adds its deltas back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import curator.index.deltas as deltas
import curator.index.exact as exact
import curator.index.kinds as kinds
from curator.config import IndexConfig
from curator.index.deltas import Delta, Journal
from curator.index.rebuild import Rebuild, training_rows
from curator.index.recent import RecentWindow, bounds, merge
from curator.index.threads import configure_process

log = logging.getLogger(__name__)

FORMAT = "curator-index/2"


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


_torch_cuda: bool | None = None


def torch_cuda_available() -> bool:
    """Whether torch sees a CUDA device, asked only where a driver is installed: importing torch costs
    a selector process ~700 MB resident, too much to pay for the answer no on a CPU-only machine."""
    global _torch_cuda
    if _torch_cuda is None:
        _torch_cuda = False
        if any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia")) or \
                shutil.which("nvidia-smi"):
            try:
                import torch
            except ImportError:
                return False
            _torch_cuda = bool(torch.cuda.is_available())
    return _torch_cuda


def distinct(q: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(the distinct rows of `q`, each row's place among them) when some row repeats another bit for
    bit; else None. Repeats share their first column, so a sort of that column (~5 us for 256 rows)
    is all a batch without them pays."""
    if len(q) < 2:
        return None
    first = np.sort(q[:, 0])
    if not (first[1:] == first[:-1]).any() and not np.isnan(first[-1]):
        return None
    rows = np.ascontiguousarray(q).view(np.dtype((np.void, q.dtype.itemsize * q.shape[1]))).ravel()
    _, at, back = np.unique(rows, return_index=True, return_inverse=True)
    if len(at) == len(q):
        return None
    return q[at], back.ravel()


def search_params(idx: faiss.Index, sel: faiss.IDSelector, cfg: IndexConfig) -> faiss.SearchParameters:
    """Search parameters that restrict `idx` to the rows `sel` selects, with the index's own settings."""
    if isinstance(idx, faiss.IndexRefine):
        return faiss.IndexRefineSearchParameters(k_factor=float(cfg.pq_refine),
                                                 base_index_params=search_params(idx.base_index, sel, cfg))
    if isinstance(faiss.downcast_index(idx), faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=cfg.hnsw_ef_search)
    try:
        faiss.extract_index_ivf(idx)
        return faiss.SearchParametersIVF(sel=sel, nprobe=cfg.ivf_nprobe)
    except RuntimeError:
        return faiss.SearchParameters(sel=sel)


class IdColumn:
    """Row -> id of an index, read-only, backed by Arrow (a Python list of 10M strings weighs ~700 MB)."""

    def __init__(self, arr: pa.ChunkedArray) -> None:
        self.arrow = arr

    def __len__(self) -> int:
        return len(self.arrow)

    def __getitem__(self, row: int) -> str:
        return self.arrow[int(row)].as_py()

    def take(self, rows: np.ndarray) -> list[str]:
        return self.arrow.take(pa.array(np.asarray(rows, np.int64))).to_pylist()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdColumn) and self.arrow.equals(other.arrow)

    __hash__ = None  # type: ignore[assignment]


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    if len(a) >= n:
        return a
    out = np.zeros(max(2 * len(a), n), a.dtype)
    out[: len(a)] = a
    return out


class VectorIndex:
    def __init__(self, dim: int, cfg: IndexConfig | None = None) -> None:
        configure_process()
        self.dim = int(dim)
        self.cfg = cfg or IndexConfig()
        if self.cfg.kind != "auto":
            kinds.kind_of(self.cfg.kind)  # a ValueError that names the kinds there are
        self._n = 0
        self._labels = np.zeros(1024, np.int64)  # row -> vote label (-1: none)
        self._seqs = np.zeros(1024, np.int64)  # row -> stream position it was accepted at
        self._ids: list[pa.Array] = []  # row -> id, as Arrow string chunks (not Python objects)
        self._lock = threading.Lock()  # the serving index: written here, read by a rebuild
        self._gpu_res = None
        self.on_gpu = False
        self.spec = kinds.first_spec(self.cfg)
        self.built_at = 0  # rows the serving index was built from (0: it grew from empty)
        self.serving_from = 0  # the first stream position the serving index answers
        self.index = self._device(kinds.build(self.spec, self.dim, self.cfg))
        self._previous: faiss.Index | None = None  # answers queries before `serving_from`, for one batch
        self._previous_spec: kinds.Spec | None = None
        self.step = kinds.next_step(self.cfg, self.dim, self.spec, 0, self.on_gpu)
        self._build: Rebuild | None = None
        self.switch_at: int | None = None  # stream position the rebuild goes into service
        self.recent = RecentWindow(self.dim, self.cfg.auto_window)
        self.journal: Journal | None = None  # what was added since the last snapshot (`save_delta`)
        self._route = exact.Route()  # where its exact searches' queries went lately

    # --- placement ------------------------------------------------------------------------
    def _device(self, idx: faiss.Index) -> faiss.Index:
        """Where an index serves: a flat index goes to a FAISS GPU index, else (no faiss-gpu) to the exact
        torch search on CUDA (`curator.index.torch_flat`); everything else stays a CPU FAISS index."""
        want = self.cfg.gpu
        faiss_gpu = want in ("auto", "on") and gpu_count() > 0
        torch_cuda = want != "off" and not faiss_gpu and torch_cuda_available()
        if want == "on" and not (faiss_gpu or torch_cuda):
            raise RuntimeError("index.gpu = 'on' but there is no GPU (neither FAISS nor torch sees one): install "
                               "faiss-gpu or a CUDA build of torch on a CUDA machine, or set index.gpu = 'auto'")
        self.on_gpu = False
        if want == "off" or not isinstance(faiss.downcast_index(idx), faiss.IndexFlat):
            return idx
        if faiss_gpu:
            if self._gpu_res is None:
                self._gpu_res = faiss.StandardGpuResources()
            self.on_gpu = True
            return faiss.index_cpu_to_gpu(self._gpu_res, 0, idx)
        if torch_cuda or want == "torch":
            from curator.index.torch_flat import TorchFlatIndex

            self.on_gpu = torch_cuda
            device, precision = ("cuda", "fp16") if torch_cuda else ("cpu", "fp32")
            return TorchFlatIndex.from_faiss(idx, device, precision)  # type: ignore[return-value]
        return idx

    def _cpu(self, idx: faiss.Index) -> faiss.Index:
        if not isinstance(idx, faiss.Index):  # the torch search: its vectors as a FAISS flat index
            return idx.to_faiss()
        return faiss.index_gpu_to_cpu(idx) if self.on_gpu else idx

    # --- data -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def labels(self) -> np.ndarray:
        """Vote label per row (-1: none)."""
        return self._labels[: self._n]

    @property
    def seqs(self) -> np.ndarray:
        return self._seqs[: self._n]

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        """Labels of search results (-1 where a row is -1, i.e. padding)."""
        return np.where(rows >= 0, self._labels[np.maximum(rows, 0)], -1)

    @property
    def ids(self) -> IdColumn:
        if len(self._ids) > 64:
            self._ids = [pa.concat_arrays(self._ids)]
        return IdColumn(pa.chunked_array(self._ids, pa.string()))

    def ids_of(self, rows: np.ndarray) -> list[str]:
        return self.ids.take(rows)

    @property
    def kind(self) -> str:
        """The kind serving now (auto: flat, then ivf-pq or ivf-pq-sq8)."""
        return self.spec.kind

    def bytes_per_item(self) -> float:
        """Index codes plus the id, label and position columns, per indexed item."""
        ids = sum(a.nbytes for a in self._ids) / max(self._n, 1)
        codes = getattr(self.index, "bytes_per_vector", None)  # the torch search may store fp16
        return (codes if codes is not None else kinds.bytes_per_vector(self.spec, self.dim)) + 16 + ids

    def add(self, vectors: np.ndarray, ids: list[str], labels: np.ndarray | None = None,
            seqs: np.ndarray | None = None) -> None:
        """Insert accepted items; `labels` uses -1 for unlabelled; `seqs` are their stream positions
        (default: the row numbers)."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"index holds {self.dim}-d vectors, got shape {x.shape}")
        if len(ids) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(ids)} ids")
        m = len(x)
        if m == 0:
            return
        n0 = self._n
        rows = np.arange(n0, n0 + m, dtype=np.int64)
        seqs = rows if seqs is None else np.asarray(seqs, np.int64)
        with self._lock:
            self.index.add(x)
            self._labels = _grown(self._labels, n0 + m)
            self._seqs = _grown(self._seqs, n0 + m)
            self._labels[n0:n0 + m] = -1 if labels is None else np.asarray(labels, np.int64)
            self._seqs[n0:n0 + m] = seqs
            self._n = n0 + m
        self._ids.append(pa.array(ids, pa.string()))
        self.recent.add(x, rows, seqs)
        if self.journal is not None:
            self.journal.add(x)
            if self.journal.outgrown(self._n, deltas.row_bytes(self.dim)):
                self.journal = None  # the next snapshot is a new base: holding these would be for nothing
        if self._build is not None:
            self._build.poke()
        self._maybe_start()

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of these rows (exact, or as the index's codes give them back)."""
        return self._read(np.asarray(rows, np.int64))

    def search_labelled(self, q: np.ndarray, k: int, seqs: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """`search`, with the vote labels of the rows found."""
        sims, rows = self.search(q, k, seqs)
        return sims, rows, self.labels_of(rows)

    # --- rebuilds ---------------------------------------------------------------------------
    def _read(self, rows: np.ndarray) -> np.ndarray:
        with self._lock:
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
                return self.index.reconstruct_n(int(rows[0]), len(rows))
            return self.index.reconstruct_batch(rows)

    def _size(self) -> int:
        with self._lock:
            return self._n

    def _maybe_start(self) -> None:
        step = self.step
        if self._build is not None or step is None or self._n < step.at:
            return
        lag = max(self.cfg.auto_min_lag, step.at // 8)
        self.switch_at = int(self._seqs[step.at - 1]) + lag + 1
        self._start(step)

    def _start(self, step: kinds.Step) -> None:
        log.info("index: %d items; building %s (nlist %d) in the background, in service from stream position %d",
                 self._n, step.spec.kind, step.spec.nlist, self.switch_at)
        self._build = Rebuild(step.spec, step.at, self.dim, self.cfg, self._read, self._size)
        self._build.start()

    def _switch(self) -> None:
        build, step = self._build, self.step
        assert build is not None and step is not None and self.switch_at is not None
        new = build.finish(self._n)
        kinds.enable_reconstruct(new)
        with self._lock:
            self._previous, self._previous_spec = self.index, self.spec
            self.index = self._device(new)
            self.spec, self.built_at, self.serving_from = step.spec, step.at, self.switch_at
        self._build, self.switch_at = None, None
        self.journal = None  # deltas add to the index they follow: this one needs a base of its own
        self.step = kinds.next_step(self.cfg, self.dim, self.spec, self.built_at, self.on_gpu)
        self._maybe_start()

    def bulk_build(self, chunks: Callable[[], Iterator[tuple[np.ndarray, list[str], np.ndarray | None]]],
                   total: int) -> None:
        """Fill an empty index with `total` items, built directly as the kind its policy gives that size
        (what growing to it would end with): `chunks()` yields (vectors, ids, labels) in row order and is
        called twice, once for the training sample and once to add. For back-fills and benchmarks."""
        if self._n:
            raise ValueError("bulk_build fills an empty index")
        self.journal = None
        step, last = self.step, None
        while step is not None and total >= step.at:
            last, step = step, kinds.next_step(self.cfg, self.dim, step.spec, step.at, self.on_gpu)
        if last is not None:
            new = kinds.build(last.spec, self.dim, self.cfg)
            if last.spec.trainable:
                sample = training_rows(last.at, last.spec.nlist)
                got, row = [], 0
                for x, _, _ in chunks():
                    take = sample[(sample >= row) & (sample < row + len(x))] - row
                    got.append(np.ascontiguousarray(x[take], np.float32))
                    row += len(x)
                    if row >= last.at:
                        break
                new.train(np.concatenate(got))
            kinds.enable_reconstruct(new)
            self.index, self.spec, self.built_at = self._device(new), last.spec, last.at
        self.step = step
        for x, ids, labels in chunks():
            self.add(x, ids, labels)

    def settle(self) -> None:
        """Bring the index to the kind its policy gives its current size, now and in this thread (a bulk
        load: benchmarks, back-fills); queries from here on are answered by it."""
        if self._build is not None:
            self._build.finish(self._n)
            self._build, self.switch_at = None, None
        step, last = self.step, None
        while step is not None and self._n >= step.at:
            last, step = step, kinds.next_step(self.cfg, self.dim, step.spec, step.at, self.on_gpu)
        if last is None:
            return
        self.journal = None
        build = Rebuild(last.spec, last.at, self.dim, self.cfg, self._read, self._size)
        build.finish_now(self._n)
        new = build.index
        assert new is not None
        kinds.enable_reconstruct(new)
        self.index, self.spec, self.built_at = self._device(new), last.spec, last.at
        self.serving_from, self._previous, self._previous_spec = 0, None, None
        self.step = step

    # --- search -----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, seqs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and rows of the k nearest items (nearest first; rows of -1 pad short
        results). `seqs`: the queries' stream positions (default: after everything indexed)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        m = len(q)
        seqs = np.full(m, np.iinfo(np.int64).max // 2, np.int64) if seqs is None else np.asarray(seqs, np.int64)
        if self._build is not None and self.switch_at is not None and m and seqs.max() >= self.switch_at:
            self._switch()
        sims = np.full((m, k), -np.inf, np.float32)
        rows = np.full((m, k), -1, np.int64)
        if self._n == 0 or m == 0:
            return sims, rows
        old = seqs < self.serving_from
        for group, idx, spec in ((old, self._previous, self._previous_spec), (~old, self.index, self.spec)):
            if not group.any():
                continue
            if idx is None or spec is None:
                idx, spec = self.index, self.spec
            if spec.approximate:
                sims[group], rows[group] = self._split_search(idx, q[group], k, seqs[group])
            else:
                sims[group], rows[group] = self._search(idx, q[group], k)
        if not old.any():
            self._previous = self._previous_spec = None  # queries only move forward in the stream
        self.recent.evict(int(bounds(seqs, self.cfg.auto_window).min()))
        return sims, rows

    def _split_search(self, idx: faiss.Index, q: np.ndarray, k: int, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Approximate over the items before each query's bound, exact over those from it on."""
        lower = bounds(seqs, self.cfg.auto_window)
        sims = np.full((len(q), k), -np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for b in np.unique(lower):
            g = lower == b
            upto = int(np.searchsorted(self._seqs[: self._n], b, side="left"))  # rows accepted before b
            if upto:
                sims[g], rows[g] = self._search(idx, q[g], k, upto)
        ws, wr = self.recent.search(q, k, lower)
        return merge(sims, rows, ws, wr, k)

    def _search(self, idx: faiss.Index, q: np.ndarray, k: int, upto: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest of the rows before `upto` (all rows by default). Each distinct query vector is
        searched once: FAISS on the CPU answers a query alone, whatever else is in the batch (the
        per-pair loop, `curator.index.threads`), and a stream repeats vectors -- the same caption,
        the same image file -- which, tied with their own copies in the index, cost the most. (A GPU
        index's answers may follow the batch's shape already; the fewer rows are as repeatable.)"""
        once = distinct(q) if isinstance(idx, faiss.Index) else None
        if once is not None:
            q, back = once
            s, r = self._search(idx, q, k, upto)
            return s[back], r[back]
        kk = min(k, self._n if upto is None else upto)
        with self._lock:
            if not isinstance(idx, faiss.Index):  # the torch search restricts rows itself
                s, r = idx.search(q, kk, upto)
            elif upto is not None and upto < self._n:
                s, r = idx.search(q, kk, params=search_params(idx, faiss.IDSelectorRange(0, upto), self.cfg))
            elif exact.applies(idx):
                s, r = exact.search(idx, q, kk, self._route)  # the per-pair loop's answer, at a product's speed
            else:
                s, r = idx.search(q, kk)
        if kk < k:
            s = np.pad(s, ((0, 0), (0, k - kk)), constant_values=-np.inf)
            r = np.pad(r, ((0, 0), (0, k - kk)), constant_values=-1)
        return np.where(r < 0, -np.inf, s).astype(np.float32), r.astype(np.int64)

    # --- snapshots ------------------------------------------------------------------------
    def _rebuild_state(self) -> dict[str, Any] | None:
        return None if self._build is None else {"at": self.step.at if self.step else None, "switch_at": self.switch_at}

    def save(self, directory: str | Path, track: bool = False) -> None:
        """Write the whole index: the serving index, ids, labels, positions and any rebuild in progress
        (fsynced). `track`: this is the base of a chain, so keep what is added from here on for
        `save_delta` (unless this kind's adds cannot be replayed)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with self._lock:
            faiss.write_index(self._cpu(self.index), str(d / "index.faiss"))
            n = self._n
        pq.write_table(pa.table({"id": self.ids.arrow, "label": pa.array(self._labels[:n]),
                                 "seq": pa.array(self._seqs[:n])}), d / "items.parquet")
        # the window's exact vectors: an index that stores codes cannot give them back exactly
        np.savez(d / "recent.npz", vecs=self.recent.vecs, rows=self.recent.rows, seqs=self.recent.seqs)
        meta = {"format": FORMAT, "dim": self.dim, "ntotal": n, "spec": self.spec.to_json(),
                "built_at": self.built_at, "serving_from": self.serving_from, "rebuild": self._rebuild_state()}
        (d / "index.json").write_text(json.dumps(meta))
        for name in ("index.faiss", "items.parquet", "recent.npz", "index.json"):
            with open(d / name, "rb") as fh:
                os.fsync(fh.fileno())
        if track:
            self._track(d, n)

    def _track(self, base: Path, base_rows: int) -> None:
        """Journal what is added from here on: the chain from `base` ends at this row."""
        self.journal = None
        if kinds.kind_of(self.spec.kind).replayable:
            on_disk = kinds.bytes_per_vector(self.spec, self.dim) + 16 + sum(a.nbytes for a in self._ids) / max(self._n, 1)
            self.journal = Journal(str(base), self._n, base_rows, base_rows * on_disk)

    def next_snapshot(self, base: str | Path) -> str | None:
        """What the next snapshot of the chain from `base` must be: 'base' (a new chain: this index
        tracks another, or none, or was rebuilt, or the deltas would outweigh the base), 'delta', or
        None (nothing added since the last)."""
        if self.journal is None or self.journal.base != str(base):
            return "base"
        return None if self.journal.start == self._n else "delta"

    def save_delta(self, directory: str | Path) -> None:
        """Write the rows added since the last snapshot (`directory/delta.parquet`, fsynced)."""
        j = self.journal
        if j is None:
            raise RuntimeError("this index tracks no snapshot chain (or was rebuilt since): write a base with "
                               "save(directory, track=True)")
        start, n = j.start, self._n
        deltas.write(Path(directory), Delta(start, j.vectors(self.dim), self.ids.arrow.slice(start, n - start)
                                            .combine_chunks(), self._labels[start:n], self._seqs[start:n],
                                            self._rebuild_state()))
        j.written()  # only once it is durable: after a failed write they are still here for the next try

    @classmethod
    def load(cls, directory: str | Path, cfg: IndexConfig | None = None, delta_dirs: list[Path] | None = None,
             track: bool = False) -> VectorIndex:
        """The index a base snapshot holds, with its deltas (in the order written) added back; `track`:
        go on journalling, so the chain continues with this index's next `save_delta`."""
        d = Path(directory)
        meta = json.loads((d / "index.json").read_text())
        if meta.get("format") != FORMAT:
            raise RuntimeError(f"index snapshot in {d} has format {meta.get('format')!r}, expected {FORMAT!r}; "
                               "it was written by another curator version: start a new run directory")
        self = cls(meta["dim"], cfg)
        cpu = faiss.read_index(str(d / "index.faiss"))
        kinds.tune(cpu, self.cfg)
        kinds.enable_reconstruct(cpu)
        self.spec = kinds.Spec.from_json(meta["spec"])
        self.built_at, self.serving_from = int(meta["built_at"]), int(meta["serving_from"])
        items = pq.read_table(d / "items.parquet")
        self._n = items.num_rows
        self._ids = [items.column("id").combine_chunks().cast(pa.string())]
        self._labels = _grown(items.column("label").to_numpy().astype(np.int64), 1)
        self._seqs = _grown(items.column("seq").to_numpy().astype(np.int64), 1)
        if self._n != int(cpu.ntotal) or self._n != meta["ntotal"]:
            raise RuntimeError(f"index snapshot in {d} is inconsistent: {cpu.ntotal} vectors, "
                               f"{self._n} ids; restore from an earlier checkpoint")
        with np.load(d / "recent.npz") as r:
            self.recent.add(r["vecs"], r["rows"], r["seqs"])
        base_rows, rb = self._n, meta.get("rebuild")
        for dd in delta_dirs or []:
            rb = self._replay(cpu, deltas.read(dd), dd)
        self.index = self._device(cpu)
        self.step = kinds.next_step(self.cfg, self.dim, self.spec, self.built_at, self.on_gpu)
        if track:
            self._track(d, base_rows)
        if rb and self.step is not None:  # the same rebuild, from the same rows: the same result
            self.switch_at = int(rb["switch_at"])
            self._start(self.step)
        return self

    def _replay(self, cpu: faiss.Index, d: Delta, where: Path) -> dict[str, Any] | None:
        """Add a delta's rows as `add` added them (the same vectors to the same index: the same codes)."""
        if d.start != self._n or (len(d) and d.vectors.shape[1] != self.dim):
            raise RuntimeError(f"index delta {where} starts at row {d.start} with {d.vectors.shape[1]}-d vectors, "
                               f"but the snapshot before it ends at row {self._n} ({self.dim}-d): the snapshot "
                               "chain is broken; restore from an earlier checkpoint")
        m, n0 = len(d), self._n
        cpu.add(d.vectors)
        self._labels = _grown(self._labels, n0 + m)
        self._seqs = _grown(self._seqs, n0 + m)
        self._labels[n0:n0 + m], self._seqs[n0:n0 + m] = d.labels, d.seqs
        self._ids.append(d.ids)
        self._n = n0 + m
        self.recent.add(d.vectors, np.arange(n0, n0 + m, dtype=np.int64), d.seqs)
        return d.rebuild
