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

import hashlib
import json
import math
import os
import re
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from rich.console import Console

from mmkgrec.config import file_slug
from mmkgrec.data.dataset import MMKG
from mmkgrec.data.registry import available_names, data_roots, load
from mmkgrec.features.content import scope_content
from mmkgrec.data.split import Split, apply_presplit, split
from mmkgrec.errors import ConfigError, DataFormatError, MMKGRecError
from mmkgrec.evaluate.metrics import per_user_topk_metrics
from mmkgrec.evaluate.ranking import rank_stage  # [n_eval, k] top items, one pass
from mmkgrec.evaluate.significance import holm, paired_tests
from mmkgrec.models import MODELS, model_class
from mmkgrec.train.checkpoint import CheckpointError
from mmkgrec.train.run import RunSpec, parse_overrides, read_config_file, resolved_configs
from mmkgrec.train.run import run_experiment
from mmkgrec.train.trainer import TrainConfig

TABLE_METRICS = {"topk": ("recall@10", "recall@20", "ndcg@10", "ndcg@20"),
                 "cold": ("recall@10", "recall@20", "ndcg@10", "ndcg@20"),
                 "ctr": ("auc", "f1", "recall@20", "ndcg@20")}
TESTED = ("ndcg@20", "recall@20")  # per-user metrics saved, tested and broken down
K = 20
ALPHA = 0.05
HEAD_SHARE = 0.2  # head = the top 20% of items by train positives
COLD_MAX = 3  # users with <= 3 train positives form their own activity group
KEY = ["dataset", "model", "seed"]
RECBOLE_DATASETS = ("lastfm-kgcn", "music-d")
LABELS = {"recall@10": "Recall@10", "recall@20": "Recall@20", "ndcg@10": "NDCG@10",
          "ndcg@20": "NDCG@20", "auc": "AUC", "f1": "F1"}


