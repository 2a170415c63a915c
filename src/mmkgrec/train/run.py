"""One experiment end to end: dataset -> split -> model -> Trainer -> a run directory.

A run directory holds everything needed to reuse the trained model without pickle::

    run.json        the RunSpec (model, dataset, protocol, seed, config), the resolved configs and
                    the dataset reference (name, resolved path, fingerprint)
    dataset/        the dataset trained on (after split-scoped content), native format
                    (mmkgrec.data.formats.native): ids, interactions, KG, modalities and the item
                    display attributes (name, title, artist, tags, ...); sha256-checked on load
    split/          the exact split (mmkgrec.data.split.Split.save: train / valid / test Parquet)
    best/           safetensors + JSON checkpoint of the best weights
    last/           resumable state (see mmkgrec.train.trainer)
    metrics.json    valid / test metrics, timings; log.jsonl and curve.png beside it

:func:`load_run` rebuilds dataset, split and model from it (checking fingerprints): from the
``dataset/`` snapshot, so a run directory copied anywhere serves and evaluates without the data
folder and from any working directory; a run without a snapshot (written before snapshots, or
with ``snapshot=False``) re-loads its referenced dataset and refuses one whose fingerprint
changed. :func:`recommend` ranks items for a known user or for a new listener given liked items.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor

from mmkgrec.config import describe, tomllib
from mmkgrec.data.csr import user_item_csr
from mmkgrec.data.dataset import MMKG
from mmkgrec.data.formats.native import MANIFEST as NATIVE_MANIFEST
from mmkgrec.data.formats.native import read_native, write_native
from mmkgrec.data.registry import load
from mmkgrec.data.split import Split, apply_presplit, split
from mmkgrec.errors import ConfigError, MMKGRecError
from mmkgrec.features.content import scope_content
from mmkgrec.models import Recommender, default_config, model_class
from mmkgrec.models.base import HistoryUsers, Scorer, UsersFromItems
from mmkgrec.train.checkpoint import load_checkpoint
from mmkgrec.train.distributed import is_main_process
from mmkgrec.train.trainer import TrainConfig, Trainer, seed_everything


class RunSpec(BaseModel):
    """What to run. ``model_options`` / ``train_options`` override the per-model defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str = "mkgcn"
    dataset: str = "synthetic"
    source: str | None = None  # directory holding the named dataset's folder
    protocol: str = "ctr"
    presplit: str | None = None  # folder with train/valid/test.tsv (topk)
    seed: int = 0
    # user-contributed content (tags) built from: train positives only (default), all but
    # valid/test positives, or everything (a labelled upper bound); see features.content.scope_content
    content_scope: Literal["train", "no-eval", "all"] = "train"
    candidates: str | None = None  # items ranked (data.split.CANDIDATES); None: protocol default
    threshold: float | None = None  # positive threshold overriding the dataset's own
    mmkg: Literal["attribute", "entity"] = "attribute"  # entity: content becomes KG entities
    model_options: dict[str, Any] = {}
    train_options: dict[str, Any] = {}


@dataclass
class Run:
    """A trained model with the data it was trained on."""

    spec: RunSpec
    dataset: MMKG
    split: Split
    model: Recommender
    metrics: dict | None
    out_dir: Path | None


