"""Full-ranking seconds of trained runs, timed in one process, alternating, medians.

Each run directory (``mmkgrec train --out`` or a benchmark cell under ``OUT/runs/...``) is loaded
once; then each repeat ranks every test user of each run in turn (the shared ``rank_stage`` path:
prepare, score all candidate items, mask, top-k), so machine load affects every run alike. The
runs must rank the same test users and candidate items; their settings (model options)
are printed beside the figures, with the s/epoch their training recorded. Usage::

    OMP_NUM_THREADS=2 python benchmarks/run_speed.py --threads 2 --repeats 5 \\
        benchmarks/results/mmkg-tuned/runs/music-d/mmkgcf/seed0 \\
        benchmarks/results/topk/runs/music-d/mkgcn/seed0 \\
        benchmarks/results/mmkg-tuned/runs/music-d/lightgcn/seed0
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from mmkgrec.evaluate.ranking import time_full_ranking
from mmkgrec.train.run import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON of the figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [load_run(path) for path in args.runs]
    users = runs[0].split.ground_truth("test")[0]  # [n_test_users]
    ranked = runs[0].split.candidate_items("test")  # None: every item
    for path, run in zip(args.runs[1:], runs[1:]):  # the same users and candidate items
        other = run.split.candidate_items("test")
        same_items = (ranked is None and other is None) or (
            ranked is not None and other is not None and np.array_equal(ranked, other))
        if not (np.array_equal(run.split.ground_truth("test")[0], users) and same_items
                and run.split.n_items == runs[0].split.n_items):
            raise SystemExit(f"{path}: other test users or candidate items than {args.runs[0]}; "
                             f"its timing is not comparable")
    candidates = runs[0].split.n_items if ranked is None else int(ranked.size)
    timings: list[list[float]] = [[] for _ in runs]
    with torch.no_grad():
        for run in runs:  # warm-up (lazy caches, allocator)
            time_full_ranking(run.model, run.split, "test", k=20, users=users)
        for _ in range(args.repeats):
            for i, run in enumerate(runs):
                timings[i].append(time_full_ranking(run.model, run.split, "test", k=20,
                                                    users=users))
    rows = []
    for path, run, seconds in zip(args.runs, runs, timings):
        metrics = run.metrics or {}
        options = {k: v for k, v in run.model.config.model_dump().items()
                   if k in ("dim", "n_layers", "n_hops", "n_neighbors", "kg_weight", "knn",
                             "kg_item_knn", "tag_item_knn", "user_kg_weight", "social_weight",
                             "content_route", "item_layers")}
        rows.append({"run": str(path), "model": run.spec.model, "settings": options,
                     "users": int(users.size), "items": candidates,
                     "rank_s_median": statistics.median(seconds), "rank_s_all": seconds,
                     "train_s_per_epoch": metrics.get("train_seconds_per_epoch")})
    print(f"threads {args.threads}, {args.repeats} repeats alternating, "
          f"{users.size} test users, {candidates} items ranked")
    for row in rows:
        print(f"{row['model']:>10}  full ranking {row['rank_s_median']:.3f} s (median)  "
              f"train {row['train_s_per_epoch'] or float('nan'):.2f} s/epoch (as recorded)  "
              f"{row['settings']}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
