"""The exact torch search (`index.gpu = "torch"`, and what `auto` picks on CUDA without faiss-gpu): the
same rows and similarities as FAISS IndexFlatIP, block by block and in fp16, behind `VectorIndex`, with
snapshots any machine restores -- checked here on the CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from curator.config import IndexConfig
from curator.index import VectorIndex
from curator.index.torch_flat import TorchFlatIndex
from tests.test_auto_index import AUTO, run, stream

REPO = Path(__file__).resolve().parents[1]


def _unit(rng: np.random.Generator, n: int, d: int = 24) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _filled(cfg: IndexConfig, x: np.ndarray) -> VectorIndex:
    idx = VectorIndex(x.shape[1], cfg)
    for s in range(0, len(x), 300):
        e = min(s + 300, len(x))
        idx.add(x[s:e], [f"i{j}" for j in range(s, e)], np.arange(s, e) % 5)
    return idx


def test_torch_search_equals_faiss_flat_through_vector_index() -> None:
    rng = np.random.default_rng(0)
    x, q = _unit(rng, 1000), _unit(rng, 300)
    ref = _filled(IndexConfig(kind="flat", gpu="off"), x)
    tor = _filled(IndexConfig(kind="flat", gpu="torch"), x)
    assert isinstance(tor.index, TorchFlatIndex) and tor.index.device.type == "cpu" and not tor.on_gpu
    assert isinstance(ref.index, faiss.IndexFlat) and tor.kind == ref.kind == "flat"
    for k in (1, 10):
        rs, rr = ref.search(q, k)
        ts, tr = tor.search(q, k)
        assert ts.dtype == np.float32 and tr.dtype == np.int64
        np.testing.assert_array_equal(tr, rr)
        np.testing.assert_allclose(ts, rs, atol=1e-5)
    # short results pad like FAISS's; the rows searched can be limited (what a filtered search asks)
    small = VectorIndex(24, IndexConfig(kind="flat", gpu="torch"))
    small.add(x[:2], ["a", "b"])
    s, r = small.search(q[:3], 4)
    assert (r[:, 2:] == -1).all() and np.isneginf(s[:, 2:]).all() and set(r[:, :2].ravel()) == {0, 1}
    assert tor.bytes_per_item() == ref.bytes_per_item()  # fp32 storage costs what IndexFlatIP does


def test_blocks_upto_reconstruct_and_fp16_rescoring() -> None:
    rng = np.random.default_rng(1)
    x, q = _unit(rng, 1050, 32), _unit(rng, 70, 32)
    exact = q @ x.T
    t = TorchFlatIndex(32, "cpu", "fp32", block_rows=128)  # 9 blocks, the last one partly filled
    for s in range(0, 1050, 100):
        t.add(x[s:s + 100])
    assert t.ntotal == 1050 and len(t._blocks) == 9
    np.testing.assert_array_equal(t.reconstruct_n(120, 20), x[120:140])
    np.testing.assert_array_equal(t.reconstruct_batch(np.array([1049, 0, 300])), x[[1049, 0, 300]])
    for upto in (None, 1, 200, 1050):
        n = 1050 if upto is None else upto
        s, r = t.search(q, 5, upto)
        want = np.argsort(-exact[:, :n], axis=1, kind="stable")[:, :5]
        np.testing.assert_array_equal(r[:, :min(5, n)], want)
        np.testing.assert_allclose(s[:, :min(5, n)], np.take_along_axis(exact, want, 1), atol=1e-5)
        assert (r[:, n:] == -1).all()
    # fp16 storage: the candidates are re-scored in fp32, so similarities are those of the rounded
    # vectors (not fp16-rounded similarities) and ranks are exact wherever two are not within fp16 error
    h = TorchFlatIndex(32, "cpu", "fp16", block_rows=128)
    h.add(x)
    hs, hr = h.search(q, 5)
    x16 = x.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(hs, np.take_along_axis(q @ x16.T, hr, 1), atol=1e-5)
    top = np.sort(exact, axis=1)[:, ::-1][:, :6]
    clear = (np.diff(-top, axis=1) > 2e-3).all(1)
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(hr[clear], np.argsort(-exact, axis=1)[clear, :5])
    assert np.abs(hs - np.take_along_axis(exact, hr, 1)).max() < 1e-3
    assert h.bytes_per_vector == 64 and t.bytes_per_vector == 128
    with pytest.raises(ValueError, match="32-d"):
        h.add(np.zeros((1, 8), np.float32))


def test_snapshot_is_a_faiss_flat_index_any_machine_restores(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x, q = _unit(rng, 700), _unit(rng, 50)
    tor = _filled(IndexConfig(kind="flat", gpu="torch"), x)
    tor.save(tmp_path)
    assert isinstance(faiss.read_index(str(tmp_path / "index.faiss")), faiss.IndexFlatIP)
    s, r = tor.search(q, 4)
    for gpu, cls in (("off", faiss.Index), ("torch", TorchFlatIndex)):
        back = VectorIndex.load(tmp_path, IndexConfig(kind="flat", gpu=gpu))
        assert isinstance(back.index, cls) and back.ids == tor.ids
        s2, r2 = back.search(q, 4)
        np.testing.assert_array_equal(r2, r)
        np.testing.assert_allclose(s2, s, atol=1e-5)


def test_selector_decides_the_same_on_the_torch_search() -> None:
    """Flat: the same decisions as FAISS. Auto: the background rebuilds read their rows back from the
    torch search (no GPU here, so auto does not stay exact) and end where the FAISS run ends."""
    x, given = stream(1600, seed=4)
    _, ref, _ = run(IndexConfig(kind="flat", gpu="off"), [97], x, given)
    sel, tor, _ = run(IndexConfig(kind="flat", gpu="torch"), [97], x, given)
    assert isinstance(sel.shards[0].target.indexes["image"].index, TorchFlatIndex)
    assert [a[:3] for a in tor] == [b[:3] for b in ref]
    assert np.allclose([a[3] or 0 for a in tor], [b[3] or 0 for b in ref], atol=1e-5)
    auto_torch = IndexConfig(**{**AUTO.__dict__, "gpu": "torch"})
    sel, a, kinds_a = run(auto_torch, [128], x, given)
    _, b, kinds_b = run(IndexConfig(**{**AUTO.__dict__, "gpu": "off"}), [128], x, given)
    assert kinds_a == kinds_b and kinds_a[-1] == "ivf-pq" and [r[:3] for r in a] == [r[:3] for r in b]
    assert np.allclose([r[3] or 0 for r in a], [r[3] or 0 for r in b], atol=1e-5)


def test_cpu_only_selector_process_never_imports_torch() -> None:
    """Importing torch costs ~700 MB resident: where no NVIDIA driver is, `auto` must not ask torch."""
    code = ("import sys, numpy as np\n"
            "from curator.index import VectorIndex\n"
            "from curator.config import IndexConfig\n"
            "idx = VectorIndex(8, IndexConfig(gpu='auto'))\n"
            "idx.add(np.eye(8, dtype=np.float32), list('abcdefgh'))\n"
            "assert idx.search(np.eye(8, dtype=np.float32), 2)[1][0, 0] == 0\n"
            "print('torch' in sys.modules, type(idx.index).__module__)\n")
    if Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver: auto may rightly ask torch")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    imported, module = out.stdout.split()
    assert imported == "False" and module.startswith("faiss"), out.stdout
