"""Selection quality on small embedding spaces the calibration was not developed on: scikit-learn's
tabular sets, z-scored, with the library defaults and a trusted bootstrap.

    python benchmarks/quality_tabular.py [--sets iris wine breast_cancer digits_z] [--seeds 0 1 2] [--json FILE]

Each set is split 70/30 into a stream and a held-out test split; a bootstrap of 20% of the stream
side (at least 30 items) is trusted and clean. The rest is dirtied as in the digits demo: 20% of
labels flipped to a random other class, 30% of items copied with Gaussian noise of std 0.01 of
a feature's spread (the features are z-scored: std 1), shuffled. These are a few hundred items
each, 4 to 64 features: nothing like the spaces the defaults were developed on, which is the
point. Columns and peers (10-NN vote, cleanlab) are `quality_digits.py`'s, measured in the same
run; the classifier is logistic regression on the features. A rule the engine did not apply
(its calibration evidence did not support it) shows `abstained` in its columns instead of a
number that would look like a result.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_digits import COLS, curate_precomputed, report_seeds, shuffled_with_truth  # noqa: E402

SETS = ("iris", "wine", "breast_cancer", "digits_z")
TAB_COLS = ["set", *COLS]


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    loader = {"iris": datasets.load_iris, "wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer,
              "digits_z": datasets.load_digits}[name]
    x, y = loader(return_X_y=True)
    x = x.astype(np.float64)
    sd = x.std(0)
    x = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
    return x.astype(np.float32), y.astype(np.int64)


def tabular_stream(name: str, seed: int, flip: float = 0.2, dup: float = 0.3, noise_std: float = 0.01) -> dict:
    x, y = load(name)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    n_test = int(round(0.3 * len(x)))
    test, train = perm[:n_test], perm[n_test:]
    n_boot = max(30, int(round(0.2 * len(train))))
    boot, rest = train[:n_boot], train[n_boot:]
    n_cls = int(y.max()) + 1
    given = y[rest].copy()
    flipped = rng.random(len(rest)) < flip
    given[flipped] = (y[rest][flipped] + rng.integers(1, n_cls, int(flipped.sum()))) % n_cls

    def rec(rid: str, v: np.ndarray, label: int) -> dict:
        return {"id": rid, "label": int(label), "embedding": v.tolist()}

    recs = [rec(f"t{i}", x[i], given[j]) for j, i in enumerate(rest)]
    truth = [(f"t{i}", int(y[i]), int(given[j]), bool(flipped[j]), int(i), False) for j, i in enumerate(rest)]
    for j in rng.choice(len(rest), int(round(dup * len(rest))), replace=False):
        i = rest[j]
        recs.append(rec(f"t{i}-copy", x[i] + rng.normal(0.0, noise_std, x.shape[1]).astype(np.float32), given[j]))
        truth.append((f"t{i}-copy", int(y[i]), int(given[j]), bool(flipped[j]), int(i), True))
    recs, truth_tbl = shuffled_with_truth(recs, truth, rng)
    return {"bootstrap": [rec(f"boot-{i}", x[i], y[i]) for i in boot], "stream": recs, "truth": truth_tbl,
            "clean_x": x[train], "clean_y": y[train], "test_x": x[test], "test_y": y[test]}


def run_one(name: str, seed: int, work: Path) -> dict:
    d = tabular_stream(name, seed)
    return {"set": name, **curate_precomputed(d, work / f"{name}-{seed}", seed, f"{name}-features", 64)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", help="also write the figures here (keys as in the table)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="curator-tabular-") as tmp:
        rows = [run_one(name, s, Path(tmp)) for name in args.sets for s in args.seeds]
    report_seeds(rows, args.json, TAB_COLS)


if __name__ == "__main__":
    main()
