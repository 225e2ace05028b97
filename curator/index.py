"""The growing FAISS index of accepted items, with labels and ids for neighbour votes.

Vectors are L2-normalised, so inner product is cosine similarity. Items are never
removed (InfoGrowth only inserts), so FAISS's sequential ids are our row numbers and
labels/ids are parallel arrays. IVF needs training data: it holds items exactly until
`ivf_train_size` have arrived, then trains its quantizer on them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curator.config import IndexConfig

log = logging.getLogger(__name__)


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


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


class VectorIndex:
    def __init__(self, dim: int, cfg: IndexConfig | None = None) -> None:
        self.dim = int(dim)
        self.cfg = cfg or IndexConfig()
        self._labels = np.zeros(1024, np.int64)  # row -> vote label (-1: none); grown by doubling
        self._ids: list[pa.Array] = []  # row -> id, as Arrow string chunks (not Python objects)
        self._trained_ivf = False
        self._gpu_res = None
        self.on_gpu = False
        self.index = self._new_index(exact=self.cfg.kind == "ivf")

    # --- construction -------------------------------------------------------------------
    def _new_index(self, exact: bool) -> faiss.Index:
        c = self.cfg
        if c.kind == "flat" or exact:
            idx: faiss.Index = faiss.IndexFlatIP(self.dim)
        elif c.kind == "ivf":
            idx = faiss.index_factory(self.dim, f"IVF{c.ivf_nlist},Flat", faiss.METRIC_INNER_PRODUCT)
            faiss.extract_index_ivf(idx).nprobe = c.ivf_nprobe
        elif c.kind == "hnsw":
            idx = faiss.IndexHNSWFlat(self.dim, c.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = c.hnsw_ef_construction
            idx.hnsw.efSearch = c.hnsw_ef_search
        else:
            raise ValueError(f"index.kind must be flat, ivf or hnsw, got {c.kind!r}")
        return self._maybe_gpu(idx)

    def _maybe_gpu(self, idx: faiss.Index) -> faiss.Index:
        want = self.cfg.gpu
        n = gpu_count()
        if want == "on" and n == 0:
            raise RuntimeError("index.gpu = 'on' but FAISS sees no GPU: install faiss-gpu on a CUDA machine "
                               "or set index.gpu = 'auto'")
        if want == "off" or n == 0 or isinstance(idx, faiss.IndexHNSWFlat):
            self.on_gpu = False
            return idx
        if self._gpu_res is None:
            self._gpu_res = faiss.StandardGpuResources()
        self.on_gpu = True
        return faiss.index_cpu_to_gpu(self._gpu_res, 0, idx)

    @staticmethod
    def _is_ivf(idx: faiss.Index) -> bool:
        try:
            faiss.extract_index_ivf(idx)
            return True
        except RuntimeError:
            return False

    # --- data ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def labels(self) -> np.ndarray:
        """Vote label per row (-1: none)."""
        return self._labels[: len(self)]

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        """Labels of search results (-1 where a row is -1, i.e. padding)."""
        return np.where(rows >= 0, self._labels[np.maximum(rows, 0)], -1)

    @property
    def ids(self) -> IdColumn:
        if len(self._ids) > 64:
            self._ids = [pa.concat_arrays(self._ids)]
        return IdColumn(pa.chunked_array(self._ids, pa.string()))

    def ids_of(self, rows: np.ndarray) -> list[str]:
        """Ids of these rows."""
        return self.ids.take(rows)

    def add(self, vectors: np.ndarray, ids: list[str], labels: np.ndarray | None = None) -> None:
        """Insert accepted items; `labels` uses -1 for unlabelled."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"index holds {self.dim}-d vectors, got shape {x.shape}")
        if len(ids) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(ids)} ids")
        if len(x) == 0:
            return
        lab = np.full(len(x), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        n0 = len(self)
        self.index.add(x)
        self._ids.append(pa.array(ids, pa.string()))
        if len(self._labels) < n0 + len(x):
            grown = np.zeros(max(2 * len(self._labels), n0 + len(x)), np.int64)
            grown[:n0] = self._labels[:n0]
            self._labels = grown
        self._labels[n0: n0 + len(x)] = lab
        if self.cfg.kind == "ivf" and not self._trained_ivf and len(self) >= self.cfg.ivf_train_size:
            self._train_ivf()

    def _train_ivf(self) -> None:
        cpu = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        data = cpu.reconstruct_n(0, cpu.ntotal)
        log.info("training IVF quantizer (nlist=%d) on %d accepted items", self.cfg.ivf_nlist, len(data))
        ivf = self._new_index(exact=False)
        ivf.train(data)
        ivf.add(data)
        self.index = ivf
        self._trained_ivf = True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and row numbers of the k nearest items; rows of -1 pad short results."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        m = len(q)
        if len(self) == 0 or m == 0:
            return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)
        kk = min(k, len(self))
        sims, rows = self.index.search(q, kk)
        if kk < k:
            sims = np.pad(sims, ((0, 0), (0, k - kk)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, k - kk)), constant_values=-1)
        sims = np.where(rows < 0, -np.inf, sims).astype(np.float32)
        return sims, rows.astype(np.int64)

    # --- snapshot -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write the index, ids and labels into `directory` (fsynced files)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cpu = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        faiss.write_index(cpu, str(d / "index.faiss"))
        pq.write_table(pa.table({"id": self.ids.arrow, "label": pa.array(self.labels)}), d / "items.parquet")
        (d / "index.json").write_text(json.dumps({"dim": self.dim, "kind": self.cfg.kind,
                                                  "trained_ivf": self._trained_ivf, "ntotal": len(self)}))
        for name in ("index.faiss", "items.parquet", "index.json"):
            with open(d / name, "rb") as fh:
                os.fsync(fh.fileno())

    @classmethod
    def load(cls, directory: str | Path, cfg: IndexConfig | None = None) -> VectorIndex:
        d = Path(directory)
        meta = json.loads((d / "index.json").read_text())
        self = cls(meta["dim"], cfg)
        cpu = faiss.read_index(str(d / "index.faiss"))
        if isinstance(cpu, faiss.IndexHNSWFlat):
            cpu.hnsw.efSearch = self.cfg.hnsw_ef_search
        if self._is_ivf(cpu):
            faiss.extract_index_ivf(cpu).nprobe = self.cfg.ivf_nprobe
        self.index = self._maybe_gpu(cpu)
        self._trained_ivf = bool(meta["trained_ivf"])
        items = pq.read_table(d / "items.parquet")
        self._ids = [items.column("id").combine_chunks().cast(pa.string())]
        self._labels = items.column("label").to_numpy().astype(np.int64)
        if items.num_rows != len(self) or items.num_rows != meta["ntotal"]:
            raise RuntimeError(f"index snapshot in {d} is inconsistent: {len(self)} vectors, "
                               f"{items.num_rows} ids; restore from an earlier checkpoint")
        return self
