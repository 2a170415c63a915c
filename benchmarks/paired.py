"""Paired per-user test between two saved benchmark cells (any two folders, models, one dataset).

Each cell is ``FOLDER:MODEL``; its per-user test metrics (``FOLDER/per_user/<dataset>/<model>/
seed<s>.npz``, written by ``mmkgrec benchmark``) are pooled over the seeds, users x seeds, in
the same order on both sides (the same fixed split), as ``benchmarks/mmkg_ablation.py`` does.
Prints mean A - B and the two-sided Wilcoxon / t-test p-values per metric (no correction: one
comparison). ``--average-seeds`` first averages each user's values over the seeds and tests
users (the stricter test the benchmark tables use; pooling treats a user's seeds as separate
samples). ``--max-train-items N`` restricts both sides to the users with at most N train
positives (the "<=3" breakdown of the benchmark tables). Usage::

    python benchmarks/paired.py --dataset lastfm-kgcn-content --seeds 3 \\
        benchmarks/results/mmkg-tuned-lastfm-noeval:lattice \\
        benchmarks/results/mmkg-tuned-lastfm-noeval/ablation-lattice/no-content:lattice
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mmkgrec.experiments.results import per_user_path
from mmkgrec.experiments.significance import paired_tests

METRICS = ("recall@20", "ndcg@20")


def pooled(cell: str, dataset: str, seeds: int, average: bool) -> dict[str, np.ndarray]:
    folder, model = cell.rsplit(":", 1)
    files = [per_user_path(Path(folder), dataset, model, s) for s in range(seeds)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"error: missing per-user files: {', '.join(missing)}")
    loaded = [np.load(f) for f in files]
    if average:
        return {m: np.mean([z[m] for z in loaded], axis=0)  # [users]
                for m in (*METRICS, "train_items")}
    return {m: np.concatenate([z[m] for z in loaded])  # [users * seeds]
            for m in (*METRICS, "train_items")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-train-items", type=int, default=None,
                        help="only users with at most this many train positives")
    parser.add_argument("--average-seeds", action="store_true",
                        help="average each user over the seeds, then test users")
    args = parser.parse_args()
    a = pooled(args.a, args.dataset, args.seeds, args.average_seeds)
    b = pooled(args.b, args.dataset, args.seeds, args.average_seeds)
    keep = np.ones(len(a["train_items"]), dtype=bool)  # [users] or [users * seeds]
    if args.max_train_items is not None:
        keep = a["train_items"] <= args.max_train_items
    unit = "users" if args.average_seeds else "users x seeds"
    for metric in METRICS:
        test = paired_tests(a[metric][keep], b[metric][keep])
        print(f"{metric}: A {a[metric][keep].mean():.4f}  B {b[metric][keep].mean():.4f}  "
              f"A - B {test['mean_diff']:+.4f}  Wilcoxon p {test['wilcoxon_p']:.2g}  "
              f"t-test p {test['ttest_p']:.2g}  ({test['n_users']} {unit})")


if __name__ == "__main__":
    main()
