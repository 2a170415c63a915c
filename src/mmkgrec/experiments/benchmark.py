"""Benchmark: every (dataset, model, seed) cell on identical splits, then tables, tests and plots.

For seed ``s`` every model trains on the same split ``split(dataset, protocol, seed=s)``; with a
pre-split root (topk) every seed uses ``ROOT/<dataset>/{train,valid,test}.tsv`` and only the model
seeds vary. Per-model options: the defaults (``configs/<model>.toml`` with dataset overrides), or
``TUNED/<dataset>/<model>.toml`` written by ``mmkgrec tune``, then ``--set`` overrides.

``out_dir`` layout::

    results.csv     one row per dataset x model x seed: test and valid metrics, timings, epochs,
                    peak RSS, the resolved configs and their hash (resume key)
    breakdown.csv   per cell: NDCG@20 / Recall@20 by user activity and by item popularity
    significance.csv  per dataset and tested metric: each model against the best one
    results.md      per dataset: mean ± std over seeds with significance markers, breakdowns
    plots/          <dataset>-metrics.png, <dataset>-breakdown.png
    per_user/<dataset>/<model>/seed<k>.npz   users, ndcg@20, recall@20, train_items [n_test_users]
    runs/<dataset>/<model>/seed<k>/          the run directory of each cell (best/ checkpoint)

Re-running with the same ``out_dir`` skips the cells already in results.csv whose config hash
(dataset, model, seed, protocol, split fingerprint, resolved configs) is unchanged.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from mmkgrec.config import file_slug
from mmkgrec.data.dataset import MMKG
from mmkgrec.data.registry import available_names, data_roots, load
from mmkgrec.data.split import Split, apply_presplit, split
from mmkgrec.errors import ConfigError, MMKGRecError
from mmkgrec.evaluate.metrics import per_user_topk_metrics
from mmkgrec.evaluate.ranking import rank_stage  # [n_eval, k] top items, one pass
from mmkgrec.experiments.breakdown import breakdown_groups
from mmkgrec.experiments.recbole import recbole_readme
from mmkgrec.experiments.report import write_report
from mmkgrec.experiments.results import find, per_user_path, read_csv, upsert, write_csv
from mmkgrec.experiments.spec import (
    TESTED,
    BenchmarkSpec,
    K,
    cell_hash,
    cell_spec,
    overrides_for,
    presplit_dir,
)
from mmkgrec.features.content import has_user_content
from mmkgrec.train.checkpoint import CheckpointError
from mmkgrec.train.run import RunSpec, parse_overrides, resolved_configs, run_experiment

__all__ = ["BenchmarkSpec", "run_benchmark", "write_report"]


def run_benchmark(spec: BenchmarkSpec, out_dir: str | Path, *, progress: bool | None = None,
                  console: Console | None = None) -> Path:
    """Run (or resume) every cell of ``spec`` into ``out_dir`` and write the report.

    Args:
        spec: datasets, models, seeds, protocol and option sources.
        out_dir: the benchmark folder (see the module docstring); reused cells are skipped.
        progress: rich progress bar; None: only when stdout is a terminal.
        console: where progress lines go (default: a new stdout console).

    Returns:
        the path of ``results.md``.
    """
    out = Path(out_dir)
    console = console or Console()
    progress = sys.stdout.isatty() if progress is None else progress
    _check_spec(spec)
    if spec.tune_trials is not None:
        spec = _tune_all(spec, out, console)
    if spec.tuned is not None:
        missing = [f"{d}/{m}" for d in spec.datasets for m in spec.models
                   if not (Path(spec.tuned) / file_slug(d) / f"{m}.toml").is_file()]
        if missing:
            console.print(f"[yellow]warning:[/] no tuned config in {spec.tuned} for "
                          f"{', '.join(missing)}: their defaults are used", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    results = read_csv(out / "results.csv")
    n_cells = len(spec.datasets) * len(spec.models) * len(spec.seeds)
    skipped = 0

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=not progress) as bar:
        task = bar.add_task("benchmark", total=n_cells)
        for dataset_name in spec.datasets:
            bar.update(task, description=f"loading {dataset_name}")
            dataset = load(spec.path_of(dataset_name), source=spec.source,
                           threshold=spec.threshold)
            presplit = presplit_dir(spec, dataset_name)
            fixed = apply_presplit(dataset, presplit) if presplit else None
            for seed in spec.seeds:
                data_split = (fixed if fixed is not None
                              else split(dataset, protocol=spec.protocol, seed=seed))
                data_split = data_split.with_candidates(spec.candidates)
                cell_dataset, cell_split = _derive(spec, seed, dataset, data_split)
                for model in spec.models:
                    bar.update(task, description=f"{dataset_name} · {model} · seed {seed}")
                    run_spec, source_label = cell_spec(spec, dataset_name, model, seed, presplit)
                    config_hash = cell_hash(run_spec, cell_split, cell_dataset.meta)
                    done = find(results, dataset_name, model, seed)
                    if (len(done) and done["config_hash"].iloc[0] == config_hash
                            and per_user_path(out, dataset_name, model, seed).is_file()):
                        skipped += 1
                    else:
                        row = _run_and_save(run_spec, cell_dataset, cell_split, out, config_hash,
                                            source_label, dataset_name)
                        bar.console.print(
                            f"{dataset_name} {model} seed {seed}: test NDCG@20 "
                            f"{row.get('test_ndcg@20', float('nan')):.4f}, Recall@20 "
                            f"{row.get('test_recall@20', float('nan')):.4f}, "
                            f"{row['train_s_per_epoch']:.2f} s/epoch, {row['epochs_run']} epochs",
                            highlight=False)
                    bar.advance(task)
    if skipped:
        console.print(f"resumed: {skipped} of {n_cells} cells were already in "
                      f"{out / 'results.csv'} with the same configuration")
    return write_report(spec, out)


def report_saved(spec: BenchmarkSpec, out_dir: str | Path) -> Path:
    """Write the report of ``spec`` from the cells already saved in ``out_dir``, running
    nothing: e.g. one table over models that separate ``--models`` runs added to one folder."""
    out = Path(out_dir)
    if spec.tune_trials is not None and spec.tuned is None:
        spec = spec.model_copy(update={"tuned": str(out / "tuned")})
    results = read_csv(out / "results.csv")
    missing = [f"{d}/{m}" for d in spec.datasets for m in spec.models
               if not len(find(results, d, m, spec.seeds[0]))]
    if missing:
        raise MMKGRecError(f"{out / 'results.csv'} has no saved cells for {', '.join(missing)}; "
                           f"run the benchmark without --report-only first")
    return write_report(spec, out)


def _tune_all(spec: BenchmarkSpec, out: Path, console: Console) -> BenchmarkSpec:
    """Tune each (dataset, model) lacking a tuned file with ``spec.tune_trials`` trials on the
    validation part of seed 0's split (the pre-split, if any); return the spec reading them."""
    from mmkgrec.experiments.tune import TuneSpec, tune

    folder = Path(spec.tuned) if spec.tuned is not None else out / "tuned"
    for dataset in spec.datasets:
        presplit = presplit_dir(spec, dataset)
        for model in spec.models:
            if (folder / file_slug(dataset) / f"{model}.toml").is_file():
                continue
            console.print(f"tuning {model} on {dataset}: {spec.tune_trials} trials on "
                          f"validation", highlight=False)
            result = tune(TuneSpec(
                model=model, dataset=spec.path_of(dataset), label=dataset,
                protocol=spec.protocol, trials=spec.tune_trials, seed=0,
                presplit=str(presplit) if presplit else None, source=spec.source,
                overrides=overrides_for(spec.overrides, model),
                content_scope=spec.content_scope, candidates=spec.candidates,
                threshold=spec.threshold, mmkg=spec.mmkg), folder)
            console.print(f"  best valid {result['monitor']} {result['best_value']:.4f}",
                          highlight=False)
    return spec.model_copy(update={"tuned": str(folder)})


