"""Paired per-user test between two saved benchmark cells (any two folders, models, one dataset).

Each cell is ``FOLDER:MODEL``; its per-user test metrics (``FOLDER/per_user/<dataset>/<model>/
seed<s>.npz``, written by ``mmkgrec benchmark``) are pooled over the seeds, users x seeds, in
the same order on both sides (the same fixed split), as ``benchmarks/mmkg_ablation.py`` does.
Prints mean A - B and the two-sided Wilcoxon / t-test p-values per metric (no correction: one
comparison). Usage::

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


def pooled(cell: str, dataset: str, seeds: int) -> dict[str, np.ndarray]:
    folder, model = cell.rsplit(":", 1)
    files = [per_user_path(Path(folder), dataset, model, s) for s in range(seeds)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"error: missing per-user files: {', '.join(missing)}")
    loaded = [np.load(f) for f in files]
    return {m: np.concatenate([z[m] for z in loaded]) for m in METRICS}  # [users * seeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    a, b = pooled(args.a, args.dataset, args.seeds), pooled(args.b, args.dataset, args.seeds)
    for metric in METRICS:
        test = paired_tests(a[metric], b[metric])
        print(f"{metric}: A {a[metric].mean():.4f}  B {b[metric].mean():.4f}  "
              f"A - B {test['mean_diff']:+.4f}  Wilcoxon p {test['wilcoxon_p']:.2g}  "
              f"t-test p {test['ttest_p']:.2g}  ({test['n_users']} users x seeds)")


if __name__ == "__main__":
    main()
