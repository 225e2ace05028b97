"""Exact inner-product search as torch matmuls: the GPU search where FAISS has no GPU build.

faiss-gpu is not published for every CUDA / Python pair, while a CUDA build of torch usually is, and
an exact search is only a matmul and a top-k -- which a GPU does at memory speed. `TorchFlatIndex`
has the part of the FAISS index interface `VectorIndex` uses (`add`, `search`, `ntotal`,
`reconstruct_n`, `reconstruct_batch`) and writes its snapshot as a FAISS ``IndexFlatIP``, so a run
directory written on a GPU restores on any machine.

Vectors live in fixed-size blocks on the device (no block is ever copied to grow past the others),
and a search goes block by block, so the similarity matrix it holds stays bounded (10M x 512 in fp16
is 10 GB of vectors, but a batch of 256 queries never holds more than `SIMS_BYTES` of similarities).
With fp16 storage, the candidates found in fp16 are re-scored in fp32 against the stored vectors:
the similarities returned are those of the fp16-rounded vectors (within ~1e-4 of the exact ones),
not fp16-rounded similarities (steps of ~5e-4 near 1, too coarse for near-duplicate thresholds).
"""

from __future__ import annotations

import numpy as np
import torch

#: rows per storage block (the last one grows by doubling up to this)
BLOCK_ROWS = 1 << 20
#: bytes of query x block similarities one step of a search may hold
SIMS_BYTES = 1 << 30
#: extra candidates kept from the fp16 matmul for the fp32 re-scoring
FP16_EXTRA = 16

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


