import numpy as np
import pytest

from curator.config import IndexConfig
from curator.index import VectorIndex


def _unit(rng, n, d=16):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_search_finds_itself_and_snapshot_restores(tmp_path, kind):
    rng = np.random.default_rng(0)
    x = _unit(rng, 600)
    cfg = IndexConfig(kind=kind, ivf_nlist=8, ivf_nprobe=8, ivf_train_size=300)
    idx = VectorIndex(16, cfg)
    for chunk in range(0, 600, 200):
        idx.add(x[chunk:chunk + 200], [f"i{j}" for j in range(chunk, chunk + 200)],
                np.arange(chunk, chunk + 200) % 3)
    assert len(idx) == 600
    sims, rows = idx.search(x[:50], 4)
    assert (rows[:, 0] == np.arange(50)).mean() > 0.95
    assert np.allclose(sims[rows[:, 0] == np.arange(50), 0], 1.0, atol=1e-4)
    assert idx.labels[rows[0, 0]] == rows[0, 0] % 3 and idx.ids[rows[0, 0]] == f"i{rows[0, 0]}"
    idx.save(tmp_path / "snap")
    back = VectorIndex.load(tmp_path / "snap", cfg)
    s2, r2 = back.search(x[:50], 4)
    assert np.array_equal(r2, rows) and np.allclose(s2, sims)
    assert back.ids == idx.ids and np.array_equal(back.labels, idx.labels)


def test_short_results_are_padded():
    idx = VectorIndex(4)
    sims, rows = idx.search(np.eye(4, dtype=np.float32)[:2], 3)
    assert (rows == -1).all() and np.isneginf(sims).all()
    idx.add(np.eye(4, dtype=np.float32)[:1], ["a"])
    sims, rows = idx.search(np.eye(4, dtype=np.float32)[:1], 3)
    assert rows[0].tolist() == [0, -1, -1] and sims[0, 0] == pytest.approx(1.0)


def test_wrong_dimension_is_a_clear_error():
    with pytest.raises(ValueError, match="16-d"):
        VectorIndex(16).add(np.zeros((2, 8), np.float32), ["a", "b"])


def test_gpu_on_without_gpu_is_refused():
    with pytest.raises(RuntimeError, match="no GPU"):
        VectorIndex(8, IndexConfig(gpu="on"))


def test_searches_do_not_depend_on_the_thread_count():
    """FAISS's BLAS products sum differently on 1 and 2 threads; the index's searches -- exact, then
    an IVF trained on its rows in the background -- may not, or a decision would depend on the cores a
    process had (`curator ingest` on every core, a one-CPU actor, a run resumed elsewhere). 512-d and
    batches of 256: where FAISS would otherwise take the product."""
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, 512)).astype(np.float32)
    x = centres[rng.integers(0, 64, 3072)] + rng.normal(0, 0.04, (3072, 512)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    threads = faiss.omp_get_max_threads()
    runs = []
    try:
        for t in (1, 2):
            faiss.omp_set_num_threads(t)
            idx = VectorIndex(512, IndexConfig(kind="auto", auto_exact_max=1024, auto_min_lag=256))
            found = []
            for s in range(0, len(x), 256):
                seqs = np.arange(s, s + 256)
                found.append(idx.search(x[s:s + 256], 8, seqs))
                idx.add(x[s:s + 256], [f"i{j}" for j in seqs], None, seqs)
            idx.settle()
            found.append(idx.search(x[:256], 8))
            runs.append((found, idx.kind))
    finally:
        faiss.omp_set_num_threads(threads)
    (one, kind), (two, _) = runs
    assert kind == "ivf-pq"
    for (s1, r1), (s2, r2) in zip(one, two, strict=True):
        assert np.array_equal(r1, r2) and np.array_equal(s1, s2)  # bit for bit
