"""results.md: per dataset, mean ± std over seeds with significance markers, breakdowns, plots."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from mmkgrec.config import file_slug
from mmkgrec.errors import MMKGRecError
from mmkgrec.experiments.breakdown import COLD_MAX, HEAD_SHARE
from mmkgrec.experiments.plots import plot_breakdown, plot_metrics
from mmkgrec.experiments.recbole import RECBOLE_DATASETS, recbole_readme, recbole_rows
from mmkgrec.experiments.results import read_csv, requested
from mmkgrec.experiments.significance import model_tests
from mmkgrec.experiments.spec import ALPHA, LABELS, TABLE_METRICS, BenchmarkSpec


def write_report(spec: BenchmarkSpec, out_dir: str | Path) -> Path:
    """results.md, significance.csv and plots/ from the cells of ``spec`` saved in ``out_dir``."""
    out = Path(out_dir)
    results = requested(read_csv(out / "results.csv"), spec)
    breakdown = requested(read_csv(out / "breakdown.csv"), spec)
    if not len(results):
        raise MMKGRecError(f"{out / 'results.csv'} holds no results of these cells yet")
    reference = recbole_readme(spec)
    lines = [f"# Benchmark: {', '.join(spec.models)} ({spec.protocol} protocol)", "",
             f"Seeds {spec.seeds}; "
             + (f"fixed splits from {spec.presplit_root} (only model seeds vary). "
                if spec.presplit_root
                else "split s = split(dataset, seed=s), shared by all models. ")
             + f"Options: {'tuned from ' + spec.tuned if spec.tuned else 'per-model defaults'}"
             + (f"; --set {' '.join(spec.overrides)}" if spec.overrides else "") + ".", "",
             "Cells: mean ± std over seeds (std with ddof=1). **Bold**: best mean. "
             "† / ‡: significantly worse than the best model (paired Wilcoxon signed-rank / "
             "paired t-test, two-sided, on per-user values averaged over seeds, Holm-corrected "
             f"across the models compared, p < {ALPHA}); only NDCG@20 and Recall@20 are tested. "
             "s/epoch: mean training seconds per epoch; s/test: one test evaluation; "
             "peak RSS: the process-wide memory high-water mark when the cell finished "
             "(cells run in one process, so it never decreases).", ""]
    significance = []
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    for dataset in spec.datasets:
        rows = results[results["dataset"] == dataset]
        if not len(rows):
            continue
        models = [m for m in spec.models if m in set(rows["model"])]
        tests = model_tests(out, dataset, rows, models)
        significance.append(tests)
        recbole = None
        if reference is not None and spec.protocol == "topk" and (
                spec.recbole_reference or (spec.presplit_root and dataset in RECBOLE_DATASETS)):
            recbole = recbole_rows(*reference, dataset)
        lines += [f"## {dataset}", "", _setting_line(rows, spec), ""]
        lines += _metric_table(rows, models, spec.protocol, tests, recbole)
        if recbole is not None and reference is not None:
            lines += ["", f"RecBole rows: parsed from {reference[0]} (their own runs on the same "
                          f"pre-split; not re-run here)."]
        cells = breakdown[breakdown["dataset"] == dataset]
        lines += ["", *_breakdown_tables(cells, models), ""]
        plot_metrics(plots / f"{file_slug(dataset)}-metrics.png", dataset, rows, models,
                      TABLE_METRICS[spec.protocol])
        plot_breakdown(plots / f"{file_slug(dataset)}-breakdown.png", dataset, cells, models)
        lines += [f"![metrics](plots/{file_slug(dataset)}-metrics.png) "
                  f"![breakdown](plots/{file_slug(dataset)}-breakdown.png)", ""]
    if significance:
        pd.concat(significance, ignore_index=True).to_csv(out / "significance.csv", index=False)
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _setting_line(rows: pd.DataFrame, spec: BenchmarkSpec) -> str:
    """What every row of a dataset's table ranked and saw: candidate set, content scope."""
    def values(column: str) -> str:
        if column not in rows.columns:
            return "not recorded (cells run before the option existed)"
        return " / ".join(str(v) for v in pd.unique(rows[column].fillna("not recorded")))

    return (f"Candidate items: {values('candidates')}. Content scope: {values('content_scope')}."
            + (f" MMKG: {spec.mmkg}-based." if spec.mmkg != "attribute" else "")
            + (f" Positive threshold: {spec.threshold:g}." if spec.threshold is not None else ""))


