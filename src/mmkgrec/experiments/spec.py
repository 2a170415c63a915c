"""What a benchmark runs: its options, each cell's RunSpec and the hash that identifies it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmkgrec.config import file_slug
from mmkgrec.data.registry import available_names, datasets
from mmkgrec.data.split import Split
from mmkgrec.errors import ConfigError
from mmkgrec.models import MODELS, model_class
from mmkgrec.train.run import RunSpec, parse_overrides, read_config_file, resolved_configs

TABLE_METRICS = {"topk": ("recall@10", "recall@20", "ndcg@10", "ndcg@20"),
                 "cold": ("recall@10", "recall@20", "ndcg@10", "ndcg@20"),
                 "ctr": ("auc", "f1", "recall@20", "ndcg@20")}
TESTED = ("ndcg@20", "recall@20")  # per-user metrics saved, tested and broken down
K = 20
ALPHA = 0.05
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


def presplit_dir(spec: BenchmarkSpec, dataset: str) -> Path | None:
    if spec.presplit_root is None:
        return None
    root = Path(spec.presplit_root)
    directory = root / file_slug(dataset)
    if (directory / "train.tsv").is_file():
        return directory
    # a dataset built on another one's interactions (lastfm-kgcn-content on lastfm-kgcn) uses
    # that one's split; apply_presplit rejects any pair the dataset does not hold
    registered = datasets().get(dataset)
    source = registered.needs[0] if registered else None
    if source and source != dataset and (root / file_slug(source) / "train.tsv").is_file():
        return root / file_slug(source)
    raise ConfigError(f"--presplit-root: {directory} holds no train.tsv (expected "
                      f"<root>/<dataset>/{{train,valid,test}}.tsv)")


def overrides_for(pairs: list[str], model: str) -> list[str]:
    """The ``--set`` pairs that apply to ``model``, a ``<model>.`` prefix removed.
    ``model.X`` (or a bare X) applies to the models having option X; ``train.X`` to all.
    Which option a key names is :func:`mmkgrec.train.run.parse_overrides`' rule."""
    model_fields = set(model_class(model).Config.model_fields)
    chosen = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        scope, _, field = key.rpartition(".")
        if scope in MODELS:
            if scope == model:
                chosen.append(f"{field}={value}")
            continue
        if scope not in ("", "model", "train"):
            raise ConfigError(f"--set {pair}: the prefix must be model., train. or a model name "
                              f"({', '.join(MODELS)})")
        try:  # (a pair without "=" is probed as KEY=; parse_overrides names it later)
            model_options, train_options = parse_overrides([pair if sep else pair + "="], model)
        except ConfigError:  # a bare X that is no option of this model nor of training
            continue
        if train_options or set(model_options) <= model_fields:
            chosen.append(pair)
    return chosen


def cell_spec(spec: BenchmarkSpec, dataset: str, model: str, seed: int,
               presplit: Path | None) -> tuple[RunSpec, str]:
    """The RunSpec of one cell and where its options came from (default / tuned)."""
    file_model: dict = {}
    file_train: dict = {}
    label = "default"
    if spec.tuned is not None:
        path = Path(spec.tuned) / file_slug(dataset) / f"{model}.toml"
        if path.is_file():
            file_model, file_train = read_config_file(path)
            label = "tuned"
        else:
            label = "default (no tuned file)"
    set_model, set_train = parse_overrides(overrides_for(spec.overrides, model), model)
    if spec.overrides and (set_model or set_train):
        label += " + --set"
    run_spec = RunSpec(model=model, dataset=spec.path_of(dataset), source=spec.source,
                       protocol=spec.protocol, presplit=str(presplit) if presplit else None,
                       seed=seed, content_scope=spec.content_scope, candidates=spec.candidates,
                       threshold=spec.threshold, mmkg=spec.mmkg,
                       model_options={**file_model, **set_model},
                       train_options={**file_train, **set_train})
    return run_spec, label


def cell_hash(run_spec: RunSpec, data_split: Split, dataset_meta: dict) -> str:
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