def read_config_file(path: str | Path) -> tuple[dict, dict]:
    """A TOML file with optional ``[model]`` and ``[train]`` tables -> (model, train) options."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    unknown = sorted(set(raw) - {"model", "train"})
    if unknown:
        raise ConfigError(f"{path}: unknown tables {unknown}; expected [model] and [train]")
    return dict(raw.get("model", {})), dict(raw.get("train", {}))


def parse_overrides(pairs: list[str], model: str) -> tuple[dict, dict]:
    """``KEY=VALUE`` strings -> (model, train) options. KEY is a field of the model's Config or
    of TrainConfig (``model.KEY`` / ``train.KEY`` disambiguate); VALUE is JSON when it parses."""
    model_fields = set(model_class(model).Config.model_fields)
    train_fields = set(TrainConfig.model_fields)
    model_options: dict = {}
    train_options: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ConfigError(f"override {pair!r} must look like KEY=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        scope, _, field = key.rpartition(".")
        if scope == "model" or (not scope and field in model_fields):
            model_options[field] = value
        elif scope == "train" or (not scope and field in train_fields):
            train_options[field] = value
        else:
            raise ConfigError(f"unknown option {key!r} for {model}; model options: "
                              f"{sorted(model_fields)}; train options: {sorted(train_fields)}")
    return model_options, train_options


def resolved_configs(spec: RunSpec) -> tuple[BaseModel, TrainConfig]:
    """Defaults (configs/<model>.toml with protocol / dataset overrides) < spec options."""
    cls = model_class(spec.model)
    defaults = default_config(spec.model, spec.dataset, spec.protocol)
    try:
        model_cfg = cls.Config(**{**defaults["model"], **spec.model_options})
    except ValidationError as error:
        raise ConfigError(f"invalid {spec.model} options: {describe(error)}") from None
    train_cfg = TrainConfig.parse(**{**defaults["train"], **spec.train_options, "seed": spec.seed})
    return model_cfg, train_cfg


def prepare_data(spec: RunSpec) -> tuple[MMKG, Split]:
    """Load the dataset and make (or apply) the split the spec asks for, then derive the
    split-dependent data (:func:`derive_data`)."""
    dataset = load_dataset(spec)
    if spec.presplit is not None:
        if spec.protocol != "topk":
            raise ConfigError("a pre-split (train/valid/test.tsv) is a topk protocol; "
                              "use --protocol topk")
        data_split = apply_presplit(dataset, spec.presplit)
    else:
        data_split = split(dataset, protocol=spec.protocol, seed=spec.seed)  # type: ignore[arg-type]
    return derive_data(spec, dataset, data_split.with_candidates(spec.candidates))


def load_dataset(spec: RunSpec) -> MMKG:
    """The spec's dataset as read, with ``spec.threshold`` applied."""
    return load(spec.dataset, source=spec.source, threshold=spec.threshold)


def derive_data(spec: RunSpec, dataset: MMKG, data_split: Split) -> tuple[MMKG, Split]:
    """What depends on the split: user content scoped to it, then the entity-based MMKG (its
    content clusters fitted on the split's train items). The split is re-pointed at the result."""
    dataset, data_split = scope_content(dataset, data_split, spec.content_scope)
    if spec.mmkg == "entity":
        from dataclasses import replace

        from mmkgrec.graph.mmkg_build import build_mmkg

        dataset = build_mmkg(dataset, "entity", seed=spec.seed,
                             fit_items=data_split.item_popularity() > 0)
        data_split = replace(data_split, dataset_fingerprint=dataset.fingerprint())
    return dataset, data_split


def build_model(spec: RunSpec, dataset: MMKG, data_split: Split, model_cfg) -> Recommender:
    seed_everything(spec.seed)
    return model_class(spec.model)(dataset, data_split, model_cfg, seed=spec.seed)


SNAPSHOT = "dataset"  # the run directory's dataset snapshot (native format)


def dataset_reference(spec: RunSpec, dataset: MMKG) -> dict:
    """What run.json records of the dataset: the spec's name / source, their absolute paths
    where they are directories (so a run made with a relative path loads from another cwd),
    and the fingerprint a re-loaded dataset must have."""
    def resolved(value: str | None) -> str | None:
        return str(Path(value).resolve()) if value is not None and Path(value).is_dir() else None

    return {"name": dataset.name, "dataset": spec.dataset, "dataset_path": resolved(spec.dataset),
            "source": spec.source, "source_path": resolved(spec.source),
            "fingerprint": dataset.fingerprint()}