def _metric_table(rows: pd.DataFrame, models: list[str], protocol: str, tests: pd.DataFrame,
                  recbole: pd.DataFrame | None) -> list[str]:
    metrics = TABLE_METRICS[protocol]
    header = ["model", *(LABELS[m] for m in metrics), "s/epoch", "s/test", "epochs",
              "peak RSS MB", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    grouped = rows.groupby("model")
    means = {m: grouped[f"test_{m}"].mean() for m in metrics if f"test_{m}" in rows}
    for model in models:
        cells = grouped.get_group(model)
        texts = [model]
        for metric in metrics:
            column = f"test_{metric}"
            if column not in cells or cells[column].isna().all():
                texts.append("–")
                continue
            text = _mean_std(cells[column])
            if means[metric].loc[models].idxmax() == model:
                text = f"**{text}**"
            texts.append(text + _markers(tests, metric, model))
        texts += [f"{cells['train_s_per_epoch'].mean():.2f}", f"{cells['eval_s_test'].mean():.2f}",
                  f"{cells['epochs_run'].mean():.0f}", f"{cells['peak_rss_mb'].max():.0f}",
                  str(len(cells))]
        lines.append("| " + " | ".join(texts) + " |")
    if recbole is not None:
        for _, ref in recbole.iterrows():
            texts = [f"{ref['model']} — RecBole (reference)"]
            texts += [_fmt(ref.get(m), 4) for m in metrics]
            texts += [_fmt(ref.get("train_s_per_epoch"), 2), _fmt(ref.get("eval_s_test"), 2),
                      "", "", ""]
            lines.append("| " + " | ".join(texts) + " |")
    return lines


def _markers(tests: pd.DataFrame, metric: str, model: str) -> str:
    hit = tests[(tests["metric"] == metric) & (tests["model"] == model)]
    if not len(hit):
        return ""
    return ("†" if hit["wilcoxon_p_holm"].iloc[0] < ALPHA else "") + (
        "‡" if hit["ttest_p_holm"].iloc[0] < ALPHA else "")


def _breakdown_tables(cells: pd.DataFrame, models: list[str]) -> list[str]:
    """Markdown: NDCG@20 by activity group; Recall@20 on head / tail test items."""
    lines = []
    for kind, metric, title, unit in (
            ("activity", "ndcg@20", "NDCG@20 by user activity (quartiles of the train-history "
             f"length; <={COLD_MAX}: users with at most {COLD_MAX} train positives)", "items"),
            ("popularity", "recall@20", f"Recall@20 on head (the top {HEAD_SHARE:.0%} of items by "
             "train positives) / tail test items", "positives per item")):
        part = cells[cells["breakdown"] == kind]
        if not len(part):
            continue
        groups = _group_info(part)
        header = ["model"] + [f"{g}: {lo}–{hi} {unit}, {n} users"
                              for g, lo, hi, n in groups.itertuples()]
        lines += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        table = part.groupby(["model", "group"])[metric].agg(["mean", "std", "size"])
        for model in models:
            texts = [model]
            for group in groups.index:
                if (model, group) not in table.index:
                    texts.append("–")
                    continue
                mean, std, size = table.loc[(model, group)]
                texts.append(f"{mean:.4f}" + (f" ± {std:.4f}" if size > 1 else ""))
            lines.append("| " + " | ".join(texts) + " |")
        lines.append("")
    return lines


def _group_info(part: pd.DataFrame) -> pd.DataFrame:
    """Per group (in first-seen order): lo / hi over seeds, users (mean over cells)."""
    info = part.groupby("group", sort=False).agg(lo=("lo", "min"), hi=("hi", "max"),
                                                 n=("n_users", "mean"))
    return info.assign(n=info["n"].round().astype(int))


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) < 2:
        return f"{values.mean():.4f}"
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def _fmt(value, digits: int) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:.{digits}f}")