class BenchmarkSpec(BaseModel):
    """What to benchmark. ``models`` may be ``["all"]`` (every registered model)."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    protocol: Literal["topk", "ctr", "cold"] = "topk"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    presplit_root: str | None = None  # folder holding <dataset>/{train,valid,test}.tsv (topk)
    recbole_reference: bool = False
    tuned: str | None = None  # folder holding <dataset>/<model>.toml from `mmkgrec tune`
    # tune every (dataset, model) first, this many Optuna trials each on VALIDATION (the same
    # budget for all), into `tuned` (default OUT/tuned); existing tuned files are reused
    tune_trials: int | None = Field(None, ge=1)
    overrides: list[str] = []  # KEY=VALUE; KEY: model.X, train.X, <model>.X or a bare X
    source: str | None = None
    # user content built from train positives only (default) / all but valid+test / everything
    content_scope: Literal["train", "no-eval", "all"] = "train"
    candidates: str | None = None  # items ranked (data.split.CANDIDATES); None: protocol default
    threshold: float | None = None  # positive threshold for every dataset (None: their own)
    mmkg: Literal["attribute", "entity"] = "attribute"  # entity: content -> KG entities per split
    paths: dict[str, str] = {}  # label -> what to load; filled from "LABEL=DIR" entries

    @model_validator(mode="after")
    def _label_datasets(self):
        """``LABEL=DIR`` entries of ``datasets`` -> label + path; a bare directory is labelled by
        its folder name; a registry name is its own label."""
        labels = []
        for entry in self.datasets:
            label, sep, path = entry.partition("=")
            if not sep:
                label, path = entry, entry
                if Path(entry).is_dir() and entry not in available_names():
                    label = Path(entry).resolve().name
            if not label or label in labels:
                raise ValueError(f"dataset label {label!r} is empty or used twice; give "
                                 f"LABEL=DIR to tell datasets apart")
            labels.append(label)
            self.paths.setdefault(label, path)
        self.datasets = labels
        return self

    def path_of(self, label: str) -> str:
        """What to load for the dataset labelled ``label``."""
        return self.paths.get(label, label)

    @field_validator("models")
    @classmethod
    def _expand_models(cls, models):
        names = list(MODELS) if models == ["all"] else list(dict.fromkeys(models))
        unknown = [m for m in names if m not in MODELS]
        if unknown:
            raise ValueError(f"unknown models {unknown}; registered: {', '.join(MODELS)} or 'all'")
        return names

    @classmethod
    def parse(cls, **options) -> BenchmarkSpec:
        """Validate; raise ConfigError naming each bad option."""
        try:
            return cls(**options)
        except ValueError as error:
            raise ConfigError(f"invalid benchmark options: {error}") from None


# ---- running -------------------------------------------------------------------------------------
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
                   if not (Path(spec.tuned) / _slug(d) / f"{m}.toml").is_file()]
        if missing:
            console.print(f"[yellow]warning:[/] no tuned config in {spec.tuned} for "
                          f"{', '.join(missing)}: their defaults are used", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    results = _read_csv(out / "results.csv")
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
            presplit = _presplit_dir(spec, dataset_name)
            fixed = apply_presplit(dataset, presplit) if presplit else None
            for seed in spec.seeds:
                data_split = (fixed if fixed is not None
                              else split(dataset, protocol=spec.protocol, seed=seed))
                data_split = data_split.with_candidates(spec.candidates)
                cell_dataset, cell_split = _derive(spec, seed, dataset, data_split)
                for model in spec.models:
                    bar.update(task, description=f"{dataset_name} · {model} · seed {seed}")
                    run_spec, source_label = _cell_spec(spec, dataset_name, model, seed, presplit)
                    config_hash = _config_hash(run_spec, cell_split, cell_dataset.meta)
                    done = _find(results, dataset_name, model, seed)
                    if (len(done) and done["config_hash"].iloc[0] == config_hash
                            and _per_user_path(out, dataset_name, model, seed).is_file()):
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


def _tune_all(spec: BenchmarkSpec, out: Path, console: Console) -> BenchmarkSpec:
    """Tune each (dataset, model) lacking a tuned file with ``spec.tune_trials`` trials on the
    validation part of seed 0's split (the pre-split, if any); return the spec reading them."""
    from mmkgrec.train.tune import TuneSpec, tune

    folder = Path(spec.tuned) if spec.tuned is not None else out / "tuned"
    for dataset in spec.datasets:
        presplit = _presplit_dir(spec, dataset)
        for model in spec.models:
            if (folder / _slug(dataset) / f"{model}.toml").is_file():
                continue
            console.print(f"tuning {model} on {dataset}: {spec.tune_trials} trials on "
                          f"validation", highlight=False)
            result = tune(TuneSpec(
                model=model, dataset=spec.path_of(dataset), label=dataset,
                protocol=spec.protocol, trials=spec.tune_trials, seed=0,
                presplit=str(presplit) if presplit else None, source=spec.source,
                overrides=_overrides_for(spec.overrides, model),
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


def _run_and_save(run_spec: RunSpec, dataset: MMKG, data_split: Split, out: Path,
                  config_hash: str, source_label: str, label: str) -> dict:
    """Run one cell and save it: per-user arrays, then its breakdown rows, then its results row
    (so a row in results.csv implies the rest is on disk). Returns the results row."""
    row, per_user, groups = _run_cell(run_spec, dataset, data_split, out, config_hash, label)
    row["config_source"] = source_label
    key = (label, run_spec.model, run_spec.seed)
    npz = _per_user_path(out, *key)
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz, **per_user)
    for name, new in (("breakdown.csv", groups), ("results.csv", [row])):  # in this order
        _write_csv(_upsert(_read_csv(out / name), pd.DataFrame(new), *key), out / name)
    return row


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
            _presplit_dir(spec, name)
    for model in spec.models:
        parse_overrides(_overrides_for(spec.overrides, model), model)
    for pair in spec.overrides:
        if not any(_overrides_for([pair], model) for model in spec.models):
            raise ConfigError(f"--set {pair} applies to none of the models {spec.models}")
    if spec.recbole_reference and _recbole_readme(spec) is None:
        raise ConfigError("--recbole-reference: no recbole-splits/README.md under "
                          + ", ".join(str(r) for r in data_roots(spec.source)))


def _presplit_dir(spec: BenchmarkSpec, dataset: str) -> Path | None:
    if spec.presplit_root is None:
        return None
    directory = Path(spec.presplit_root) / _slug(dataset)
    if not (directory / "train.tsv").is_file():
        raise ConfigError(f"--presplit-root: {directory} holds no train.tsv (expected "
                          f"<root>/<dataset>/{{train,valid,test}}.tsv)")
    return directory


def _overrides_for(pairs: list[str], model: str) -> list[str]:
    """The ``--set`` pairs that apply to ``model``, a ``<model>.`` prefix removed.
    ``model.X`` (or a bare X) applies to the models having option X; ``train.X`` to all."""
    model_fields = set(model_class(model).Config.model_fields)
    train_fields = set(TrainConfig.model_fields)
    chosen = []
    for pair in pairs:
        key, _, value = pair.partition("=")
        scope, _, field = key.rpartition(".")
        if scope in MODELS:
            applies, pair_out = scope == model, f"{field}={value}"
        elif scope == "model":
            applies, pair_out = field in model_fields, pair
        elif scope == "train":
            applies, pair_out = True, pair
        elif not scope:
            applies, pair_out = field in model_fields | train_fields, pair
        else:
            raise ConfigError(f"--set {pair}: the prefix must be model., train. or a model name "
                              f"({', '.join(MODELS)})")
        if applies:
            chosen.append(pair_out)
    return chosen


def _cell_spec(spec: BenchmarkSpec, dataset: str, model: str, seed: int,
               presplit: Path | None) -> tuple[RunSpec, str]:
    """The RunSpec of one cell and where its options came from (default / tuned)."""
    file_model, file_train, label = {}, {}, "default"
    if spec.tuned is not None:
        path = Path(spec.tuned) / _slug(dataset) / f"{model}.toml"
        if path.is_file():
            file_model, file_train = read_config_file(path)
            label = "tuned"
        else:
            label = "default (no tuned file)"
    set_model, set_train = parse_overrides(_overrides_for(spec.overrides, model), model)
    if spec.overrides and (set_model or set_train):
        label += " + --set"
    run_spec = RunSpec(model=model, dataset=spec.path_of(dataset), source=spec.source,
                       protocol=spec.protocol, presplit=str(presplit) if presplit else None,
                       seed=seed, content_scope=spec.content_scope, candidates=spec.candidates,
                       threshold=spec.threshold, mmkg=spec.mmkg,
                       model_options={**file_model, **set_model},
                       train_options={**file_train, **set_train})
    return run_spec, label


def _config_hash(run_spec: RunSpec, data_split: Split, dataset_meta: dict) -> str:
    model_cfg, train_cfg = resolved_configs(run_spec)
    identity = {"dataset": run_spec.dataset, "model": run_spec.model, "seed": run_spec.seed,
                "protocol": run_spec.protocol, "split": data_split.fingerprint(),
                "model_config": model_cfg.model_dump(mode="json"),
                "train_config": train_cfg.model_dump(mode="json")}
    if ("content scope" in dataset_meta or "hetrec dir" in dataset_meta) and (
            run_spec.content_scope != "all"):
        identity["content_scope"] = run_spec.content_scope  # (old hashes of "all" stay valid)
    for option in ("threshold", "candidates"):  # the split fingerprint holds the candidates
        if getattr(run_spec, option) is not None:
            identity[option] = getattr(run_spec, option)
    if run_spec.mmkg != "attribute":
        identity["mmkg"] = run_spec.mmkg
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _run_cell(run_spec: RunSpec, dataset: MMKG, data_split: Split, out: Path,
              config_hash: str, label: str) -> tuple[dict, dict[str, np.ndarray], list[dict]]:
    """Train one cell (resuming its run directory when the hash matches); return its results row,
    per-user arrays and breakdown rows."""
    cell_dir = out / "runs" / _slug(label) / run_spec.model / f"seed{run_spec.seed}"
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
    from mmkgrec.features.content import has_user_content

    if "content scope" not in dataset.meta and not has_user_content(dataset):
        return "none (no user content)"
    return "all (upper bound: sees held-out plays)" if scope == "all" else scope


def breakdown_groups(data_split: Split, top: np.ndarray, per_user: dict[str, np.ndarray],
                     train_items: np.ndarray) -> list[dict]:
    """Test metrics by user activity and by item popularity for one trained cell.

    Args:
        data_split: the split; activity and popularity come from its train positives only.
        top: ``[n_eval, K]`` ranked test lists of the users of ``split.ground_truth("test")``.
        per_user: per-user ``ndcg@20`` / ``recall@20`` of those users.
        train_items: ``[n_eval]`` train positives of each of those users.

    Returns:
        rows ``{breakdown, group, lo, hi, n_users, ndcg@20, recall@20}``: activity quartiles
        ``Q1``..``Q4`` of the train-history length (``lo``..``hi`` train items) plus ``<=3``;
        popularity ``head`` / ``tail`` (the top 20% of items by train positives / the rest),
        with the metrics restricted to each user's head / tail test items.
    """
    rows = []
    edges = np.quantile(train_items, [0.25, 0.5, 0.75])  # [3]
    quartile = np.searchsorted(np.unique(edges), train_items, side="left")  # [n_eval]
    masks = [(f"Q{q + 1}", quartile == q) for q in range(int(quartile.max()) + 1)]
    masks.append((f"<={COLD_MAX}", train_items <= COLD_MAX))
    for name, mask in masks:  # a handful of groups
        if mask.any():
            rows.append({"breakdown": "activity", "group": name, "lo": int(train_items[mask].min()),
                         "hi": int(train_items[mask].max()), "n_users": int(mask.sum()),
                         **{m: float(per_user[m][mask].mean()) for m in TESTED}})

    users, indptr, items = data_split.ground_truth("test")
    popularity = data_split.item_popularity()  # [n_items]
    n_head = max(1, round(HEAD_SHARE * data_split.n_items))
    is_head = np.zeros(data_split.n_items, dtype=bool)
    is_head[np.argsort(-popularity, kind="stable")[:n_head]] = True
    owner = np.repeat(np.arange(len(users)), np.diff(indptr))  # [nnz] row of each test item
    for name, keep in (("head", is_head[items]), ("tail", ~is_head[items])):
        counts = np.bincount(owner[keep], minlength=len(users))  # [n_eval]
        has = counts > 0
        if not has.any():
            continue
        sub_indptr = np.concatenate([[0], np.cumsum(counts[has])])
        metrics = per_user_topk_metrics(top[has], sub_indptr, items[keep], [K], data_split.n_items)
        pop = popularity[is_head if name == "head" else ~is_head]
        rows.append({"breakdown": "popularity", "group": name, "lo": int(pop.min()),
                     "hi": int(pop.max()), "n_users": int(has.sum()),
                     **{m: float(metrics[m].mean()) for m in TESTED}})
    return rows


# ---- the report ----------------------------------------------------------------------------------
def _setting_line(rows: pd.DataFrame, spec: BenchmarkSpec) -> str:
    """What every row of a dataset's table ranked and saw: candidate set, content scope."""
    def values(column: str) -> str:
        if column not in rows.columns:
            return "not recorded (cells run before the option existed)"
        return " / ".join(str(v) for v in pd.unique(rows[column].fillna("not recorded")))

    return (f"Candidate items: {values('candidates')}. Content scope: {values('content_scope')}."
            + (f" MMKG: {spec.mmkg}-based." if spec.mmkg != "attribute" else "")
            + (f" Positive threshold: {spec.threshold:g}." if spec.threshold is not None else ""))


def write_report(spec: BenchmarkSpec, out_dir: str | Path) -> Path:
    """results.md, significance.csv and plots/ from the cells of ``spec`` saved in ``out_dir``."""
    out = Path(out_dir)
    results = _requested(_read_csv(out / "results.csv"), spec)
    breakdown = _requested(_read_csv(out / "breakdown.csv"), spec)
    if not len(results):
        raise MMKGRecError(f"{out / 'results.csv'} holds no results of these cells yet")
    reference = _recbole_readme(spec)
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
        tests = _significance(out, dataset, rows, models)
        significance.append(tests)
        recbole = None
        if reference is not None and spec.protocol == "topk" and (
                spec.recbole_reference or (spec.presplit_root and dataset in RECBOLE_DATASETS)):
            recbole = _recbole_rows(*reference, dataset)
        lines += [f"## {dataset}", "", _setting_line(rows, spec), ""]
        lines += _metric_table(rows, models, spec.protocol, tests, recbole)
        if recbole is not None:
            lines += ["", f"RecBole rows: parsed from {reference[0]} (their own runs on the same "
                          f"pre-split; not re-run here)."]
        cells = breakdown[breakdown["dataset"] == dataset]
        lines += ["", *_breakdown_tables(cells, models), ""]
        _plot_metrics(plots / f"{_slug(dataset)}-metrics.png", dataset, rows, models,
                      TABLE_METRICS[spec.protocol])
        _plot_breakdown(plots / f"{_slug(dataset)}-breakdown.png", dataset, cells, models)
        lines += [f"![metrics](plots/{_slug(dataset)}-metrics.png) "
                  f"![breakdown](plots/{_slug(dataset)}-breakdown.png)", ""]
    if significance:
        pd.concat(significance, ignore_index=True).to_csv(out / "significance.csv", index=False)
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _significance(out: Path, dataset: str, rows: pd.DataFrame, models: list[str]) -> pd.DataFrame:
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
        saved = np.load(_per_user_path(out, dataset, model, seed))
        frames.append(pd.DataFrame({"model": model, "seed": seed, "user": saved["users"],
                                    "value": saved[metric]}))
    long = pd.concat(frames, ignore_index=True)
    n_cells = len(rows)
    everywhere = long.groupby("user")["value"].transform("size") == n_cells
    table = long[everywhere].groupby(["user", "model"])["value"].mean().unstack("model")
    return table[models]


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


# ---- RecBole reference ---------------------------------------------------------------------------
def _recbole_readme(spec: BenchmarkSpec) -> tuple[Path, dict[str, pd.DataFrame]] | None:
    """(path, tables by section) of recbole-splits/README.md, looked up at run time."""
    candidates = [Path(spec.presplit_root) / "README.md"] if spec.presplit_root else []
    candidates += [root / "recbole-splits" / "README.md" for root in data_roots(spec.source)]
    for path in candidates:
        if path.is_file():
            return path, markdown_tables(path)
    return None


def markdown_tables(path: str | Path) -> dict[str, pd.DataFrame]:
    """The pipe tables of a Markdown file, keyed by the last non-table line before each
    (heading marks stripped); cells as strings.

    Raises:
        DataFormatError: a table row has another number of cells than its header.
    """
    path = Path(path)
    tables: dict[str, pd.DataFrame] = {}
    section, header, rows = "", None, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines() + [""], 1):
        text = line.strip()
        if text.startswith("|"):
            cells = [c.strip() for c in text.strip("|").split("|")]
            if header is None:
                header, rows = cells, []
            elif all(set(c) <= set("-: ") for c in cells):
                continue  # the |---| line
            elif len(cells) != len(header):
                raise DataFormatError(path, f"table row has {len(cells)} cells, its header "
                                            f"{len(header)}", number)
            else:
                rows.append(cells)
            continue
        if header is not None:
            tables[section] = pd.DataFrame(rows, columns=header)
            header = None
        if text:
            section = text.lstrip("#").strip().strip("`*").strip()
    return tables


