"""The benchmark's figures: test metrics and breakdowns as grouped bars (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmkgrec.experiments.spec import LABELS


def plot_metrics(path: Path, dataset: str, rows: pd.DataFrame, models: list[str],
                  metrics: tuple[str, ...]) -> None:
    """Grouped bars: one group per metric, one bar per model, error bars = std over seeds."""
    from matplotlib.figure import Figure

    metrics = tuple(m for m in metrics if f"test_{m}" in rows)
    stats = rows.groupby("model")[[f"test_{m}" for m in metrics]].agg(["mean", "std"])
    figure = Figure(figsize=(1.6 + 1.2 * len(metrics) * max(1, len(models)) / 3, 3.6),
                    layout="constrained")
    axis = figure.subplots()
    width = 0.8 / len(models)
    x = np.arange(len(metrics))
    for i, model in enumerate(models):  # a handful of models
        mean = [stats.loc[model, (f"test_{m}", "mean")] for m in metrics]
        std = np.nan_to_num([stats.loc[model, (f"test_{m}", "std")] for m in metrics])
        axis.bar(x + (i - (len(models) - 1) / 2) * width, mean, width, yerr=std, capsize=2,
                 label=model)
    axis.set_xticks(x, [LABELS.get(m, m) for m in metrics])
    axis.set_title(f"{dataset}: test metrics (mean ± std over seeds)")
    axis.legend(fontsize="small", ncols=min(4, len(models)))
    figure.savefig(path, dpi=100)


def plot_breakdown(path: Path, dataset: str, cells: pd.DataFrame, models: list[str]) -> None:
    """Two panels of grouped bars: NDCG@20 by activity group; Recall@20 head / tail."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.6), layout="constrained")
    for axis, (kind, metric) in zip(figure.subplots(1, 2),
                                    (("activity", "ndcg@20"), ("popularity", "recall@20"))):
        part = cells[cells["breakdown"] == kind]
        if not len(part):
            axis.set_axis_off()
            continue
        groups = list(dict.fromkeys(part["group"]))
        stats = part.groupby(["model", "group"])[metric].agg(["mean", "std"])
        width = 0.8 / len(models)
        x = np.arange(len(groups))
        for i, model in enumerate(models):
            sub = stats.reindex([(model, g) for g in groups])
            axis.bar(x + (i - (len(models) - 1) / 2) * width, sub["mean"], width,
                     yerr=np.nan_to_num(sub["std"].to_numpy()), capsize=2, label=model)
        axis.set_xticks(x, groups)
        axis.set_title(f"{dataset}: {LABELS[metric]} by "
                       f"{'train-history quartile' if kind == 'activity' else 'item popularity'}")
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=100)