def _derive(spec: BenchmarkSpec, seed: int, dataset: MMKG, data_split: Split
            ) -> tuple[MMKG, Split]:
    """The split-dependent data of a cell (scoped content, entity MMKG) as a single run does."""
    from mmkgrec.train.run import derive_data

    run_spec = RunSpec(dataset="-", seed=seed, content_scope=spec.content_scope, mmkg=spec.mmkg)
    return derive_data(run_spec, dataset, data_split)


def _check_spec(spec: BenchmarkSpec) -> None:
    """Fail before any training on options that cannot work."""
    for name in spec.datasets:
        path = spec.path_of(name)
        if path not in available_names() and not Path(path).is_dir():
            raise ConfigError(f"unknown dataset {path!r}; choose from "
                              f"{', '.join(available_names())} or give a directory "
                              f"(LABEL=DIR names it in the tables)")
    if spec.presplit_root is not None:
        if spec.protocol != "topk":
            raise ConfigError("--presplit-root holds topk splits; use --protocol topk")
        for name in spec.datasets:
            presplit_dir(spec, name)
    for model in spec.models:
        parse_overrides(overrides_for(spec.overrides, model), model)
    for pair in spec.overrides:
        if not any(overrides_for([pair], model) for model in spec.models):
            raise ConfigError(f"--set {pair} applies to none of the models {spec.models}")
    if spec.recbole_reference and recbole_readme(spec) is None:
        raise ConfigError("--recbole-reference: no recbole-splits/README.md under "
                          + ", ".join(str(r) for r in data_roots(spec.source)))