def _recbole_rows(path: Path, tables: dict[str, pd.DataFrame], dataset: str) -> pd.DataFrame | None:
    """RecBole's rows for ``dataset`` with our column names (floats, NaN where not a number)."""
    table = tables.get(dataset)
    if table is None:
        return None
    names = {"model": "model", "s/epoch": "train_s_per_epoch", "s/test": "eval_s_test"}
    frame = table.rename(columns=lambda c: names.get(c.lower(), c.lower()))
    for column in frame.columns.drop("model", errors="ignore"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


# ---- plots ---------------------------------------------------------------------------------------
def _plot_metrics(path: Path, dataset: str, rows: pd.DataFrame, models: list[str],
                  metrics: tuple[str, ...]) -> None:
    """Grouped bars: one group per metric, one bar per model, error bars = std over seeds."""
    from matplotlib.figure import Figure

    metrics = [m for m in metrics if f"test_{m}" in rows]
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


def _plot_breakdown(path: Path, dataset: str, cells: pd.DataFrame, models: list[str]) -> None:
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


# ---- small helpers -------------------------------------------------------------------------------
def _slug(name: str) -> str:
    """A file-name-safe version of a dataset name (which may be a directory path)."""
    return file_slug(name)


def _per_user_path(out: Path, dataset: str, model: str, seed: int) -> Path:
    return out / "per_user" / _slug(dataset) / model / f"seed{seed}.npz"


def _peak_rss_mb() -> float:
    """The process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=KEY)
    return pd.read_csv(path, dtype={"config_hash": str, "model": str, "dataset": str})


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Atomic: a killed run never leaves a half-written CSV."""
    staging = path.with_name(path.name + ".tmp")
    frame.to_csv(staging, index=False)
    os.replace(staging, path)


def _requested(frame: pd.DataFrame, spec: BenchmarkSpec) -> pd.DataFrame:
    """The rows of the cells ``spec`` asks for (results.csv may hold others)."""
    return frame[frame["dataset"].isin(spec.datasets) & frame["model"].isin(spec.models)
                 & frame["seed"].isin(spec.seeds)]


def _find(frame: pd.DataFrame, dataset: str, model: str, seed: int) -> pd.DataFrame:
    return frame[(frame["dataset"] == dataset) & (frame["model"] == model)
                 & (frame["seed"] == seed)]


def _upsert(frame: pd.DataFrame, new: pd.DataFrame, dataset: str, model: str,
            seed: int) -> pd.DataFrame:
    """``frame`` without the rows of this cell, plus ``new``."""
    kept = frame.drop(_find(frame, dataset, model, seed).index)
    parts = [part for part in (kept, new) if len(part)]
    return pd.concat(parts, ignore_index=True) if parts else new


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) < 2:
        return f"{values.mean():.4f}"
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def _fmt(value, digits: int) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:.{digits}f}")
