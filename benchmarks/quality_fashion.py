"""Selection quality in a second embedding space: Fashion-MNIST pixels, with the library defaults.

    python benchmarks/quality_fashion.py [--seeds 0 1 2] [--json FILE]

The same dirt as the digits demo -- 20% of labels flipped to a random other class, 30%
near-duplicate copies (Gaussian pixel noise, std 0.02 of the 0-1 range: about 5 grey levels)
-- on a harder set in a different space: 784-d pixels of clothing images, where a 10-NN vote
is right far less often than on digits. Per seed, 3,000 training images are streamed after a
trusted bootstrap of 100 (all drawn at random from the 60k training split); 2,000 images of the
official test split are held out. Nothing is tuned for it: the thresholds are calibrated by
the engine (read back from the manifest). The columns and the peers (10-NN vote, cleanlab) are
those of `quality_digits.py`, measured in the same run; the classifier is logistic regression
on the pixels.

Needs Debian's ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``); skipped,
with a note, when it is absent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from infobatch import FASHION_DIR, _idx  # noqa: E402
from quality_digits import curate_precomputed, report_seeds, shuffled_with_truth  # noqa: E402


def fashion_stream(seed: int, n: int = 3000, n_boot: int = 100, flip: float = 0.2, dup: float = 0.3,
                   noise_std: float = 0.02, n_test: int = 2000) -> dict:
    x = _idx(FASHION_DIR / "train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0
    y = _idx(FASHION_DIR / "train-labels-idx1-ubyte.gz").astype(np.int64)
    xt = _idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0
    yt = _idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x), n + n_boot, replace=False)
    boot, rest = pick[:n_boot], pick[n_boot:]
    given = y[rest].copy()
    flipped = rng.random(n) < flip
    given[flipped] = (y[rest][flipped] + rng.integers(1, 10, int(flipped.sum()))) % 10

    def rec(rid: str, pixels: np.ndarray, label: int) -> dict:
        return {"id": rid, "label": int(label), "embedding": pixels.tolist()}

    recs = [rec(f"f{i}", x[i], given[j]) for j, i in enumerate(rest)]
    truth = [(f"f{i}", int(y[i]), int(given[j]), bool(flipped[j]), int(i), False) for j, i in enumerate(rest)]
    for j in rng.choice(n, int(round(dup * n)), replace=False):
        i = rest[j]
        noisy = np.clip(x[i] + rng.normal(0.0, noise_std, 784), 0.0, 1.0).astype(np.float32)
        recs.append(rec(f"f{i}-copy", noisy, given[j]))
        truth.append((f"f{i}-copy", int(y[i]), int(given[j]), bool(flipped[j]), int(i), True))
    recs, truth_tbl = shuffled_with_truth(recs, truth, rng)
    test = rng.choice(len(xt), n_test, replace=False)
    return {"bootstrap": [rec(f"boot-{i}", x[i], y[i]) for i in boot], "stream": recs, "truth": truth_tbl,
            "clean_x": np.concatenate([x[boot], x[rest]]), "clean_y": np.concatenate([y[boot], y[rest]]),
            "test_x": xt[test], "test_y": yt[test]}


def run_seed(seed: int, work: Path) -> dict:
    return curate_precomputed(fashion_stream(seed), work / f"seed{seed}", seed, "fashion-pixels", 128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", help="also write the figures here (keys as in the table)")
    args = ap.parse_args()
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        print(f"skipped: {FASHION_DIR} not found (apt-get install dataset-fashion-mnist)")
        return
    with tempfile.TemporaryDirectory(prefix="curator-fashion-") as tmp:
        rows = [run_seed(s, Path(tmp)) for s in args.seeds]
    report_seeds(rows, args.json)


if __name__ == "__main__":
    main()
