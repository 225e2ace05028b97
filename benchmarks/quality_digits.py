"""Quality of the selection on the digits demo stream, over several seeds, with the library defaults.

    python benchmarks/quality_digits.py [--seeds 0 1 2] [--json FILE]

Per seed: label-noise detection (precision / recall / F1 of "flagged noisy" against the
flipped labels, share of relabels that restore the true label), duplicate removal
(near-duplicate groups left with exactly one kept member, clean items without a copy
that were dropped), and test accuracy of one fixed classifier (logistic regression on
pixels) trained on (a) the full noisy stream, (b) a random subset of the curated set's
size, (c) the curated set with corrected labels, (d) the clean original train split.
Offline peers measured in the same run: leave-one-out 10-NN label vote on the whole stream at
once (noise F1), and cleanlab (confident learning: `find_label_issues` on 5-fold out-of-sample
probabilities of the same classifier), whose issues removed give (e) the cleanlab-cleaned set.
The thresholds the engine calibrated are read back from the run's manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import precision_recall_fscore_support  # noqa: E402

from curator.demo_data import demo_config, write_demo_inputs  # noqa: E402
from curator.store import read_manifest, read_table  # noqa: E402
from pipelines.ingest import run_ingest  # noqa: E402

COLS = ["seed", "noise_p", "noise_r", "noise_f1", "relabel_ok", "relabels", "abstained", "peer_knn_f1",
        "peer_cleanlab_f1", "dup_groups_one", "dup_groups_both_kept", "clean_unique_lost", "clean_unique_lost_as_dup",
        "kept", "acc_full_noisy", "acc_random_subset", "acc_curated", "acc_cleanlab", "acc_clean", "eps_dup",
        "tau_noise", "tau_relabel", "relabel_radius", "noise_rate_est", "select_s", "labels_status"]


def _acc(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, scale: float = 16.0) -> float:
    clf = LogisticRegression(max_iter=3000, C=1.0)
    clf.fit(x / scale, y)
    return float((clf.predict(xt / scale) == yt).mean())


def cleanlab_flags(x: np.ndarray, y: np.ndarray, scale: float = 16.0, seed: int = 0) -> np.ndarray:
    """cleanlab's label issues (confident learning) from 5-fold out-of-sample probabilities."""
    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    probs = cross_val_predict(LogisticRegression(max_iter=3000, C=1.0), x / scale, y, cv=folds,
                              method="predict_proba")
    return find_label_issues(y, probs)


def _loo_knn_flags(x: np.ndarray, y: np.ndarray, k: int = 10) -> np.ndarray:
    f = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = f @ f.T
    np.fill_diagonal(s, -np.inf)
    nn = np.argsort(-s, axis=1)[:, :k]
    votes = np.array([np.bincount(y[row], minlength=10).argmax() for row in nn])
    return votes != y


def score(seed: int, out: Path, truth_tbl, stream: list[dict], boot: list[dict], test_x: np.ndarray,
          test_y: np.ndarray, clean_x: np.ndarray, clean_y: np.ndarray, scale: float, select_s: float) -> dict:
    """Every column but the run itself: the run's decisions against the ground truth, and the peers."""
    dec = read_table(out, "decisions").to_pandas().set_index("id")
    kept = read_table(out, "kept").to_pandas()
    truth = truth_tbl.to_pandas().set_index("id")
    t = truth.join(dec, how="left")
    assert t["decision"].notna().all(), "every streamed item must have a decision"
    cal = read_manifest(out)["calibration"]

    flagged = t["label_noisy"].fillna(False).astype(bool).to_numpy()
    flipped = t["flipped"].to_numpy()
    p, r, f1, _ = precision_recall_fscore_support(flipped, flagged, average="binary", zero_division=0)
    changed = t[flagged & (t["label_out"] != t["label_in"])]
    relabel_ok = float((changed["label_out"] == changed["true_label"]).mean()) if len(changed) else float("nan")
    abstained = int((flagged & (t["label_out"] == t["label_in"])).sum())

    t["is_kept"] = t.index.isin(set(kept["id"]))
    sizes = t.groupby("group")["is_kept"].agg(["size", "sum"])
    dup_groups = sizes[sizes["size"] > 1]
    unique_clean = t[(t["group"].map(sizes["size"]) == 1) & (~t["flipped"])]

    pix = {r_["id"]: np.asarray(r_["embedding"], np.float64) for r_ in stream + boot}
    all_ids = [r_["id"] for r_ in stream + boot]
    x_full = np.stack([pix[i] for i in all_ids])
    y_full = np.array([r_["label"] for r_ in stream + boot])
    x_cur = np.stack([pix[i] for i in kept["id"]])
    y_cur = kept["label"].to_numpy()
    sub = np.random.default_rng(seed).choice(len(all_ids), len(kept), replace=False)

    x_stream = np.stack([pix[r_["id"]] for r_ in stream])
    y_stream = np.array([r_["label"] for r_ in stream])
    flipped_stream = truth.loc[[r_["id"] for r_ in stream], "flipped"].to_numpy()
    _, _, knn_f1, _ = precision_recall_fscore_support(flipped_stream, _loo_knn_flags(x_stream, y_stream),
                                                      average="binary")
    cl = cleanlab_flags(x_full, y_full, scale, seed)  # on everything the engine saw (bootstrap included)
    cl_stream = cl[: len(stream)]
    _, _, cl_f1, _ = precision_recall_fscore_support(flipped_stream, cl_stream, average="binary")
    return {
        "seed": seed, "noise_p": float(p), "noise_r": float(r), "noise_f1": float(f1), "relabel_ok": relabel_ok,
        "relabels": len(changed), "abstained": abstained, "peer_knn_f1": float(knn_f1),
        "peer_cleanlab_f1": float(cl_f1), "dup_groups_one": float((dup_groups["sum"] == 1).mean()),
        "dup_groups_both_kept": float((dup_groups["sum"] > 1).mean()),
        "clean_unique_lost": float((~unique_clean["is_kept"]).mean()),
        "clean_unique_lost_as_dup": float((unique_clean["decision"] == "dropped-duplicate").mean()),
        "kept": len(kept),
        "acc_full_noisy": _acc(x_full, y_full, test_x, test_y, scale),
        "acc_random_subset": _acc(x_full[sub], y_full[sub], test_x, test_y, scale),
        "acc_curated": _acc(x_cur, y_cur, test_x, test_y, scale),
        "acc_cleanlab": _acc(x_full[~cl], y_full[~cl], test_x, test_y, scale),
        "acc_clean": _acc(clean_x, clean_y, test_x, test_y, scale),
        "eps_dup": cal["eps_dup"]["value"], "tau_noise": cal["tau_noise"]["value"],
        "tau_relabel": cal["tau_relabel"]["value"], "relabel_radius": cal["relabel_radius"]["value"],
        "noise_rate_est": cal["tau_noise"].get("noise_rate", float("nan")), "select_s": select_s,
    } | abstained_columns(cal)