def run_experiment(spec: RunSpec, out_dir: str | Path | None = None, *, resume: bool = False,
                   progress: bool | None = None, data: tuple[MMKG, Split] | None = None,
                   snapshot: bool = True) -> Run:
    """Train and evaluate one model. ``data`` reuses an already loaded (dataset, split).
    ``snapshot``: store the dataset in the run directory (``dataset/``, see the module
    docstring); False keeps only the checked reference (smaller, but needs the data folder)."""
    model_cfg, train_cfg = resolved_configs(spec)
    dataset, data_split = data if data is not None else prepare_data(spec)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and is_main_process():  # under torchrun only rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        if resume and (out / "run.json").is_file():
            saved = json.loads((out / "run.json").read_text())["spec"]
            if saved != spec.model_dump():
                raise ConfigError(f"{out} holds a different run ({saved}); resume needs the same "
                                  f"options, or choose another --out")
        reference = dataset_reference(spec, dataset)
        if snapshot and not _snapshot_matches(out / SNAPSHOT, reference["fingerprint"]):
            write_native(dataset, out / SNAPSHOT)
        (out / "run.json").write_text(json.dumps({
            "spec": spec.model_dump(), "model_config": model_cfg.model_dump(),
            "train_config": train_cfg.model_dump(), "dataset_fingerprint": dataset.fingerprint(),
            "dataset": {**reference, "snapshot": SNAPSHOT if snapshot else None},
        }, indent=2) + "\n")
        data_split.save(out / "split")
    model = build_model(spec, dataset, data_split, model_cfg)
    metrics = Trainer(model, data_split, train_cfg, out, dataset=dataset,
                      progress=progress).fit(resume=resume)
    return Run(spec, dataset, data_split, model, metrics, out)


def load_run(directory: str | Path) -> Run:
    """Rebuild a trained run from its directory (or its ``best/`` checkpoint directory)."""
    directory = Path(directory)
    if directory.name == "best" and not (directory / "run.json").is_file():
        directory = directory.parent
    manifest = directory / "run.json"
    if not manifest.is_file():
        raise MMKGRecError(f"{directory} is not a run directory (no run.json); pass the --out "
                           f"folder of `mmkgrec train`")
    try:  # a malformed run.json is named, not an anonymous JSON / key / validation error
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        spec = RunSpec(**saved["spec"])
        model_options = dict(saved["model_config"])
    except ValidationError as error:
        raise MMKGRecError(f"{manifest}: invalid spec: {describe(error)}") from None
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        problem = (f"missing key {error}" if isinstance(error, KeyError) else
                   "nested too deeply" if isinstance(error, RecursionError) else
                   "expected a JSON object with spec and model_config" if isinstance(error, TypeError)
                   else str(error))
        raise MMKGRecError(f"{manifest}: not a valid run.json ({problem})") from None
    data_split = Split.load(directory / "split")
    reference = saved.get("dataset") if isinstance(saved.get("dataset"), dict) else {}
    if (directory / SNAPSHOT / NATIVE_MANIFEST).is_file():  # self-contained (sha256-checked)
        dataset = read_native(directory / SNAPSHOT)
        where = f"its snapshot {directory / SNAPSHOT}"
    else:  # an older run directory, or snapshot=False: the referenced dataset, checked
        dataset, data_split = derive_data(spec, _load_reference(directory, spec, reference),
                                          data_split)
        where = f"dataset {spec.dataset!r}"
    if dataset.fingerprint() != data_split.dataset_fingerprint:
        raise MMKGRecError(
            f"{directory}: {where} is not the dataset this run was trained on (fingerprint "
            f"{dataset.fingerprint()[:12]}..., the run's {data_split.dataset_fingerprint[:12]}...):"
            f" its files changed since training; restore them or retrain")
    cls = model_class(spec.model)
    model = cls(dataset, data_split, cls.Config(**model_options), seed=spec.seed)
    _, meta = load_checkpoint(directory / "best", model, dataset=dataset, split=data_split)
    model.eval()
    return Run(spec, dataset, data_split, model, meta.get("metrics"), directory)


