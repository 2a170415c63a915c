"""Models behind one contract (:class:`~mmkgrec.models.base.Recommender`), in an explicit registry.

Per-model defaults live in ``configs/<name>.toml`` next to the code: a ``[model]`` table (the
model's pydantic ``Config``) and a ``[train]`` table (:class:`mmkgrec.train.TrainConfig`), with
optional per-dataset overrides in ``[dataset.<name>.model]`` / ``[dataset.<name>.train]``.
"""

from __future__ import annotations

import sys
from importlib import resources

from mmkgrec.errors import ConfigError
from mmkgrec.models.base import ModelConfig, Recommender
from mmkgrec.models.bprmf import BPRMF
from mmkgrec.models.kgcn import KGCN
from mmkgrec.models.lightgcn import LightGCN
from mmkgrec.models.mkgcn import MKGCN
from mmkgrec.models.pop import Pop

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODELS: dict[str, type[Recommender]] = {model.name: model for model in (MKGCN, KGCN, LightGCN, BPRMF, Pop)}


def model_class(name: str) -> type[Recommender]:
    """The registered model class called ``name``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def default_config(name: str, dataset: str | None = None) -> dict[str, dict]:
    """``{"model": {...}, "train": {...}}`` from ``configs/<name>.toml`` (dataset overrides applied)."""
    model_class(name)
    path = resources.files("mmkgrec.models").joinpath("configs", f"{name}.toml")
    text = path.read_text() if path.is_file() else ""
    raw = tomllib.loads(text)
    config = {"model": dict(raw.get("model", {})), "train": dict(raw.get("train", {}))}
    overrides = raw.get("dataset", {}).get(dataset or "", {})
    for part in ("model", "train"):
        config[part].update(overrides.get(part, {}))
    return config


__all__ = ["BPRMF", "KGCN", "LightGCN", "MKGCN", "Pop", "MODELS", "ModelConfig", "Recommender", "default_config", "model_class"]
