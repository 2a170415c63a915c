"""Leak-free evaluation protocols: which interactions a model may see, and which it is judged on.

Three protocols, all seeded (numpy ``Generator``) and vectorised:

``ctr`` -- the KGCN / MKGCN lineage. Each unique positive (user, item) pair gets ``neg_ratio``
    negatives drawn uniformly, without replacement within a user, from the items the user never
    interacted with (no interaction row at all, whatever its value -- as KGCN excludes them).
    A user with too few unseen items gets all of them (recorded in ``notes``). All labelled rows
    are shuffled and cut 6:2:2 (``ratios``): valid = floor(r_v N), test = floor(r_t N),
    train = the rest. Parts: ``user``, ``item`` int64 and ``label`` float32 (1.0 / 0.0, ready as a
    BCE target).
``topk`` -- per-user split of the unique positives, 8:1:1 by default, at random or by time
    (``temporal=True``: each user's latest positives go to test, the ones before to valid; equal
    timestamps keep dataset row order, so the seed plays no part). Parts: ``user``, ``item``
    int64, all positives. Sizes per user with n positives follow RecBole
    (``Dataset._calcu_split_ids``): valid = floor(r_v n), test = floor(r_t n), train = the rest;
    then, test first and valid second, a part with 0 < r n < 1 takes one item from train while
    train still holds more than one. With 8:1:1: n=1 -> 1/0/0, 2 -> 1/0/1, 3 -> 1/1/1,
    5 -> 3/1/1, 10 -> 8/1/1, 11 -> 9/1/1.
``cold`` -- item cold start. The items with positives are shuffled and cut 8:1:1 (``ratios``):
    every positive of a valid item goes to valid, of a test item to test, so those items never
    appear in train. Ranking for a stage considers only that stage's cold items
    (:meth:`Split.candidate_items`): the question is which NEW songs a user will like, answered
    from their KG links and content alone. Parts: ``user``, ``item`` int64, all positives.

Candidate items (``Split.candidates``, :meth:`Split.candidate_items`): which items full ranking
may return at a stage, an explicit option of every protocol, stated in every results table:

``all``       every item of the catalogue (linked items nobody played included); ctr's default.
``positive``  items with at least one positive in the split (train, valid or test): the items
              RecBole ranks (those of its ``.inter`` file); topk's default.
``new``       cold: every item without a train positive (held-out songs of both stages and songs
              nobody played compete); cold's default.
``held-out``  cold: only the stage's held-out items, which all have a positive in that stage:
              optimistic by construction (never-played new songs never compete).

Everything a model may see comes from :class:`Split`: ``train_positives``, ``user_history`` (the
MKGCN user aggregator's input) and ``item_popularity`` use train rows only (ctr: label 1);
``ranking_exclusions`` masks what is known before a stage; ``ground_truth`` is the stage's
positives. Parts are sorted by (user, item), so equal splits have equal fingerprints.

Fixed benchmark splits (``train.tsv`` / ``valid.tsv`` / ``test.tsv`` with original ids) enter via
:func:`apply_presplit`. :meth:`Split.save` writes three Parquet files plus ``split.json`` holding
the dataset fingerprint; :meth:`Split.load` checks it against a given dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from mmkgrec.config import parse_config
from mmkgrec.data.csr import user_item_csr
from mmkgrec.data.dataset import MMKG
from mmkgrec.data.sampling import first_occurrence, in_sorted, sample_unseen, sorted_unique
from mmkgrec.data.textio import Column, read_table
from mmkgrec.errors import ConfigError, DataFormatError, MMKGRecError

Protocol = Literal["ctr", "topk", "cold"]
Stage = Literal["valid", "test"]
PARTS = ("train", "valid", "test")
DEFAULT_RATIOS = {"ctr": (0.6, 0.2, 0.2), "topk": (0.8, 0.1, 0.1), "cold": (0.8, 0.1, 0.1)}
MANIFEST = "split.json"
_FORMAT = "mmkgrec-split/1"
_MAX_REJECTION_ROUNDS = 64  # slots still empty after this are filled by ranking
_RANK_BLOCK = 1 << 24  # elements of one [users, n_items] block of random scores
CANDIDATES = {"ctr": ("all", "positive"), "topk": ("positive", "all"),
              "cold": ("new", "held-out", "all")}  # per protocol; the first is the default
_LEGACY_CANDIDATES = {"ctr": "all", "topk": "all", "cold": "held-out"}  # before the option


def default_candidates(protocol: str) -> str:
    """The default candidate set of ``protocol`` (see the module docstring)."""
    return CANDIDATES.get(protocol, ("all",))[0]


class SplitConfig(BaseModel):
    """Options of :func:`split`. Invalid values raise :class:`~mmkgrec.errors.ConfigError`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Protocol = "topk"
    seed: StrictInt = Field(0, ge=0)
    ratios: tuple[float, float, float] | None = None  # train, valid, test; None: protocol default
    temporal: StrictBool = False  # topk only
    neg_ratio: StrictInt = Field(1, ge=1)  # ctr only: negatives per positive

    @field_validator("ratios")
    @classmethod
    def _check_ratios(cls, ratios):
        if ratios is None:
            return ratios
        if not all(math.isfinite(r) and r > 0 for r in ratios):
            raise ValueError(f"train, valid and test ratios must all be > 0, got {list(ratios)}")
        if abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(f"ratios must sum to 1, got {list(ratios)} (sum {sum(ratios):g})")
        return ratios

    @model_validator(mode="after")
    def _check_protocol(self):
        if self.protocol == "ctr" and self.temporal:
            raise ValueError("temporal=True applies to the topk protocol only")
        if self.protocol == "cold" and self.temporal:
            raise ValueError("temporal=True applies to the topk protocol only")
        if self.protocol != "ctr" and self.neg_ratio != 1:
            raise ValueError("neg_ratio applies to the ctr protocol only")
        return self

    @classmethod
    def parse(cls, **options) -> SplitConfig:
        """Validate ``options``; raise ConfigError naming each bad option."""
        return parse_config(cls, "split options", options)

    def part_ratios(self) -> tuple[float, float, float]:
        """(train, valid, test) ratios, normalised to sum exactly 1 (as RecBole does)."""
        ratios = self.ratios or DEFAULT_RATIOS[self.protocol]
        total = sum(ratios)
        return (ratios[0] / total, ratios[1] / total, ratios[2] / total)


