"""Paired significance tests on per-user metrics, and Holm's step-down correction.

Two models evaluated on the same split give one value per test user each (e.g. NDCG@20 from
:func:`mmkgrec.evaluate.ranking.evaluate_topk`'s ``per_user``). :func:`paired_tests` compares
them with the Wilcoxon signed-rank test and the paired t-test (two-sided); :func:`holm` adjusts
the p-values of several such comparisons (family-wise error rate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mmkgrec.errors import ConfigError
from mmkgrec.experiments.results import per_user_path
from mmkgrec.experiments.spec import TESTED


def paired_tests(per_user_a, per_user_b) -> dict[str, float]:
    """Two-sided paired tests of ``a`` against ``b`` over the same users, in the same order.

    Args:
        per_user_a: ``[n_users]`` metric values of model A.
        per_user_b: ``[n_users]`` values of model B for the same users.

    Returns:
        ``{"wilcoxon_p", "ttest_p", "mean_diff", "n_users"}``; ``mean_diff`` = mean(a - b).
        When every difference is zero both p-values are 1.0 (no evidence of a difference);
        with fewer than two users they are NaN.

    Raises:
        ConfigError: the arrays differ in length, are not 1-D, or hold NaN / inf.
    """
    a = np.asarray(per_user_a, dtype=np.float64)  # [n]
    b = np.asarray(per_user_b, dtype=np.float64)  # [n]
    if a.ndim != 1 or a.shape != b.shape:
        raise ConfigError(f"paired tests need two 1-D arrays over the same users, got shapes "
                          f"{list(a.shape)} and {list(b.shape)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("paired tests need finite per-user values (found NaN or inf)")
    diff = a - b  # [n]
    result = {"mean_diff": float(diff.mean()) if diff.size else float("nan"),
              "n_users": int(diff.size)}
    if diff.size < 2:
        return {**result, "wilcoxon_p": float("nan"), "ttest_p": float("nan")}
    if not diff.any():
        return {**result, "wilcoxon_p": 1.0, "ttest_p": 1.0}
    # zero_method="wilcox" drops tied pairs (the classic test); scipy picks exact / normal.
    wilcoxon_p = stats.wilcoxon(a, b, zero_method="wilcox").pvalue
    # a constant non-zero difference has t = inf: certain
    ttest_p = 0.0 if np.ptp(diff) == 0 else stats.ttest_rel(a, b).pvalue
    return {**result, "wilcoxon_p": float(wilcoxon_p), "ttest_p": float(ttest_p)}


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest of m p-values (0-based) becomes
    ``max_{j <= i} min(1, (m - j) * p_(j))``. NaN p-values stay NaN and do not count in m.

    Args:
        pvalues: ``[m]`` raw p-values in [0, 1] (or NaN).

    Returns:
        ``[m]`` float64 adjusted p-values; reject H0 where ``adjusted < alpha``.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)  # [m]
    if ((p < 0) | (p > 1)).any():
        raise ConfigError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)][:3].tolist()}")
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]  # indices of valid p, ascending
    m = len(order)
    scaled = (m - np.arange(m)) * p[order]  # [m]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def model_tests(out: Path, dataset: str, rows: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Each model against the best (by mean) on each tested metric; Holm across the models."""
    records = []
    for metric in TESTED:
        means = rows.groupby("model")[f"test_{metric}"].mean()
        best = means.loc[models].idxmax()
        values = _per_user_means(out, dataset, rows, models, metric)  # [n_users, n_models]
        others = [m for m in models if m != best]
        tests = [paired_tests(values[best].to_numpy(), values[m].to_numpy()) for m in others]
        wilcoxon = holm([t["wilcoxon_p"] for t in tests])
        ttest = holm([t["ttest_p"] for t in tests])
        for i, (model, test) in enumerate(zip(others, tests)):
            records.append({"dataset": dataset, "metric": metric, "model": model, "best": best,
                            "n_users": test["n_users"], "best_minus_model": test["mean_diff"],
                            "wilcoxon_p": test["wilcoxon_p"], "wilcoxon_p_holm": wilcoxon[i],
                            "ttest_p": test["ttest_p"], "ttest_p_holm": ttest[i]})
    return pd.DataFrame(records, columns=["dataset", "metric", "model", "best", "n_users",
                                          "best_minus_model", "wilcoxon_p", "wilcoxon_p_holm",
                                          "ttest_p", "ttest_p_holm"])


def _per_user_means(out: Path, dataset: str, rows: pd.DataFrame, models: list[str],
                    metric: str) -> pd.DataFrame:
    """[n_users, n_models] per-user ``metric`` averaged over seeds, users evaluated in every
    cell (random splits may differ in their test users across seeds)."""
    frames = []
    for model, seed in rows[["model", "seed"]].itertuples(index=False):  # one file per cell
        saved = np.load(per_user_path(out, dataset, model, seed))
        frames.append(pd.DataFrame({"model": model, "seed": seed, "user": saved["users"],
                                    "value": saved[metric]}))
    long = pd.concat(frames, ignore_index=True)
    n_cells = len(rows)
    everywhere = long.groupby("user")["value"].transform("size") == n_cells
    table = long[everywhere].groupby(["user", "model"])["value"].mean().unstack("model")
    return table[models]