def _snapshot_matches(directory: Path, fingerprint: str) -> bool:
    """Whether ``directory`` already holds a native snapshot with this fingerprint (resume)."""
    try:
        return json.loads((directory / NATIVE_MANIFEST).read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _load_reference(directory: Path, spec: RunSpec, reference: dict) -> MMKG:
    """The dataset a snapshot-less run names: by the spec, else by the absolute paths recorded
    at training time (a relative ``--dataset`` from another working directory)."""
    try:
        return load_dataset(spec)
    except MMKGRecError as error:
        first = error
    if reference.get("dataset_path") or reference.get("source_path"):
        moved = spec.model_copy(update={
            "dataset": reference.get("dataset_path") or spec.dataset,
            "source": reference.get("source_path") or spec.source})
        try:
            return load_dataset(moved)
        except MMKGRecError:
            pass
    raise MMKGRecError(f"{directory}: this run holds no dataset snapshot and its dataset "
                       f"{spec.dataset!r} cannot be loaded ({first}); restore the data folder, or "
                       f"retrain (new runs store a snapshot)") from None


# ---- recommendations: the one path the CLI and the service share ------------------------------
def seen_items(dataset: MMKG) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr [U + 1], items)`` of every item of each user's interaction rows in the
    dataset: train, valid and test alike, any value (what ``exclude_seen`` excludes)."""
    inter = dataset.interactions
    return user_item_csr(inter["user"].to_numpy(), inter["item"].to_numpy(), dataset.n_users,
                         dataset.n_items)


def exclusions(seen: tuple[np.ndarray, np.ndarray], user: int | None, feedback: np.ndarray,
               exclude_seen: bool = True) -> np.ndarray:
    """The items not to recommend: with ``exclude_seen`` (default), every item of the user's
    interaction rows (:func:`seen_items`; none for a user the dataset lacks) plus every item
    with feedback (likes and dislikes; a new listener's liked items); else nothing."""
    if not exclude_seen:
        return np.zeros(0, dtype=np.int64)
    indptr, items = seen
    own = items[indptr[user]:indptr[user + 1]] if user is not None else items[:0]
    return np.unique(np.concatenate([own, np.asarray(feedback, dtype=np.int64)]))


def listener_history(scorer: Scorer, user: int | None, liked: np.ndarray) -> tuple[Tensor, Tensor]:
    """(history [1, S], valid [1, S]) of a listener built from items: a known user's ranking
    history (:class:`HistoryUsers`) plus the liked items not in it, or the liked items alone;
    with no items, one invalid slot (the model's empty-user vector)."""
    history = np.asarray(liked, dtype=np.int64)
    if user is not None and isinstance(scorer, HistoryUsers):
        table, valid = scorer.ranking_histories(np.array([user]))
        own = table[0][valid[0]]
        history = np.concatenate([own, history[~np.isin(history, own)]])
    mask = np.ones(len(history), dtype=bool)
    if not len(history):
        history, mask = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=bool)
    return torch.as_tensor(history).unsqueeze(0), torch.as_tensor(mask).unsqueeze(0)


def builds_listener(scorer: Scorer, user: int | None, liked: np.ndarray) -> bool:
    """Whether the scores come from :meth:`UsersFromItems.score_histories` (a new listener, or
    a known user of a :class:`HistoryUsers` model with liked feedback) rather than score_users."""
    return user is None or (len(liked) > 0 and isinstance(scorer, HistoryUsers))


@torch.no_grad()
def user_scores(scorer: Scorer, user: int | None, liked: np.ndarray) -> Tensor:
    """[I'] logits of a known user (index; liked feedback enters :class:`HistoryUsers` only)
    or of a new listener (``user`` None) given by liked items (:class:`UsersFromItems`)."""
    if not builds_listener(scorer, user, liked):
        return scorer.score_users(torch.tensor([user]))[0]
    if not isinstance(scorer, UsersFromItems):
        raise ConfigError("this model needs a user id embedding; only models that build users "
                          "from their items (mkgcn, mmkgcf, mkrln, pgpr) serve new listeners")
    return scorer.score_histories(*listener_history(scorer, user, liked))[0]


