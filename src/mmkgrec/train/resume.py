"""Resumable training state: what ``last/`` holds besides tensors, and when it may be resumed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import BaseModel
from torch import Tensor, nn

from mmkgrec.train.checkpoint import CheckpointError

BEST_IN_LAST = "best.safetensors"  # the best weights, kept inside last/ so resume is consistent
RESUMABLE_CHANGES = {"epochs", "max_train_seconds", "device", "eval_batch_users"}


def check_resumable(last: Path, meta: dict, config: BaseModel, model: nn.Module) -> None:
    """CheckpointError when ``last`` was written with other training options (except
    :data:`RESUMABLE_CHANGES`) or another model config than ``config`` / ``model.config``."""
    saved = meta["train_config"]
    current = config.model_dump(mode="json")
    defaults = type(config)().model_dump(mode="json")  # keys older checkpoints lack
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k, defaults.get(k)) != current.get(k)
                     and k not in RESUMABLE_CHANGES)
    if changed:
        raise CheckpointError(
            f"cannot resume {last}: training options changed since it was written: "
            + ", ".join(f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in changed))
    model_config = getattr(model, "config", None)
    if isinstance(model_config, BaseModel) and model_config.model_dump(mode="json") != meta[
            "model"]["config"]:
        raise CheckpointError(f"cannot resume {last}: the model config differs from the "
                              "one it was trained with")


def fresh_state() -> dict:
    """Trainer state saved in ``last/`` (JSON): everything a resumed run needs besides tensors."""
    return {"epoch": 0, "best_metric": None, "best_epoch": 0, "best_valid": {},
            "bad_evaluations": 0, "stop_reason": None, "log": [], "train_seconds": [],
            "valid_seconds": [], "best_weights": None}


def snapshot(model: nn.Module) -> tuple[dict[str, Tensor], dict]:
    """A copy of the model's state dict, restorable by ``load_model_state``."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, {"model": {"name": getattr(model, "name", None)}}


def best_state(tensors: dict[str, Tensor], meta: dict) -> tuple[dict[str, Tensor], dict]:
    """(state dict, meta) of the best weights kept in ``last/``, as :func:`snapshot` gives."""
    return tensors, {"model": meta["model"]}


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