def _run_and_save(run_spec: RunSpec, dataset: MMKG, data_split: Split, out: Path,
                  config_hash: str, source_label: str, label: str) -> dict:
    """Run one cell and save it: per-user arrays, then its breakdown rows, then its results row
    (so a row in results.csv implies the rest is on disk). Returns the results row."""
    row, per_user, groups = _run_cell(run_spec, dataset, data_split, out, config_hash, label)
    row["config_source"] = source_label
    key = (label, run_spec.model, run_spec.seed)
    npz = per_user_path(out, *key)
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz, **per_user)  # type: ignore[arg-type]  # numpy's stub maps ** to allow_pickle
    for name, new in (("breakdown.csv", groups), ("results.csv", [row])):  # in this order
        write_csv(upsert(read_csv(out / name), pd.DataFrame(new), *key), out / name)
    return row


def _run_cell(run_spec: RunSpec, dataset: MMKG, data_split: Split, out: Path,
              config_hash: str, label: str) -> tuple[dict, dict[str, np.ndarray], list[dict]]:
    """Train one cell (resuming its run directory when the hash matches); return its results row,
    per-user arrays and breakdown rows."""
    cell_dir = out / "runs" / file_slug(label) / run_spec.model / f"seed{run_spec.seed}"
    marker = cell_dir / "cell.json"
    identity = {"config_hash": config_hash, "spec": run_spec.model_dump()}
    if cell_dir.exists() and (not marker.is_file() or json.loads(marker.read_text()) != identity):
        shutil.rmtree(cell_dir)  # another configuration's leftovers: start afresh
    cell_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(identity) + "\n")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        run = run_experiment(run_spec, cell_dir, resume=True, progress=False,
                             data=(dataset, data_split))
    except CheckpointError:  # an unusable interrupted state: train from scratch
        run = run_experiment(run_spec, cell_dir, resume=False, progress=False,
                             data=(dataset, data_split))
    wall = time.perf_counter() - start
    shutil.rmtree(cell_dir / "last", ignore_errors=True)  # resumable state is no longer needed
    metrics = run.metrics
    assert metrics is not None  # run_experiment always returns them

    users, truth_indptr, truth_items = data_split.ground_truth("test")
    model_cfg, train_cfg = resolved_configs(run_spec)
    # the Trainer's list length: torch.topk may break score ties differently for another k
    depth = max([*train_cfg.ks, K])
    top = rank_stage(run.model, data_split, "test", users, depth, train_cfg.eval_batch_users,
                     None)[:, :K]  # [n_eval, K]
    per_user = per_user_topk_metrics(top, truth_indptr, truth_items, [K], data_split.n_items)
    train_items = np.diff(data_split.user_history()[0])[users]  # [n_eval]
    arrays = {"users": users, **{m: per_user[m] for m in TESTED}, "train_items": train_items}
    groups = [{"dataset": label, "model": run_spec.model, "seed": run_spec.seed, **g}
              for g in breakdown_groups(data_split, top, per_user, train_items)]

    row = {"dataset": label, "model": run_spec.model, "seed": run_spec.seed,
           "protocol": data_split.protocol, "config_hash": config_hash,
           "split": "presplit" if run_spec.presplit else f"seed {run_spec.seed}",
           "candidates": f"{data_split.candidates} ({_n_candidates(data_split)} items)",
           "content_scope": _content_label(dataset, run_spec.content_scope),
           **{f"test_{k}": v for k, v in metrics["test"].items()},
           "monitor": metrics["monitor"],
           **{f"valid_{k}": v for k, v in metrics["valid"].items()},
           "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
           "stop_reason": metrics["stop_reason"],
           "train_s_per_epoch": metrics["train_seconds_per_epoch"],
           "eval_s_valid": metrics["eval_seconds"]["valid"],
           "eval_s_test": metrics["eval_seconds"]["test"], "wall_s": wall,
           "peak_rss_mb": _peak_rss_mb(),
           "peak_gpu_mb": (torch.cuda.max_memory_allocated() / 2**20
                           if torch.cuda.is_available() else float("nan")),
           "device": metrics["device"], "torch_threads": torch.get_num_threads(),
           "model_config": json.dumps(model_cfg.model_dump(mode="json"), sort_keys=True),
           "train_config": json.dumps(train_cfg.model_dump(mode="json"), sort_keys=True)}
    return row, arrays, groups


def _n_candidates(data_split: Split) -> int:
    allowed = data_split.candidate_items("test")
    return data_split.n_items if allowed is None else len(allowed)


def _content_label(dataset: MMKG, scope: str) -> str:
    """The content scope as tables state it: ``none`` when no content comes from users."""
    if "content scope" not in dataset.meta and not has_user_content(dataset):
        return "none (no user content)"
    return "all (upper bound: sees held-out plays)" if scope == "all" else scope


def _peak_rss_mb() -> float:
    """The process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