def abstained_columns(cal: dict) -> dict[str, str]:
    """Columns of a rule the run did not apply (its calibration evidence did not support it) read
    "abstained", not a number that would look like a result; the statuses are columns too."""
    out = {"labels_status": cal["tau_noise"]["origin"], "dup_status": cal["eps_dup"]["origin"]}
    if not cal["tau_noise"]["origin"].startswith(("calibrated", "config")):
        out |= {c: "abstained" for c in ("noise_p", "noise_r", "noise_f1", "relabel_ok", "tau_noise")}
    return out


def shuffled_with_truth(recs: list[dict], truth: list[tuple], rng: np.random.Generator) -> tuple[list[dict], Any]:
    """A dirtied stream in random order, and its ground truth as a table (id, true_label, given_label,
    flipped, group, is_copy): what `score` reads."""
    import pyarrow as pa

    order = rng.permutation(len(recs))
    recs, truth = [recs[k] for k in order], [truth[k] for k in order]
    cols = list(zip(*truth, strict=True))
    return recs, pa.table({"id": cols[0], "true_label": cols[1], "given_label": cols[2], "flipped": cols[3],
                           "group": cols[4], "is_copy": cols[5]})


def curate_precomputed(d: dict, out: Path, seed: int, model: str, batch_size: int) -> dict:
    """Write a stream of precomputed-embedding records and its trusted bootstrap as Parquet, curate
    them with the library defaults, and score the run (`score`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curator.config import load_config

    (out / "inputs").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(d["stream"]), out / "inputs" / "stream.parquet")
    pq.write_table(pa.Table.from_pylist(d["bootstrap"]), out / "inputs" / "bootstrap.parquet")
    cfg = load_config(None, {
        "embedder": {"kind": "precomputed", "model": model, "pretrained": ""},
        "selector": {"seed": seed},  # the library defaults
        "source": {"paths": [str(out / "inputs" / "stream.parquet")],
                   "bootstrap": [str(out / "inputs" / "bootstrap.parquet")], "batch_size": batch_size},
        "store": {"out": str(out), "commit_every": 1024}})
    t0 = time.perf_counter()
    run_ingest(cfg, progress=False)
    return score(seed, out, d["truth"], d["stream"], d["bootstrap"], d["test_x"], d["test_y"], d["clean_x"],
                 d["clean_y"], 1.0, time.perf_counter() - t0)


def run_seed(seed: int, work: Path, overrides: dict | None = None) -> dict[str, float]:
    out = work / f"seed{seed}"
    ds = write_demo_inputs(out, seed)
    cfg = demo_config(out, seed, overrides)
    t0 = time.perf_counter()
    run_ingest(cfg, progress=False)
    return score(seed, out, ds.truth, ds.stream, ds.bootstrap, ds.test_x, ds.test_y, ds.train_x, ds.train_y, 16.0,
                 time.perf_counter() - t0)


def print_table(rows: list[dict[str, float]], cols: list[str] = COLS) -> None:
    print(" | ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>12.4f}" if isinstance(r[c], float) else f"{r[c]!s:>12}" for c in cols))


def report_seeds(rows: list[dict[str, Any]], json_path: str | None, cols: list[str] = COLS, **extra: Any) -> None:
    """The per-seed rows and their mean as a table, and (with --json) as a file with `extra` first."""
    def avg(c: str) -> float | str:
        nums = [r[c] for r in rows if isinstance(r[c], (int, float)) and not isinstance(r[c], bool)]
        if c == "seed":
            return "mean"
        if len(nums) < len(rows):  # text (a set's name, a status) or a rule that abstained somewhere
            return f"{float(np.mean(nums)):.4f} ({len(nums)}/{len(rows)})" if nums else ""
        return float(np.mean(nums))

    mean = {c: avg(c) for c in cols}
    print_table([*rows, mean], cols)
    if json_path:
        Path(json_path).write_text(json.dumps({**extra, "rows": rows, "mean": mean}, indent=1))


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
    report_seeds(rows, args.json)


if __name__ == "__main__":
    main()
