"""Index kinds: what FAISS index each kind is, how it is tuned, what it costs per item, and which
kind `index.kind = "auto"` chooses for a given size.

    flat        exact inner product (IndexFlatIP)
    hnsw        HNSW graph over exact vectors: no training; slow to insert into, so never chosen by auto;
                written whole at every commit (its adds cannot be replayed)
    ivf         IVF{nlist},Flat: exact distances inside the probed lists; reads 4d bytes per candidate
    ivf-pq      IVF{nlist},PQ{d/8}x4fs,RFlat: 4-bit fast-scan PQ codes find `pq_refine` x k candidates
                in the probed lists (d/16 bytes each: SIMD, a fraction of what ivf reads), the exact
                vectors re-rank them -- exact cosines for the neighbours kept (4d + d/16 bytes per item)
    ivf-pq-sq8  the same with SQ8 codes re-ranking (near-exact cosines, d + d/16 bytes per item): past
                what memory holds uncompressed

Each kind is an `IndexKind` found by name through the registry (`curator.registry.INDEX_KINDS`), so
a user's own kind -- any FAISS index factory string -- works by name or 'package.module:Class'.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import faiss

from curator.config import IndexConfig
from curator.registry import INDEX_KINDS


class IndexKind:
    """A kind of FAISS index: its factory string, what one vector costs in it, and whether it is trained.

    A trained kind (an IVF) starts exact and is built, with `nlist` lists, from the first
    `index.ivf_train_size` items; any other kind is built as it is from the first item, never rebuilt.
    A replayable kind gives the same index when the same vectors are added to a copy read back from
    disk, so a commit writes only the rows added since the last (`curator.index.deltas`); any other
    kind is written whole at every commit.
    """

    trainable: bool = False
    replayable: bool = True

    def factory(self, dim: int, cfg: IndexConfig, nlist: int) -> str:
        """The `faiss.index_factory` string for vectors of `dim` (inner-product metric)."""
        raise NotImplementedError

    def bytes_per_vector(self, dim: int) -> float:
        """What one indexed vector costs (codes and list ids; not the id and label columns)."""
        return 4.0 * dim


class Flat(IndexKind):
    def factory(self, dim: int, cfg: IndexConfig, nlist: int) -> str:
        return "Flat"


class HNSW(IndexKind):
    replayable = False  # random levels, and threads racing to link: adding again builds another graph

    def factory(self, dim: int, cfg: IndexConfig, nlist: int) -> str:
        return f"HNSW{cfg.hnsw_m},Flat"

    def bytes_per_vector(self, dim: int) -> float:
        return 4.0 * dim + 8 * 2 * 32  # vectors + about 2M neighbour links (int64 -> here int32 pairs)


class IVF(IndexKind):
    trainable = True

    def factory(self, dim: int, cfg: IndexConfig, nlist: int) -> str:
        return f"IVF{nlist},Flat"

    def bytes_per_vector(self, dim: int) -> float:
        return 4.0 * dim + 8 + 8  # vectors + list id + direct map


class IVFPQ(IndexKind):
    trainable = True

    def factory(self, dim: int, cfg: IndexConfig, nlist: int) -> str:
        return f"IVF{nlist},PQ{pq_m(dim)}x4fs,RFlat"

    def bytes_per_vector(self, dim: int) -> float:
        return pq_m(dim) / 2 + 4.0 * dim + 8  # 4-bit codes + exact vectors + list id


class IVFPQSQ8(IndexKind):
    trainable = True

    def factory(self, dim: int, cfg: IndexConfig, nlist: int) -> str:
        return f"IVF{nlist},PQ{pq_m(dim)}x4fs,Refine(SQ8)"

    def bytes_per_vector(self, dim: int) -> float:
        return pq_m(dim) / 2 + dim + 8  # 4-bit codes + SQ8 codes + list id


def kind_of(name: str) -> IndexKind:
    """The kind `index.kind` (or a snapshot's spec) names, or a ValueError saying what the kinds are."""
    cls = INDEX_KINDS.get(name)
    k = cls() if isinstance(cls, type) else cls
    if not callable(getattr(k, "factory", None)):
        raise ValueError(f"index kind {name!r} is {cls!r}, not an index kind: subclass "
                         "curator.index.kinds.IndexKind and define factory(dim, cfg, nlist)")
    return k


@dataclass(frozen=True)
class Spec:
    """One concrete index: its kind and, for IVF kinds, its number of lists."""

    kind: str
    nlist: int = 0

    @property
    def approximate(self) -> bool:
        return self.kind != "flat"

    @property
    def trainable(self) -> bool:
        return bool(kind_of(self.kind).trainable)

    def factory(self, dim: int, cfg: IndexConfig) -> str:
        return kind_of(self.kind).factory(dim, cfg, self.nlist)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Spec:
        return cls(str(d["kind"]), int(d.get("nlist", 0)))


def pq_m(dim: int) -> int:
    """PQ sub-quantizers: one per 8 dimensions (an even number, as fast scan needs)."""
    m = max(2, dim // 8)
    return m - (m % 2)


def nlist_for(n: int) -> int:
    """Lists for an IVF over about n items: a power of two near sqrt(n), in [64, 65536]. (Fast-scan
    codes make scanning a list cheap, so fewer, longer lists than the usual 4 sqrt(n) search faster:
    measured 3x at 300k items, same recall.)"""
    target = math.sqrt(max(n, 1))
    return int(min(65536, max(64, 2 ** round(math.log2(target)))))


def bytes_per_vector(spec: Spec, dim: int) -> float:
    """What one indexed vector costs in the index (codes and list ids; not the id/label columns)."""
    return float(kind_of(spec.kind).bytes_per_vector(dim))


def build(spec: Spec, dim: int, cfg: IndexConfig) -> faiss.Index:
    """A new, empty (untrained) CPU index for `spec`, tuned by `cfg`."""
    idx = faiss.index_factory(dim, spec.factory(dim, cfg), faiss.METRIC_INNER_PRODUCT)
    tune(idx, cfg)
    return idx


def tune(idx: faiss.Index, cfg: IndexConfig) -> None:
    """Search-time settings (also after a snapshot is read back)."""
    if isinstance(idx, faiss.IndexRefine):
        idx.k_factor = float(cfg.pq_refine)
    try:
        ivf = faiss.extract_index_ivf(idx)
        ivf.nprobe = cfg.ivf_nprobe
        cp = ivf.cp
        cp.niter, cp.max_points_per_centroid, cp.seed = 10, 64, 1234
    except RuntimeError:
        pass
    hnsw = faiss.downcast_index(idx)
    if isinstance(hnsw, faiss.IndexHNSW):
        hnsw.hnsw.efConstruction = cfg.hnsw_ef_construction
        hnsw.hnsw.efSearch = cfg.hnsw_ef_search


def enable_reconstruct(idx: faiss.Index) -> None:
    """IVF lists do not know a row's place without a direct map; rebuilds read rows back."""
    try:
        ivf = faiss.extract_index_ivf(idx)
    except RuntimeError:
        return
    if not isinstance(idx, faiss.IndexRefine):
        ivf.make_direct_map()


@dataclass(frozen=True)
class Step:
    """A rebuild the policy schedules: once `at` items are indexed, build `spec` from the first `at`."""

    at: int
    spec: Spec


def first_spec(cfg: IndexConfig) -> Spec:
    """What a new index starts as: exact for auto and the trainable kinds (they train on what they hold)."""
    if cfg.kind == "auto" or kind_of(cfg.kind).trainable:
        return Spec("flat")
    return Spec(cfg.kind)


def next_step(cfg: IndexConfig, dim: int, current: Spec, built_at: int, on_gpu: bool = False) -> Step | None:
    """The next rebuild after the current index (built from `built_at` items), or None. On a GPU, auto
    stays exact: a GPU searches millions of vectors exactly faster than a CPU searches an IVF."""
    if cfg.kind != "auto":
        if not kind_of(cfg.kind).trainable or current.kind != "flat":
            return None
        n = cfg.ivf_train_size
        return Step(n, Spec(cfg.kind, cfg.ivf_nlist or min(nlist_for(n), trainable_nlist(n))))
    if on_gpu:
        return None
    # auto: exact while small, then ivf-pq rebuilt every `auto_growth`-fold; SQ8 past the memory budget
    at = cfg.auto_exact_max if current.kind == "flat" else built_at * cfg.auto_growth
    until = at * cfg.auto_growth  # the size it serves up to, before the next rebuild
    flat_ok = until * dim * 4 <= cfg.auto_memory_mb * 2**20
    nlist = cfg.ivf_nlist or min(nlist_for(int(at * math.sqrt(cfg.auto_growth))), trainable_nlist(at))
    return Step(at, Spec("ivf-pq" if flat_ok else "ivf-pq-sq8", nlist))


def trainable_nlist(n: int) -> int:
    """The most lists n training items support (k-means wants about 40 points per centroid)."""
    return max(16, 2 ** int(math.log2(max(n // 40, 16))))
