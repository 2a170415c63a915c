"""Checkpoints as safetensors + JSON. No pickle anywhere: loading a checkpoint runs no code.

A checkpoint directory holds:

- ``model.safetensors``: the model's ``state_dict()`` (parameters AND buffers, e.g. sampled
  neighbour tables). Tensors that share memory (tied weights) are stored once;
  ``checkpoint.json`` lists the aliases.
- ``checkpoint.json`` (written last; a directory without it is incomplete): format version, model
  name and config, train config, dataset name + fingerprint, split fingerprint + protocol +
  options, the sha256 of ``model.safetensors``, optional metrics and extra JSON.
- for a resumable training state (:func:`save_optimizer`, :func:`save_rng_state`):
  ``optimizer.safetensors`` + ``optimizer.json`` (Adam's state flattened to
  ``state.{param_index}.{exp_avg|exp_avg_sq|step}``; hyper-parameters in JSON) and
  ``rng.safetensors`` + ``rng.json`` (torch RNG states as uint8 tensors; python / numpy states
  as JSON).

Id maps are NOT copied: the dataset fingerprint identifies the exact dataset (and so its
original user / item ids); reload the dataset to print names. Loading checks the fingerprints
it is given and raises :class:`CheckpointError` on any mismatch or corruption.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.data.textio import sha256_of
from mmkgrec.errors import MMKGRecError

FORMAT = "mmkgrec-checkpoint/1"
MANIFEST = "checkpoint.json"
WEIGHTS = "model.safetensors"


class CheckpointError(MMKGRecError):
    """A checkpoint is missing, corrupt, or does not match the model / dataset / split given."""


# ---- model checkpoints ---------------------------------------------------------------------------
def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    model_config: dict,
    train_config: dict,
    split: Split,
    dataset: MMKG | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``checkpoint.json`` into ``directory``.

    Args:
        directory: created if needed; files already there are overwritten.
        model: the model; its state dict (parameters and buffers) is saved.
        model_name: registry name (e.g. ``"mkgcn"``).
        model_config, train_config: JSON-serialisable hyper-parameters.
        split: the split trained on (fingerprint, protocol, options; also the dataset identity
            when ``dataset`` is None).
        dataset: the dataset; must be the one the split was made from.
        metrics, extra: optional JSON-serialisable dicts stored as they are.

    Returns:
        the path of ``checkpoint.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if dataset is not None and split.dataset_fingerprint and (
            dataset.fingerprint() != split.dataset_fingerprint):
        raise CheckpointError(f"the split was made from dataset {split.dataset_name!r}, not from "
                              f"the given {dataset.name!r} (fingerprints differ)")
    tensors = dict(model.state_dict())
    digest, aliases = _save_tensors(directory / WEIGHTS, tensors)
    manifest = {
        "format": FORMAT,
        "model": {"name": model_name, "config": model_config},
        "train_config": train_config,
        "dataset": {"name": dataset.name if dataset is not None else split.dataset_name,
                    "fingerprint": (dataset.fingerprint() if dataset is not None
                                    else split.dataset_fingerprint)},
        "split": {"fingerprint": split.fingerprint(), "protocol": split.protocol,
                  "options": split.options, "seed": split.seed,
                  "n_users": split.n_users, "n_items": split.n_items},
        "weights": {"file": WEIGHTS, "sha256": digest, "aliases": aliases},
        "metrics": metrics,
        "extra": extra or {},
        "versions": {"torch": torch.__version__},
    }
    path = directory / MANIFEST
    _write_json(path, manifest)
    return path


def load_checkpoint(
    directory: str | Path,
    model: nn.Module | None = None,
    *,
    dataset: MMKG | None = None,
    split: Split | None = None,
) -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`, checking it on the way.

    Args:
        directory: the checkpoint directory.
        model: when given, the weights are loaded into it (strictly: same names and shapes);
            its ``name`` must match the checkpoint's model name.
        dataset, split: when given, must be the ones the checkpoint was trained on.

    Returns:
        ``(state_dict, meta)``: the CPU tensors of ``model.state_dict()`` and the parsed
        ``checkpoint.json``.

    Raises:
        CheckpointError: missing / corrupt files, or a model, dataset or split mismatch.
    """
    directory = Path(directory)
    meta = read_manifest(directory)
    where = f"checkpoint {directory}"
    if dataset is not None and dataset.fingerprint() != meta["dataset"]["fingerprint"]:
        raise CheckpointError(
            f"{where} was trained on dataset {meta['dataset']['name']!r} (fingerprint "
            f"{meta['dataset']['fingerprint'][:12]}...), not on {dataset.name!r} "
            f"({dataset.fingerprint()[:12]}...): the ids would not line up")
    if split is not None and split.fingerprint() != meta["split"]["fingerprint"]:
        raise CheckpointError(
            f"{where} was trained on another split (fingerprint "
            f"{meta['split']['fingerprint'][:12]}..., this one {split.fingerprint()[:12]}...)")
    weights = meta["weights"]
    state = load_tensors(directory / weights["file"], weights["sha256"], weights["aliases"])
    if model is not None:
        load_model_state(model, state, meta, where)
    return state, meta


def load_model_state(model: nn.Module, state: dict[str, Tensor], meta: dict, where: str) -> None:
    """Load ``state`` into ``model`` strictly, else CheckpointError."""
    name = getattr(model, "name", None)
    if name is not None and name != meta["model"]["name"]:
        raise CheckpointError(f"{where} holds a {meta['model']['name']!r} model, not {name!r}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    # Buffers whose shape depends on sampling (neighbour tables) are replaced, not copied into.
    reshaped = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape
                and k not in dict(model.named_buffers())]
    if missing or unexpected or reshaped:
        raise CheckpointError(
            f"{where} does not fit this model (built with another config or dataset?): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape differs {reshaped[:5]}")
    buffers = dict(model.named_buffers())
    for key in [k for k in buffers if k in state and buffers[k].shape != state[k].shape]:
        module_name, _, attr = key.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        setattr(module, attr, state[key].to(buffers[key].device).clone())
    model.load_state_dict(state, strict=True)