@dataclass
class Split:
    """A train / valid / test split of one dataset. See the module docstring.

    ``train``/``valid``/``test``: ``user``, ``item`` int64 (plus ``label`` float32 for ctr), sorted
    by (user, item), pairwise disjoint.
    """

    protocol: Protocol
    n_users: int
    n_items: int
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    seed: int | None = None  # None for a pre-split
    notes: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # the SplitConfig, or the pre-split's source
    dataset_name: str = ""
    dataset_fingerprint: str = ""
    cold_items: dict[str, np.ndarray] = field(default_factory=dict)  # cold: stage -> sorted ids
    candidates: str = ""  # candidate set (module docstring); "" = the protocol's default

    def __post_init__(self):
        if not self.candidates:
            self.candidates = default_candidates(self.protocol)

    # ---- views (what models may see) ---------------------------------------------------------
    def part(self, name: str) -> pd.DataFrame:
        """The ``train``, ``valid`` or ``test`` frame."""
        if name not in PARTS:
            raise ConfigError(f"unknown split part {name!r}; expected one of {list(PARTS)}")
        return getattr(self, name)

    def positives(self, name: str) -> pd.DataFrame:
        """(user, item) positives of one part (ctr: rows with label 1)."""
        frame = self.part(name)
        if "label" in frame.columns:
            frame = frame[frame["label"].to_numpy() == 1]
        return frame[["user", "item"]].reset_index(drop=True)

    def _positive_pairs(self, names) -> tuple[np.ndarray, np.ndarray]:
        """(users [n], items [n]) of the positives of the parts ``names``, concatenated as
        numpy arrays (what ranking needs, without building frames)."""
        users, items = [], []
        for name in names:
            frame = self.part(name)
            user, item = frame["user"].to_numpy(), frame["item"].to_numpy()
            if "label" in frame.columns:
                positive = frame["label"].to_numpy() == 1
                user, item = user[positive], item[positive]
            users.append(user)
            items.append(item)
        return (np.concatenate(users) if users else np.zeros(0, np.int64),
                np.concatenate(items) if items else np.zeros(0, np.int64))

    def train_positives(self) -> pd.DataFrame:
        """(user, item) positives of train only."""
        return self.positives("train")

    def user_history(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR of train positives: ``indptr`` [n_users + 1], ``items`` [nnz] sorted per user."""
        train = self.train_positives()
        return user_item_csr(train["user"].to_numpy(), train["item"].to_numpy(), self.n_users,
                             self.n_items)

    def item_popularity(self) -> np.ndarray:
        """[n_items] int64: number of train positives of each item."""
        items = self.train_positives()["item"].to_numpy()
        return np.bincount(items, minlength=self.n_items).astype(np.int64)

    def ranking_exclusions(self, stage: Stage) -> tuple[np.ndarray, np.ndarray]:
        """CSR (``indptr`` [n_users + 1], ``items``) of items to mask when ranking for ``stage``.

        valid: the train positives; test: train + valid positives. Never the stage's own items.
        """
        users, items = self._positive_pairs(PARTS[: PARTS.index(_check_stage(stage))])
        return user_item_csr(users, items, self.n_users, self.n_items)

    def candidate_items(self, stage: Stage) -> np.ndarray | None:
        """Sorted ids of the items full ranking may return at ``stage``; None: every item.
        See the module docstring for each candidate set."""
        stage = _check_stage(stage)
        if self.candidates == "all":
            return None
        if self.candidates == "held-out":
            return self.cold_items[stage]
        seen = np.zeros(self.n_items, dtype=bool)  # [n_items]
        parts = PARTS if self.candidates == "positive" else ("train",)
        seen[self._positive_pairs(parts)[1]] = True
        return np.flatnonzero(seen if self.candidates == "positive" else ~seen).astype(np.int64)

    def with_candidates(self, candidates: str | None) -> Split:
        """The same split ranking over ``candidates`` (None: the protocol's default)."""
        from dataclasses import replace

        chosen = candidates or default_candidates(self.protocol)
        if chosen not in CANDIDATES[self.protocol]:
            raise ConfigError(f"candidate set {chosen!r} does not fit the {self.protocol} "
                              f"protocol; choose {' or '.join(CANDIDATES[self.protocol])}")
        return replace(self, candidates=chosen, notes=list(self.notes))

    def ground_truth(self, stage: Stage) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stage's positives for full-ranking metrics.

        Returns:
            ``users`` [n_eval] (ascending, each with >= 1 target), ``indptr`` [n_eval + 1] and
            ``items`` [nnz] sorted per user: user ``users[k]`` has ``items[indptr[k]:indptr[k+1]]``.
        """
        frame = self.positives(_check_stage(stage))
        users = frame["user"].to_numpy()
        indptr, items = user_item_csr(users, frame["item"].to_numpy(), self.n_users, self.n_items)
        eval_users = np.flatnonzero(np.diff(indptr)).astype(np.int64)  # [n_eval]
        counts = np.diff(indptr)[eval_users]
        return eval_users, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), items

    # ---- identity, checks, files -------------------------------------------------------------
    def fingerprint(self, with_candidates: bool = True) -> str:
        """sha256 over protocol, sizes, the three parts (and the candidate set): identifies the
        exact split; ``with_candidates=False``: its parts only."""
        digest = hashlib.sha256(f"{self.protocol}|{self.n_users}|{self.n_items}".encode())
        for name in PARTS:
            frame = self.part(name)
            digest.update(f"|{name}:{len(frame)}".encode())
            for column in frame.columns:
                digest.update(column.encode())
                digest.update(np.ascontiguousarray(frame[column].to_numpy()).tobytes())
        for stage, items in sorted(self.cold_items.items()):
            digest.update(f"|cold {stage}:".encode())
            digest.update(np.ascontiguousarray(items, dtype=np.int64).tobytes())
        if with_candidates and self.candidates != _LEGACY_CANDIDATES.get(self.protocol):
            # (the legacy set adds nothing, so fingerprints from before the option stay valid)
            digest.update(f"|candidates:{self.candidates}".encode())
        return digest.hexdigest()

    def validate(self) -> None:
        """Check columns, dtypes, id ranges and that no (user, item) pair is in two parts."""
        columns = ["user", "item", "label"] if self.protocol == "ctr" else ["user", "item"]
        parts: list[np.ndarray] = []
        for name in PARTS:
            frame = self.part(name)
            if list(frame.columns) != columns:
                raise MMKGRecError(
                    f"split part {name}: columns {list(frame.columns)}, expected {columns}")
            for column, size in (("user", self.n_users), ("item", self.n_items)):
                ids = frame[column].to_numpy()
                if ids.dtype != np.int64 or (len(ids) and (ids.min() < 0 or ids.max() >= size)):
                    raise MMKGRecError(
                        f"split part {name}: {column} ids must be int64 in [0, {size})")
            if self.protocol == "ctr":
                labels = frame["label"].to_numpy()
                if labels.dtype != np.float32 or not np.isin(labels, (0.0, 1.0)).all():
                    raise MMKGRecError(f"split part {name}: labels must be float32 0.0 / 1.0")
            parts.append(frame["user"].to_numpy() * self.n_items + frame["item"].to_numpy())
        keys = np.concatenate(parts)
        if not first_occurrence(keys).all():
            raise MMKGRecError("split parts overlap: a (user, item) pair is in two parts or twice")
        if self.candidates not in CANDIDATES.get(self.protocol, ()):
            raise MMKGRecError(f"candidate set {self.candidates!r} does not fit the "
                               f"{self.protocol} protocol")
        if self.protocol == "cold":
            self._validate_cold()

    def _validate_cold(self) -> None:
        if set(self.cold_items) != {"valid", "test"}:
            raise MMKGRecError("a cold split needs cold items for both valid and test")
        valid, test = self.cold_items["valid"], self.cold_items["test"]
        if np.intersect1d(valid, test).size:
            raise MMKGRecError("cold split: an item is cold in both valid and test")
        if np.isin(self.train["item"].to_numpy(), np.concatenate([valid, test])).any():
            raise MMKGRecError("cold split: a cold item has train interactions")
        for stage, items in (("valid", valid), ("test", test)):
            if not np.isin(self.part(stage)["item"].to_numpy(), items).all():
                raise MMKGRecError(f"cold split: a {stage} positive is not one of its cold items")

    def save(self, directory: str | Path) -> Path:
        """Write ``{train,valid,test}.parquet`` and ``split.json`` into ``directory``.

        Returns:
            the manifest path.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in PARTS:
            self.part(name).to_parquet(directory / f"{name}.parquet", index=False)
        manifest = {
            "format": _FORMAT,
            "protocol": self.protocol,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "seed": self.seed,
            "options": self.options,
            "notes": self.notes,
            "rows": {name: len(self.part(name)) for name in PARTS},
            "cold_items": {stage: items.tolist() for stage, items in self.cold_items.items()},
            "candidates": self.candidates,
            "dataset": {"name": self.dataset_name, "fingerprint": self.dataset_fingerprint},
            "fingerprint": self.fingerprint(),
        }
        path = directory / MANIFEST
        path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path, ds: MMKG | None = None) -> Split:
        """Read a split written by :meth:`save`.

        Args:
            directory: the folder holding ``split.json`` and the Parquet parts.
            ds: when given, the split must have been made from exactly this dataset.

        Raises:
            DataFormatError: missing or corrupt files, parts changed since saving, or a split
                made from another dataset than ``ds``.
        """
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise DataFormatError(path, "file not found (not a saved split)")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataFormatError(path, f"not valid JSON: {err.msg}", err.lineno) from None
        except UnicodeDecodeError:
            raise DataFormatError(path, "not UTF-8 text") from None
        needed = ("format", "protocol", "n_users", "n_items", "seed", "dataset", "fingerprint")
        missing = [key for key in needed if not isinstance(manifest, dict) or key not in manifest]
        if missing or manifest["format"] != _FORMAT:
            raise DataFormatError(path, f"not a {_FORMAT} manifest (missing {missing or 'format'})")
        parts = {}
        for name in PARTS:
            part_path = directory / f"{name}.parquet"
            try:
                frame = pd.read_parquet(part_path)
                dtypes = {"user": np.int64, "item": np.int64, "label": np.float32}
                parts[name] = frame.astype({c: dtypes[c] for c in frame.columns if c in dtypes})
            except (OSError, ValueError, KeyError) as err:
                raise DataFormatError(part_path, f"cannot read the split part: {err}") from None
        split_ = cls(
            protocol=manifest["protocol"], n_users=int(manifest["n_users"]),
            n_items=int(manifest["n_items"]), seed=manifest["seed"],
            notes=list(manifest.get("notes", [])), options=dict(manifest.get("options", {})),
            dataset_name=manifest["dataset"].get("name", ""),
            dataset_fingerprint=manifest["dataset"].get("fingerprint", ""), **parts,
            cold_items={stage: np.asarray(items, dtype=np.int64)
                        for stage, items in manifest.get("cold_items", {}).items()},
            candidates=str(manifest.get("candidates", _LEGACY_CANDIDATES.get(
                manifest["protocol"], ""))),
        )
        try:
            split_.validate()
        except MMKGRecError as err:
            raise DataFormatError(directory, str(err)) from None
        if split_.fingerprint() != manifest["fingerprint"]:
            raise DataFormatError(path, "the Parquet parts changed since the split was saved "
                                        "(fingerprint mismatch)")
        if ds is not None and ds.fingerprint() != split_.dataset_fingerprint:
            raise DataFormatError(
                path, f"this split was made from dataset {split_.dataset_name!r} "
                      f"(fingerprint {split_.dataset_fingerprint[:12]}...), not from {ds.name!r} "
                      f"({ds.fingerprint()[:12]}...)")
        return split_


# ---- protocols -------------------------------------------------------------------------------
def split(
    ds: MMKG,
    protocol: Protocol = "topk",
    *,
    seed: int = 0,
    ratios: tuple[float, float, float] | list[float] | None = None,
    temporal: bool = False,
    neg_ratio: int = 1,
) -> Split:
    """Split ``ds`` by ``protocol`` (see the module docstring).

    Args:
        ds: the dataset; its unique positives (``ds.positives()``) are split.
        protocol: ``"ctr"`` (labelled rows with sampled negatives, shuffled 6:2:2), ``"topk"``
            (per-user 8:1:1 split of the positives) or ``"cold"`` (8:1:1 split of the items).
        seed: seed of the numpy Generator; the same seed gives the same split.
        ratios: (train, valid, test), each > 0, summing to 1; default by protocol.
        temporal: topk only: latest positives of each user to test (needs timestamps).
        neg_ratio: ctr only: negatives per positive.

    Raises:
        ConfigError: invalid options, or ``temporal`` on a dataset without timestamps.
        MMKGRecError: the dataset has no positives.
    """
    config = SplitConfig.parse(protocol=protocol, seed=seed, ratios=ratios, temporal=temporal,
                               neg_ratio=neg_ratio)
    if config.temporal and not ds.has_timestamps:
        raise ConfigError(f"temporal split needs timestamps; dataset {ds.name!r} has none")
    positives = ds.positives()
    if positives.empty:
        raise MMKGRecError(f"dataset {ds.name!r} has no positives (value >= {ds.threshold}): "
                           "nothing to split")
    rng = np.random.default_rng(config.seed)
    splitter: Callable[..., tuple[Any, ...]] = {
        "ctr": _split_ctr, "topk": _split_topk, "cold": _split_cold}[config.protocol]
    (train, valid, test), notes, *cold = splitter(ds, positives, config, rng)
    result = Split(
        protocol=config.protocol, n_users=ds.n_users, n_items=ds.n_items,
        train=train, valid=valid, test=test, seed=config.seed, notes=notes,
        options=config.model_dump(mode="json"), dataset_name=ds.name,
        dataset_fingerprint=ds.fingerprint(), cold_items=cold[0] if cold else {},
    )
    result.validate()
    return result


def recbole_part_sizes(
    counts: np.ndarray, ratios: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (train, valid, test) sizes of RecBole's ratio split (see the module docstring).

    Args:
        counts: [n_users] number of positives of each user.
        ratios: (train, valid, test), normalised.

    Returns:
        three [n_users] int64 arrays summing to ``counts``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.astype(np.float64)
    _, r_valid, r_test = ratios
    valid = np.floor(r_valid * n).astype(np.int64)  # int(ratio * tot), as RecBole
    test = np.floor(r_test * n).astype(np.int64)
    train = counts - valid - test
    for ratio, part in ((r_test, test), (r_valid, valid)):  # test first, then valid
        move = (train > 1) & (ratio * n > 0) & (ratio * n < 1)
        part += move
        train -= move
    return train, valid, test


def _split_topk(ds: MMKG, positives: pd.DataFrame, config: SplitConfig,
                rng: np.random.Generator) -> tuple[list[pd.DataFrame], list[str]]:
    users = positives["user"].to_numpy()  # [n]
    items = positives["item"].to_numpy()  # [n]
    n = len(users)
    if config.temporal:
        times = positives["timestamp"].to_numpy()
        if np.isnan(times).any():
            raise MMKGRecError(f"dataset {ds.name!r}: {int(np.isnan(times).sum())} positives "
                               "have no timestamp; a temporal split cannot place them")
        order = np.lexsort((np.arange(n), times, users))  # by user, time, then row order
    else:
        order = np.lexsort((rng.random(n), users))  # by user, random within a user
    users, items = users[order], items[order]
    counts = np.bincount(users, minlength=ds.n_users)  # [n_users]
    n_train, n_valid, _ = recbole_part_sizes(counts, config.part_ratios())
    rank = np.arange(n) - (np.cumsum(counts) - counts)[users]  # [n] position within the user
    part = (rank >= n_train[users]).astype(np.int8) + (rank >= (n_train + n_valid)[users])
    frames = [_pairs(users[part == k], items[part == k]) for k in range(3)]
    kind = "temporal (latest to test)" if config.temporal else "random"
    notes = [
        f"topk {kind} per-user split {_ratio_text(config)} of {n} positives of "
        f"{int((counts > 0).sum())} users: {_sizes_text(frames)} (RecBole size rule)",
    ]
    n_single = int((counts == 1).sum())
    if n_single:
        notes.append(f"{n_single} users have a single positive: train only, never evaluated")
    return frames, notes


def _split_cold(ds: MMKG, positives: pd.DataFrame, config: SplitConfig, rng: np.random.Generator
                ) -> tuple[list[pd.DataFrame], list[str], dict[str, np.ndarray]]:
    users = positives["user"].to_numpy()  # [n]
    items = positives["item"].to_numpy()  # [n]
    candidates = np.unique(items)  # [n_pos_items] items with at least one positive
    order = rng.permutation(candidates)
    _, r_valid, r_test = config.part_ratios()
    n_valid = max(1, math.floor(len(order) * r_valid))
    n_test = max(1, math.floor(len(order) * r_test))
    if n_valid + n_test >= len(order):
        raise MMKGRecError(f"dataset {ds.name!r} has only {len(order)} items with positives: too "
                           "few for a cold-start split")
    cold = {"valid": np.sort(order[:n_valid]), "test": np.sort(order[n_valid:n_valid + n_test])}
    part = np.isin(items, cold["valid"]).astype(np.int8) + 2 * np.isin(items, cold["test"])
    frames = [_pairs(users[part == k], items[part == k]) for k in range(3)]
    notes = [
        f"cold-start item split {_ratio_text(config)} of {len(order)} items with positives: "
        f"{len(order) - n_valid - n_test} train / {n_valid} valid / {n_test} test items hold "
        f"{_sizes_text(frames)} positives; valid and test items have no train interaction",
    ]
    return frames, notes, cold


def _split_ctr(ds: MMKG, positives: pd.DataFrame, config: SplitConfig,
               rng: np.random.Generator) -> tuple[list[pd.DataFrame], list[str]]:
    n_items = ds.n_items
    pos_users = positives["user"].to_numpy()  # [n_pos]
    pos_items = positives["item"].to_numpy()  # [n_pos]
    interactions = ds.interactions
    seen = sorted_unique(interactions["user"].to_numpy() * n_items
                          + interactions["item"].to_numpy())  # [n_seen] keys, any value
    need = np.bincount(pos_users, minlength=ds.n_users) * config.neg_ratio  # [n_users]
    negatives, notes = sample_unseen(seen, need, n_items, rng, _MAX_REJECTION_ROUNDS,
                                     _RANK_BLOCK)  # [n_neg] keys
    users = np.concatenate([pos_users, negatives // n_items])  # [n]
    items = np.concatenate([pos_items, negatives % n_items])  # [n]
    labels = np.concatenate([np.ones(len(pos_users), np.float32),
                             np.zeros(len(negatives), np.float32)])
    n = len(users)
    _, r_valid, r_test = config.part_ratios()
    n_valid, n_test = math.floor(n * r_valid), math.floor(n * r_test)
    n_train = n - n_valid - n_test
    perm = rng.permutation(n)  # [n] shuffled labelled rows, as KGCN
    cuts = (perm[:n_train], perm[n_train:n_train + n_valid], perm[n_train + n_valid:])
    frames = [_pairs(users[rows], items[rows], labels[rows]) for rows in cuts]
    notes.insert(0, f"ctr split {_ratio_text(config)} of {len(pos_users)} positives + "
                    f"{len(negatives)} negatives ({config.neg_ratio} per positive, drawn from "
                    f"never-interacted items): {_sizes_text(frames)}")
    return frames, notes


# ---- fixed benchmark splits -------------------------------------------------------------------
def apply_presplit(ds: MMKG, directory: str | Path) -> Split:
    """A topk split read from ``train.tsv``, ``valid.tsv``, ``test.tsv`` in ``directory``.

    Each file: tab-separated ``user_id  item_id  rating`` (header optional), ORIGINAL ids. The
    dataset, not the file's rating, decides what a positive is.

    Raises:
        DataFormatError: naming file and line, for an unknown user or item id, a pair that is not
            an interaction of ``ds`` or not a positive of it, or a pair listed twice (in one file
            or two). Positives of ``ds`` that no file lists are counted in ``notes``.
    """
    directory = Path(directory)
    columns = [Column("user_id"), Column("item_id"), Column("rating", "float")]
    user_index, item_index = pd.Index(ds.users), pd.Index(ds.items)
    n_items = ds.n_items
    positives = ds.positives()
    positive_keys = np.sort(positives["user"].to_numpy() * n_items + positives["item"].to_numpy())
    inter = ds.interactions
    seen = sorted_unique(inter["user"].to_numpy() * n_items + inter["item"].to_numpy())

    keys, where = [], []  # per file: [rows] keys, (path, [rows] lines)
    for name in PARTS:  # three files
        path = directory / f"{name}.tsv"
        table = read_table(path, columns, header="optional")
        lines = table["_line"].to_numpy()
        raw_users, raw_items = table["user_id"].to_numpy(), table["item_id"].to_numpy()
        users = user_index.get_indexer(pd.Index(raw_users))  # [rows], -1 when unknown
        items = item_index.get_indexer(pd.Index(raw_items))
        for kind, coded, raw in (("user", users, raw_users), ("item", items, raw_items)):
            if (coded < 0).any():
                i = int(np.argmax(coded < 0))
                raise DataFormatError(path, f"unknown {kind} id {raw[i]!r}: not in dataset "
                                            f"{ds.name!r}", int(lines[i]))
        part_keys = users.astype(np.int64) * n_items + items
        for problem, bad in (
            ("is not an interaction of the dataset (a pre-split must not invent data)",
             ~in_sorted(part_keys, seen)),
            (f"is not a positive of the dataset (its value is below {ds.threshold:g})",
             ~in_sorted(part_keys, positive_keys)),
        ):
            if bad.any():
                i = int(np.argmax(bad))
                raise DataFormatError(path, f"user {raw_users[i]!r}, item {raw_items[i]!r} "
                                            f"{problem}", int(lines[i]))
        keys.append(part_keys)
        where.append((path, lines))

    all_keys = np.concatenate(keys)
    repeated = ~first_occurrence(all_keys)
    if repeated.any():
        i = int(np.argmax(repeated))
        first = int(np.argmax(all_keys == all_keys[i]))
        (path, line), (first_path, first_line) = _locate(where, i), _locate(where, first)
        user, item = ds.users[all_keys[i] // n_items], ds.items[all_keys[i] % n_items]
        raise DataFormatError(path, f"user {user!r}, item {item!r} is listed twice (first in "
                                    f"{first_path.name}, line {first_line})", line)

    frames = [_pairs(k // n_items, k % n_items) for k in keys]
    omitted = len(positive_keys) - len(all_keys)
    notes = [f"pre-split {directory}: {_sizes_text(frames)}; "
             + (f"it omits {omitted} of {len(positive_keys)} dataset positives (in no part)"
                if omitted else f"it covers all {len(positive_keys)} dataset positives")]
    result = Split(
        protocol="topk", n_users=ds.n_users, n_items=n_items, train=frames[0], valid=frames[1],
        test=frames[2], seed=None, notes=notes,
        options={"protocol": "topk", "presplit": str(directory)}, dataset_name=ds.name,
        dataset_fingerprint=ds.fingerprint(),
    )
    result.validate()
    return result


# ---- helpers ----------------------------------------------------------------------------------
def _check_stage(stage: str) -> Stage:
    if stage not in ("valid", "test"):
        raise ConfigError(f"unknown evaluation stage {stage!r}; expected 'valid' or 'test'")
    return stage  # type: ignore[return-value]  # checked just above


def _pairs(users: np.ndarray, items: np.ndarray, labels: np.ndarray | None = None) -> pd.DataFrame:
    """A part frame sorted by (user, item)."""
    order = np.lexsort((items, users))
    frame = pd.DataFrame({"user": users[order].astype(np.int64),
                          "item": items[order].astype(np.int64)})
    if labels is not None:
        frame["label"] = labels[order].astype(np.float32)
    return frame


def _locate(where: list[tuple[Path, np.ndarray]], index: int) -> tuple[Path, int]:
    """(file, line) of row ``index`` of the concatenated pre-split files."""
    ends = np.cumsum([len(lines) for _, lines in where])  # [n_files]
    k = int(np.searchsorted(ends, index, side="right"))
    path, lines = where[k]
    return path, int(lines[index - (ends[k] - len(lines))])


def _sizes_text(frames: list[pd.DataFrame]) -> str:
    return " / ".join(f"{len(f)} {name}" for f, name in zip(frames, PARTS))


def _ratio_text(config: SplitConfig) -> str:
    return ":".join(f"{r:g}" for r in (config.ratios or DEFAULT_RATIOS[config.protocol]))