class TorchFlatIndex:
    """Exact inner-product search over vectors stored on a torch device (fp32 or fp16)."""

    def __init__(self, d: int, device: str | torch.device = "cpu", precision: str = "fp32",
                 block_rows: int = BLOCK_ROWS) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.d = int(d)
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.itemsize = torch.empty((), dtype=self.dtype).element_size()
        self.block_rows = int(block_rows)
        self.ntotal = 0
        self._blocks: list[torch.Tensor] = []

    @classmethod
    def from_faiss(cls, idx: object, device: str | torch.device = "cpu", precision: str = "fp32",
                   block_rows: int = BLOCK_ROWS) -> TorchFlatIndex:
        """The same vectors as a FAISS flat index (e.g. one read from a snapshot), on `device`."""
        out = cls(idx.d, device, precision, block_rows)  # type: ignore[attr-defined]
        n = int(idx.ntotal)  # type: ignore[attr-defined]
        for s in range(0, n, out.block_rows):
            out.add(idx.reconstruct_n(s, min(out.block_rows, n - s)))  # type: ignore[attr-defined]
        return out

    def to_faiss(self) -> object:
        """A FAISS IndexFlatIP holding the stored vectors (what a snapshot writes)."""
        import faiss

        idx = faiss.IndexFlatIP(self.d)
        for b, rows in self._filled():
            idx.add(np.ascontiguousarray(b[:rows].float().cpu().numpy()))
        return idx

    @property
    def bytes_per_vector(self) -> int:
        return self.d * self.itemsize

    # --- storage ----------------------------------------------------------------------------
    def _filled(self) -> list[tuple[torch.Tensor, int]]:
        """(block, rows in use) for every block, up to `ntotal`."""
        return [(b, min(self.block_rows, self.ntotal - i * self.block_rows)) for i, b in enumerate(self._blocks)]

    def add(self, x: np.ndarray) -> None:
        v = np.ascontiguousarray(x, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.d:
            raise ValueError(f"index holds {self.d}-d vectors, got shape {v.shape}")
        t = torch.from_numpy(v).to(self.device, self.dtype)
        done = 0
        while done < len(t):
            i, used = divmod(self.ntotal, self.block_rows)
            if i == len(self._blocks):
                self._blocks.append(torch.empty((0, self.d), dtype=self.dtype, device=self.device))
            take = min(self.block_rows - used, len(t) - done)
            block = self._blocks[i]
            if used + take > len(block):  # grow the last block by doubling, up to block_rows
                grown = torch.empty((min(self.block_rows, max(2 * len(block), used + take, 1024)), self.d),
                                    dtype=self.dtype, device=self.device)
                grown[:used] = block[:used]
                self._blocks[i] = block = grown
            block[used:used + take] = t[done:done + take]
            done += take
            self.ntotal += take

    def reconstruct_batch(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of `rows` (as float32, in the given order)."""
        r = np.asarray(rows, np.int64)
        if len(r) and (r.min() < 0 or r.max() >= self.ntotal):
            raise IndexError(f"rows must be in [0, {self.ntotal}), got {r.min()}..{r.max()}")
        return self._gather(torch.from_numpy(r).to(self.device)).float().cpu().numpy()

    def reconstruct_n(self, i0: int, n: int) -> np.ndarray:
        return self.reconstruct_batch(np.arange(i0, i0 + n, dtype=np.int64))

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Stored vectors of `rows` (any shape of row numbers, on the device) -> rows.shape + (d,)."""
        flat = rows.reshape(-1)
        out = torch.empty((len(flat), self.d), dtype=self.dtype, device=self.device)
        blk = torch.div(flat, self.block_rows, rounding_mode="floor")
        for i in torch.unique(blk).tolist():
            sel = blk == i
            out[sel] = self._blocks[i][flat[sel] - i * self.block_rows]
        return out.reshape(*rows.shape, self.d)

    # --- search -----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, upto: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Similarities (float32) and rows (int64) of the k nearest of the rows before `upto` (all by
        default), nearest first and ties by row; rows of -1 (similarity -inf) pad short results."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        m, k = len(q), int(k)
        n = self.ntotal if upto is None else max(0, min(int(upto), self.ntotal))
        sims = np.full((m, k), -np.inf, np.float32)
        rows = np.full((m, k), -1, np.int64)
        kk = min(k, n)
        if m == 0 or kk == 0:
            return sims, rows
        qt = torch.from_numpy(q).to(self.device)
        step = max(1, SIMS_BYTES // (min(n, self.block_rows) * self.itemsize))
        with torch.inference_mode():
            for s in range(0, m, step):
                bs, br = self._search(qt[s:s + step], kk, n)
                sims[s:s + step, :kk] = bs.cpu().numpy()
                rows[s:s + step, :kk] = br.cpu().numpy()
        return sims, rows

    def _search(self, q: torch.Tensor, kk: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        cand = min(n, kk + FP16_EXTRA if self.dtype == torch.float16 else kk)
        qs = q.to(self.dtype)
        best_s: torch.Tensor | None = None
        best_r: torch.Tensor | None = None
        for i, (b, used) in enumerate(self._filled()):
            rows = min(used, n - i * self.block_rows)
            if rows <= 0:
                break
            s, r = torch.topk(qs @ b[:rows].T, min(cand, rows), dim=1)
            r = r + i * self.block_rows
            if best_s is not None and best_r is not None:
                s, r = torch.cat([best_s, s], 1), torch.cat([best_r, r], 1)
                s, pick = torch.topk(s, min(cand, s.shape[1]), dim=1)
                r = torch.gather(r, 1, pick)
            best_s, best_r = s, r
        assert best_s is not None and best_r is not None
        if self.dtype != torch.float32:  # re-score the candidates in fp32
            best_s = (self._gather(best_r).float() * q[:, None, :]).sum(-1)
        else:
            best_s = best_s.float()
        # nearest first; equal similarities by row, so results never depend on the top-k's tie order
        by_row = torch.argsort(best_r, dim=1)
        best_s, best_r = torch.gather(best_s, 1, by_row), torch.gather(best_r, 1, by_row)
        order = torch.argsort(-best_s, dim=1, stable=True)[:, :kk]
        return torch.gather(best_s, 1, order), torch.gather(best_r, 1, order)