def top_k(scores: Tensor, exclude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(items [k'], logits [k']) of the best ``k`` finite scores [I'] outside ``exclude``;
    NaN / inf scores rank last and are dropped. Ties: torch.topk's order."""
    scores = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -torch.inf))
    if len(exclude):
        scores[torch.as_tensor(exclude, device=scores.device)] = -torch.inf
    best, items = torch.topk(scores, min(k, len(scores)))
    keep = torch.isfinite(best)
    return items[keep].cpu().numpy(), best[keep].cpu().numpy()


def rank_items(scorer: Scorer, seen: tuple[np.ndarray, np.ndarray], *, user: int | None,
               liked: np.ndarray, feedback: np.ndarray, k: int, exclude_seen: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (items [k'], logits [k']) for a known user (index) or a new listener, with
    the :func:`exclusions` rule. The CLI's :func:`recommend` and the service both call this."""
    exclude = exclusions(seen, user, feedback, exclude_seen)
    return top_k(user_scores(scorer, user, liked).clone(), exclude, k)


#: item display columns shown with recommendations, when the dataset has them
DISPLAY_COLUMNS = ("name", "title", "artist", "album", "genre", "tags")


def display_names(dataset: MMKG) -> np.ndarray | None:
    """[I] an item's display name: its ``name`` attribute, else "artist – title", else the
    title or the artist alone; None without such attributes (empty cells give "")."""
    attrs = dataset.item_attrs
    if attrs is None:
        return None
    def column(name: str) -> np.ndarray | None:
        if name not in attrs.columns:
            return None
        return attrs[name].fillna("").astype(str).str.strip().to_numpy()
    name, title, artist = column("name"), column("title"), column("artist")
    if name is not None:
        return name
    if title is not None and artist is not None:
        both = (artist != "") & (title != "")
        return np.where(both, np.char.add(np.char.add(artist.astype(str), " – "), title.astype(str)),
                        np.where(title != "", title, artist)).astype(object)
    return title if title is not None else artist


@torch.no_grad()
def recommend(run: Run, *, user: str | None = None, liked: list[str] | None = None,
              k: int = 10, exclude_seen: bool = True) -> pd.DataFrame:
    """Top-k items for a known user (original id) or a new listener (liked item ids).

    Exclusions (:func:`exclusions`): a known user's every interaction row in the dataset (all
    splits) when ``exclude_seen``; a new listener's liked items. Returns columns rank, item_id,
    score (sigmoid of the logit) and the display columns the dataset has.
    """
    ds, model = run.dataset, run.model
    model.eval()
    if (user is None) == (liked is None):
        raise ConfigError("give either a user id or a list of liked item ids")
    if user is not None:
        position = np.flatnonzero(ds.users == str(user))
        if len(position) == 0:
            raise ConfigError(f"unknown user {user!r} (the dataset has {ds.n_users} users)")
        who, wanted = int(position[0]), np.zeros(0, dtype=np.int64)
    else:
        if not isinstance(model, UsersFromItems):
            raise ConfigError(f"{run.spec.model} needs a user id embedding; only models that "
                              f"build users from their items (mkgcn, mmkgcf, mkrln, pgpr) serve "
                              f"new listeners")
        wanted_ids = [str(x) for x in liked or []]
        index = pd.Index(ds.items).get_indexer(pd.Index(wanted_ids))
        if (index < 0).any():
            bad = [x for x, i in zip(wanted_ids, index) if i < 0]
            raise ConfigError(f"unknown item ids {bad}")
        who, wanted = None, index.astype(np.int64)
    model.prepare_ranking()
    items, logits = rank_items(model, seen_items(ds), user=who, liked=wanted, feedback=wanted,
                               k=k, exclude_seen=exclude_seen or who is None)
    frame = pd.DataFrame({"rank": np.arange(1, len(items) + 1), "item_id": ds.items[items],
                          "score": 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))})
    names = display_names(ds)
    if names is not None:
        frame["name"] = names[items]
    if ds.item_attrs is not None:
        for column in DISPLAY_COLUMNS[1:]:
            if column in ds.item_attrs.columns:
                frame[column] = ds.item_attrs[column].fillna("").astype(str).to_numpy()[items]
    return frame
