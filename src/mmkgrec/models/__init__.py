"""Models behind one contract (:class:`~mmkgrec.models.base.Recommender`), in an explicit registry.

Per-model defaults live in ``configs/<name>.toml`` next to the code: a ``[model]`` table (the
model's pydantic ``Config``) and a ``[train]`` table (:class:`mmkgrec.train.TrainConfig`), with
optional overrides per protocol (``[protocol.topk.model]``, ``[protocol.ctr.train]``, ...) and
per dataset (``[dataset."music-d".model]``, ...), applied in that order.
"""

from __future__ import annotations

from importlib import resources

from mmkgrec.config import tomllib
from mmkgrec.errors import ConfigError
from mmkgrec.models.base import ModelConfig, Recommender
from mmkgrec.models.bprmf import BPRMF
from mmkgrec.models.cke import CKE
from mmkgrec.models.freedom import FREEDOM
from mmkgrec.models.kgat import KGAT
from mmkgrec.models.kgcn import KGCN
from mmkgrec.models.lattice import LATTICE
from mmkgrec.models.lightgcn import LightGCN
from mmkgrec.models.mkgat import MKGAT
from mmkgrec.models.mkgcn import MKGCN
from mmkgrec.models.mkrln import MKRLN, PGPR
from mmkgrec.models.mmgcn import MMGCN
from mmkgrec.models.mmkgcf import MMKGCF
from mmkgrec.models.pop import Pop

MODELS: dict[str, type[Recommender]] = {model.name: model for model in (
    MKGCN, MMKGCF, KGCN, MKGAT, KGAT, CKE, MMGCN, LATTICE, FREEDOM, MKRLN, PGPR, LightGCN, BPRMF, Pop)}


def model_class(name: str) -> type[Recommender]:
    """The registered model class called ``name``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def default_config(name: str, dataset: str | None = None, protocol: str | None = None) -> dict[str, dict]:
    """``{"model": {...}, "train": {...}}`` from ``configs/<name>.toml``: the ``[model]`` /
    ``[train]`` tables, then ``[protocol.<protocol>.*]``, then ``[dataset.<dataset>.*]``.

    The cold-start protocol ranks like topk: it takes ``[protocol.topk.*]``, then
    ``[protocol.cold.*]``."""
    model_class(name)
    path = resources.files("mmkgrec.models").joinpath("configs", f"{name}.toml")
    raw = tomllib.loads(path.read_text() if path.is_file() else "")
    config = {"model": dict(raw.get("model", {})), "train": dict(raw.get("train", {}))}
    scopes = [("protocol", "topk")] if protocol == "cold" else []
    for scope, key in (*scopes, ("protocol", protocol), ("dataset", dataset)):
        overrides = raw.get(scope, {}).get(key or "", {})
        for part in ("model", "train"):
            config[part].update(overrides.get(part, {}))
    return config


__all__ = ["BPRMF", "CKE", "FREEDOM", "KGAT", "KGCN", "LATTICE", "MKGAT", "MKGCN", "MKRLN", "MMGCN",
           "MMKGCF", "MODELS", "PGPR", "LightGCN", "ModelConfig", "Pop", "Recommender",
           "default_config", "model_class"]