def read_manifest(directory: str | Path) -> dict:
    """Parse and check ``checkpoint.json`` of ``directory``."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a (complete) checkpoint: no {MANIFEST}")
    meta = _read_json(path)
    needed = ("format", "model", "train_config", "dataset", "split", "weights")
    missing = [k for k in needed if not isinstance(meta, dict) or k not in meta]
    if missing or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} manifest "
                              f"(missing {missing or 'format'}, format {meta.get('format')!r})")
    return meta


# ---- optimizer and RNG state (resumable training) ------------------------------------------------
def save_optimizer(directory: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Write ``optimizer.safetensors`` (per-parameter state tensors) + ``optimizer.json``."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for slot, value in slots.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{slot}"] = value
            else:
                scalars[f"{index}.{slot}"] = value
    for group in state["param_groups"]:
        if any(isinstance(v, Tensor) for v in group.values()):
            raise CheckpointError("optimizer hyper-parameters held as tensors are not supported")
    digest, aliases = _save_tensors(Path(directory) / "optimizer.safetensors", tensors)
    _write_json(Path(directory) / "optimizer.json", {
        "class": type(optimizer).__name__, "param_groups": state["param_groups"],
        "scalars": scalars, "sha256": digest, "aliases": aliases})


def load_optimizer(directory: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore the state written by :func:`save_optimizer` into ``optimizer``."""
    directory = Path(directory)
    meta = _read_json(directory / "optimizer.json")
    if meta.get("class") != type(optimizer).__name__:
        raise CheckpointError(f"{directory}: optimizer {meta.get('class')!r} saved, "
                              f"{type(optimizer).__name__!r} given")
    tensors = load_tensors(directory / "optimizer.safetensors", meta["sha256"], meta["aliases"])
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, slot = key.split(".", 2)
        state.setdefault(int(index), {})[slot] = value
    for key, value in meta["scalars"].items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v)
               for k, v in group.items()} for group in meta["param_groups"]]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{directory}: optimizer state does not fit the model: {err}"
                              ) from None


def save_rng_state(directory: str | Path, generator: np.random.Generator | None = None) -> None:
    """Write the python, numpy (global and ``generator``) and torch (CPU, CUDA) RNG states."""
    tensors = {"torch.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"torch.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    digest, _ = _save_tensors(Path(directory) / "rng.safetensors", tensors)
    _write_json(Path(directory) / "rng.json", {
        "python": [version, list(internal), gauss],
        "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
        "generator": None if generator is None else generator.bit_generator.state,
        "sha256": digest,
    })


def load_rng_state(directory: str | Path, generator: np.random.Generator | None = None) -> None:
    """Restore the states written by :func:`save_rng_state` (``generator`` is set in place)."""
    directory = Path(directory)
    meta = _read_json(directory / "rng.json")
    tensors = load_tensors(directory / "rng.safetensors", meta["sha256"], {})
    torch.set_rng_state(tensors["torch.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if generator is not None:
        if meta["generator"] is None:
            raise CheckpointError(f"{directory}: no numpy Generator state saved")
        generator.bit_generator.state = meta["generator"]


def replace_directory(staging: Path, final: Path) -> None:
    """Move the complete ``staging`` directory to ``final``, replacing it.

    ``final`` is renamed to ``final.old`` first, so at every moment one complete copy exists
    (:func:`latest_complete` finds it after a crash).
    """
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def latest_complete(final: Path) -> Path | None:
    """``final`` or, after a crash mid-:func:`replace_directory`, ``final.old``; None if neither."""
    for candidate in (final, final.with_name(final.name + ".old")):
        if (candidate / MANIFEST).is_file():
            return candidate
    return None


# ---- tensor files ----------------------------------------------------------------------------
def _save_tensors(path: Path, tensors: dict[str, Tensor]) -> tuple[str, dict[str, str]]:
    """safetensors file of ``tensors`` (CPU, contiguous, shared memory stored once).

    Returns:
        the file's sha256 and ``{alias: stored_name}`` for tensors equal in memory to another.
    """
    stored: dict[str, Tensor] = {}
    seen: dict[tuple, str] = {}  # (storage pointer, offset, shape, stride, dtype) -> stored name
    aliases: dict[str, str] = {}
    for name, value in tensors.items():
        value = value.detach()
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
               value.stride(), value.dtype, value.device)
        if key in seen and value.numel():
            aliases[name] = seen[key]
            continue
        seen[key] = name
        stored[name] = value.to("cpu", copy=True).contiguous()  # own memory: no sharing left
    save_file(stored, str(path))
    return sha256_of(path), aliases


def load_tensors(path: Path, sha256: str, aliases: dict[str, str]) -> dict[str, Tensor]:
    """Read a safetensors file after checking its sha256; re-create the aliases."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (incomplete checkpoint)")
    if sha256_of(path) != sha256:
        raise CheckpointError(f"{path} is corrupt or was modified: its sha256 differs from the "
                              "one recorded when it was written")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the tensors: {err}") from None
    tensors.update({alias: tensors[source] for alias, source in aliases.items()})
    return tensors


def _write_json(path: Path, payload: dict) -> None:
    try:
        text = json.dumps(payload, indent=2, default=_json_default)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    path.write_text(text + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (incomplete checkpoint)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt: not valid JSON ({err})") from None


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple, set)):
        return list(value.tolist() if isinstance(value, np.ndarray) else value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to a checkpoint's JSON")
