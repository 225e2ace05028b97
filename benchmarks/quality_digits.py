"""Quality of the selection on the digits demo stream, over several seeds.

    python benchmarks/quality_digits.py [--seeds 0 1 2] [--json FILE]

Per seed: label-noise detection (precision / recall / F1 of "flagged noisy" against the
flipped labels, share of relabels that restore the true label), duplicate removal
(near-duplicate groups left with exactly one kept member, clean items without a copy
that were dropped), and test accuracy of one fixed classifier (logistic regression on
pixels) trained on (a) the full noisy stream, (b) a random subset of the curated set's
size, (c) the curated set with corrected labels, (d) the clean original train split.
An offline peer measured in the same run: leave-one-out 10-NN label vote on the whole
stream at once (noise F1), the feature-based detector cleanlab-style tools use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import precision_recall_fscore_support  # noqa: E402

from curator.demo_data import demo_config, write_demo_inputs  # noqa: E402
from curator.store import read_table  # noqa: E402
from pipelines.ingest import run_ingest  # noqa: E402

COLS = ["seed", "noise_p", "noise_r", "noise_f1", "relabel_ok", "peer_knn_f1", "dup_groups_one",
        "clean_unique_lost", "kept", "acc_full_noisy", "acc_random_subset", "acc_curated", "acc_clean",
        "select_s"]


def _acc(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> float:
    clf = LogisticRegression(max_iter=3000, C=1.0)
    clf.fit(x / 16.0, y)
    return float((clf.predict(xt / 16.0) == yt).mean())


def _loo_knn_flags(x: np.ndarray, y: np.ndarray, k: int = 10) -> np.ndarray:
    f = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = f @ f.T
    np.fill_diagonal(s, -np.inf)
    nn = np.argsort(-s, axis=1)[:, :k]
    votes = np.array([np.bincount(y[row], minlength=10).argmax() for row in nn])
    return votes != y


def run_seed(seed: int, work: Path, overrides: dict | None = None) -> dict[str, float]:
    out = work / f"seed{seed}"
    ds = write_demo_inputs(out, seed)
    cfg = demo_config(out, seed, overrides)
    t0 = time.perf_counter()
    run_ingest(cfg, progress=False)
    select_s = time.perf_counter() - t0
    dec = read_table(out, "decisions").to_pandas().set_index("id")
    kept = read_table(out, "kept").to_pandas()
    truth = ds.truth.to_pandas().set_index("id")
    t = truth.join(dec, how="left")
    assert t["decision"].notna().all(), "every streamed item must have a decision"

    flagged = t["label_noisy"].fillna(False).astype(bool).to_numpy()
    flipped = t["flipped"].to_numpy()
    p, r, f1, _ = precision_recall_fscore_support(flipped, flagged, average="binary", zero_division=0)
    changed = t[flagged & (t["label_out"] != t["label_in"])]
    relabel_ok = float((changed["label_out"] == changed["true_label"]).mean()) if len(changed) else float("nan")

    kept_ids = set(kept["id"])
    t["is_kept"] = t.index.isin(kept_ids)
    sizes = t.groupby("group")["is_kept"].agg(["size", "sum"])
    dup_groups = sizes[sizes["size"] > 1]
    dup_one = float((dup_groups["sum"] == 1).mean())
    unique_clean = t[(t["group"].map(sizes["size"]) == 1) & (~t["flipped"])]
    lost = float((~unique_clean["is_kept"]).mean())

    pix = {r_["id"]: np.asarray(r_["embedding"], np.float64) for r_ in ds.stream + ds.bootstrap}
    all_ids = [r_["id"] for r_ in ds.stream + ds.bootstrap]
    x_full = np.stack([pix[i] for i in all_ids])
    y_full = np.array([r_["label"] for r_ in ds.stream + ds.bootstrap])
    x_cur = np.stack([pix[i] for i in kept["id"]])
    y_cur = kept["label"].to_numpy()
    rng = np.random.default_rng(seed)
    sub = rng.choice(len(all_ids), len(kept), replace=False)

    x_stream = np.stack([pix[r_["id"]] for r_ in ds.stream])
    y_stream = np.array([r_["label"] for r_ in ds.stream])
    peer_flags = _loo_knn_flags(x_stream, y_stream)
    flipped_stream = truth.loc[[r_["id"] for r_ in ds.stream], "flipped"].to_numpy()
    _, _, peer_f1, _ = precision_recall_fscore_support(flipped_stream, peer_flags, average="binary")

    return {
        "seed": seed, "noise_p": float(p), "noise_r": float(r), "noise_f1": float(f1), "relabel_ok": relabel_ok,
        "peer_knn_f1": float(peer_f1), "dup_groups_one": dup_one, "clean_unique_lost": lost,
        "kept": len(kept),
        "acc_full_noisy": _acc(x_full, y_full, ds.test_x, ds.test_y),
        "acc_random_subset": _acc(x_full[sub], y_full[sub], ds.test_x, ds.test_y),
        "acc_curated": _acc(x_cur, y_cur, ds.test_x, ds.test_y),
        "acc_clean": _acc(ds.train_x, ds.train_y, ds.test_x, ds.test_y),
        "select_s": select_s,
    }


def print_table(rows: list[dict[str, float]]) -> None:
    print(" | ".join(f"{c:>12}" for c in COLS))
    for r in rows:
        print(" | ".join(f"{r[c]:>12}" if isinstance(r[c], (int, str)) else f"{r[c]:>12.4f}" for c in COLS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a setting of the demo configuration, e.g. --set selector.k_label=10")
    ap.add_argument("--json", help="also write the figures here (keys as in the table)")
    args = ap.parse_args()
    overrides: dict[str, dict[str, str]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        sec, _, name = key.partition(".")
        overrides.setdefault(sec, {})[name] = value
    with tempfile.TemporaryDirectory(prefix="curator-bench-") as tmp:
        rows = [run_seed(s, Path(tmp), overrides) for s in args.seeds]
    mean = {c: (float(np.mean([r[c] for r in rows])) if c != "seed" else "mean") for c in COLS}
    print_table([*rows, mean])
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
