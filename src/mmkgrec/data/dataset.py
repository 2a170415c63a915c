"""The multi-modal knowledge graph (MMKG) every model trains on.

Conventions (see docs/architecture.md):
- Contiguous int64 ids. Users ``0..n_users-1``, items ``0..n_items-1``, entities
  ``0..n_entities-1``, relations ``0..n_relations-1``. Original ids are kept as strings.
- An item IS an entity: item ``i`` is entity ``i``. Non-item entities follow the items.
- Interactions keep every row with its raw ``value`` (rating or play count); a row is a positive
  when ``value >= threshold``.
- Triples are de-duplicated and stored once, as (head, relation, tail); the graph layer makes
  them undirected (same relation both ways) or adds inverse relations.
- User-side KG facts (optional) are (user, user relation, entity) rows, e.g. "user u tagged
  artist a" (entity ``a`` is the item): context a model may propagate over, never positives and
  never evaluated. Their relation names are their own (``user_relations``), not ``relations``.
- User-user links (optional) are undirected pairs, e.g. friendships: stored once as ``(u, v)``
  with ``u < v``; context like the user-side facts, never positives.
- Modality ``m`` is a float32 matrix ``[n_items, d_m]`` plus a bool mask ``[n_items]``; rows where
  the mask is False are zeros and must never be used as features.

Every loader builds its MMKG through :func:`build_mmkg`, so id order is the same whatever the
source format: users and relations by first appearance, items in catalogue (link file) order,
non-item entities by first appearance in the triples (row by row, head before tail).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmkgrec.data.textio import sha256_of
from mmkgrec.errors import DataFormatError, MMKGRecError


@dataclass
class MMKG:
    """A multi-modal knowledge graph with user-item interactions. See the module docstring."""

    name: str
    users: np.ndarray  # [n_users] original ids, str
    items: np.ndarray  # [n_items] original ids, str
    entities: np.ndarray  # [n_entities] original ids, str; entities[:n_items] are the items
    relations: np.ndarray  # [n_relations] names, str (no inverses)
    interactions: pd.DataFrame  # columns user:int64, item:int64, value:float64[, timestamp:float64]
    threshold: float  # positive iff value >= threshold
    triples: np.ndarray  # [n_triples, 3] int64 (head entity, relation, tail entity), unique rows
    modalities: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [n_items, d] f32
    modality_masks: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [n_items] bool
    item_attrs: pd.DataFrame | None = None  # [n_items] rows of display text (name, tags, ...)
    provenance: list[dict] = field(default_factory=list)  # {"file", "sha256", "bytes", "role"}
    notes: list[str] = field(default_factory=list)  # what loading dropped or repaired, with counts
    meta: dict[str, int | float | str] = field(default_factory=dict)  # format-specific counts
    user_relations: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))  # names
    user_triples: np.ndarray = field(  # [n, 3] int64 (user, user relation, entity), unique rows
        default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    user_links: np.ndarray = field(  # [n, 2] int64 undirected (user, user), u < v, unique rows
        default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_entities(self) -> int:
        return len(self.entities)

    @property
    def n_relations(self) -> int:
        return len(self.relations)

    @property
    def has_timestamps(self) -> bool:
        return "timestamp" in self.interactions.columns

    # ---- views -------------------------------------------------------------------------------
    def positive_mask(self) -> np.ndarray:
        """[n_interactions] bool: rows counted as positives."""
        return self.interactions["value"].to_numpy() >= self.threshold

    def positives(self) -> pd.DataFrame:
        """Unique positive (user, item) pairs (first occurrence kept), with value / timestamp."""
        frame = self.interactions[self.positive_mask()]
        return frame.drop_duplicates(["user", "item"]).reset_index(drop=True)

    def modality_dims(self) -> dict[str, int]:
        return {name: int(matrix.shape[1]) for name, matrix in self.modalities.items()}

    # ---- modalities ----------------------------------------------------------------------------
    @staticmethod
    def undirected_links(pairs: np.ndarray) -> np.ndarray:
        """[n, 2] int64 ``(u, v)`` with ``u < v``, each pair once, from any [m, 2] pairs (either
        direction, repeats and self pairs allowed): the stored form of ``user_links``."""
        pairs = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)  # [m, 2]
        return np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0).reshape(-1, 2)

    @property
    def item_tag_links(self) -> np.ndarray:
        """[L, 2] int64 (item, tag id): the tag sets of ``item_attrs["tags"]`` ('; '-separated
        values, e.g. an artist's most given tags); tag ids are dense, ``0 .. n_tags - 1``.
        Empty without that column."""
        if self.item_attrs is None or "tags" not in self.item_attrs.columns:
            return np.zeros((0, 2), dtype=np.int64)
        tags = self.item_attrs["tags"].fillna("").astype(str).str.split(";").explode().str.strip()
        tags = tags[tags != ""]  # index: item row
        codes, _ = pd.factorize(tags.to_numpy())
        return np.stack([tags.index.to_numpy(dtype=np.int64), codes.astype(np.int64)], axis=1)

    def add_modality(self, name: str, matrix: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Attach modality ``name``: ``matrix`` [n_items, d] float, ``mask`` [n_items] bool.

        Rows whose mask is False are zeroed so that absent content cannot leak as noise.
        """
        matrix = np.asarray(matrix, dtype=np.float32)
        mask = np.ones(self.n_items, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if matrix.ndim != 2 or matrix.shape[0] != self.n_items:
            raise MMKGRecError(
                f"modality {name!r}: expected shape [{self.n_items}, d], got {list(matrix.shape)}"
            )
        if mask.shape != (self.n_items,):
            raise MMKGRecError(f"modality {name!r}: mask must have shape [{self.n_items}]")
        if not np.isfinite(matrix[mask]).all():
            raise MMKGRecError(f"modality {name!r}: NaN or inf in a present row")
        matrix = np.where(mask[:, None], matrix, 0.0).astype(np.float32)
        self.modalities[name] = matrix
        self.modality_masks[name] = mask

    # ---- checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every invariant of the module docstring; raise MMKGRecError on the first breach."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise MMKGRecError(f"dataset {self.name!r} is inconsistent: {what}")

        need(self.n_entities >= self.n_items, "fewer entities than items")
        for key, ids in (("users", self.users), ("items", self.items),
                         ("entities", self.entities), ("relations", self.relations)):
            need(len(pd.unique(ids)) == len(ids), f"duplicate original ids in {key}")
        inter = self.interactions
        need(list(inter.columns[:3]) == ["user", "item", "value"], "interaction columns")
        for key, size in (("user", self.n_users), ("item", self.n_items)):
            col = inter[key].to_numpy()
            need(col.dtype == np.int64 and (len(col) == 0 or (col.min() >= 0 and col.max() < size)),
                 f"interaction {key} ids out of range")
        need(bool(np.isfinite(inter["value"].to_numpy()).all()), "non-finite interaction value")
        t = self.triples
        need(t.ndim == 2 and t.shape[1] == 3 and t.dtype == np.int64, "triples must be int64 [n, 3]")
        if len(t):
            need(t[:, [0, 2]].min() >= 0 and t[:, [0, 2]].max() < self.n_entities,
                 "triple entity out of range")
            need(t[:, 1].min() >= 0 and t[:, 1].max() < self.n_relations,
                 "triple relation out of range")
            need(len(np.unique(t, axis=0)) == len(t), "duplicate triples")
        need(len(pd.unique(self.user_relations)) == len(self.user_relations),
             "duplicate user relation names")
        f = self.user_triples
        need(f.ndim == 2 and f.shape[1] == 3 and f.dtype == np.int64,
             "user_triples must be int64 [n, 3]")
        if len(f):
            need(f[:, 0].min() >= 0 and f[:, 0].max() < self.n_users, "user_triples user out of range")
            need(f[:, 1].min() >= 0 and f[:, 1].max() < len(self.user_relations),
                 "user_triples relation out of range")
            need(f[:, 2].min() >= 0 and f[:, 2].max() < self.n_entities,
                 "user_triples entity out of range")
            need(len(np.unique(f, axis=0)) == len(f), "duplicate user_triples")
        links = self.user_links
        need(links.ndim == 2 and links.shape[1] == 2 and links.dtype == np.int64,
             "user_links must be int64 [n, 2]")
        if len(links):
            need(links.min() >= 0 and links.max() < self.n_users, "user_links user out of range")
            need(bool((links[:, 0] < links[:, 1]).all()),
                 "user_links must be stored once per pair as (u, v) with u < v (no self links)")
            need(len(np.unique(links, axis=0)) == len(links), "duplicate user_links")
        need(set(self.modalities) == set(self.modality_masks), "modalities and masks differ")
        for name, matrix in self.modalities.items():
            mask = self.modality_masks[name]
            need(matrix.dtype == np.float32 and matrix.shape[0] == self.n_items,
                 f"modality {name!r} shape/dtype")
            need(mask.dtype == bool and mask.shape == (self.n_items,), f"mask {name!r} shape")
            need(bool(np.isfinite(matrix).all()), f"modality {name!r} has NaN/inf")
            need(not matrix[~mask].any(), f"modality {name!r} has values in absent rows")
        if self.item_attrs is not None:
            need(len(self.item_attrs) == self.n_items, "item_attrs must have one row per item")

    def fingerprint(self) -> str:
        """sha256 over ids, interactions, triples, modalities, user-side facts and user-user links
        (when there are any): identifies the exact data."""
        digest = hashlib.sha256()
        for ids in (self.users, self.items, self.entities, self.relations):
            digest.update("\x1f".join(map(str, ids)).encode())
            digest.update(b"\x1e")
        for column in self.interactions.columns:
            digest.update(column.encode())
            digest.update(np.ascontiguousarray(self.interactions[column].to_numpy()).tobytes())
        digest.update(str(self.threshold).encode())
        digest.update(np.ascontiguousarray(self.triples).tobytes())
        for name in sorted(self.modalities):
            digest.update(name.encode())
            digest.update(self.modalities[name].tobytes())
            digest.update(self.modality_masks[name].tobytes())
        if len(self.user_relations) or len(self.user_triples):  # absent: the digest as before
            digest.update(b"user-side\x1e" + "\x1f".join(map(str, self.user_relations)).encode())
            digest.update(np.ascontiguousarray(self.user_triples, dtype=np.int64).tobytes())
        if len(self.user_links):  # absent: the digest as before
            digest.update(b"user-links\x1e")
            digest.update(np.ascontiguousarray(self.user_links, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def equals(self, other: MMKG) -> bool:
        """Same ids, interactions, threshold, triples, modalities and item attributes."""
        if self.fingerprint() != other.fingerprint():
            return False
        if (self.item_attrs is None) != (other.item_attrs is None):
            return False
        if self.item_attrs is None or other.item_attrs is None:
            return self.item_attrs is None and other.item_attrs is None
        return self.item_attrs.reset_index(drop=True).equals(other.item_attrs.reset_index(drop=True))

    def summary(self) -> dict[str, int | float | str]:
        """Counts for ``mmkgrec data stats``."""
        positives = self.positives()
        relation_ids = np.unique(self.triples[:, 1]) if len(self.triples) else np.array([])
        linked = np.unique(self.triples[:, [0, 2]]) if len(self.triples) else np.array([])
        out: dict[str, int | float | str] = {
            "users": self.n_users,
            "items": self.n_items,
            "entities": self.n_entities,
            "relations": self.n_relations,
            "relations used by triples": len(relation_ids),
            "triples (unique)": len(self.triples),
            "items in the KG": int(np.isin(np.arange(self.n_items), linked).sum()),
            "interaction rows": len(self.interactions),
            "positive threshold": self.threshold,
            "positives (unique user-item)": len(positives),
            "users with a positive": int(positives["user"].nunique()),
            "items with a positive": int(positives["item"].nunique()),
            "density of positives": len(positives) / max(1, self.n_users * self.n_items),
        }
        if len(self.user_links):
            out["user-user links"] = len(self.user_links)
        out.update(self.meta)
        for name, matrix in self.modalities.items():
            mask = self.modality_masks[name]
            out[f"modality {name}"] = f"d={matrix.shape[1]}, present {int(mask.sum())}/{self.n_items}"
        return out


def file_provenance(path: str | Path, role: str) -> dict:
    """Provenance record of a source file: path, sha256, size and its role in the dataset."""
    path = Path(path)
    return {"file": str(path), "sha256": sha256_of(path), "bytes": path.stat().st_size, "role": role}


def _first_appearance(values: np.ndarray, seed: np.ndarray | None = None) -> np.ndarray:
    """Unique values in order of first appearance, after the ``seed`` values (already unique)."""
    uniques = pd.unique(pd.Series(values, dtype=object)) if len(values) else np.array([], object)
    if seed is None:
        return np.asarray(uniques, dtype=object).astype(str)
    rest = uniques[~pd.Series(uniques, dtype=object).isin(seed).to_numpy()]
    return np.concatenate([seed.astype(object), rest.astype(object)]).astype(str)


def _index_of(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Positions of ``values`` in ``ids`` (-1 when absent)."""
    # Not values.astype(str): a fixed-width copy of every row at the longest id's width.
    return pd.Index(ids).get_indexer(pd.Index(pd.Series(values, dtype=object).astype(str)))


def build_mmkg(
    name: str,
    interactions: pd.DataFrame,
    *,
    threshold: float,
    links: pd.DataFrame | None = None,
    triples: pd.DataFrame | None = None,
    keep_unlinked_items: bool = True,
    source: dict[str, str | Path] | None = None,
    item_attrs: pd.DataFrame | None = None,
) -> MMKG:
    """Build an MMKG from string-id tables. The one place where ids are assigned.

    Args:
        interactions: columns ``user``, ``item``, ``value`` (optional ``timestamp``, ``_line``).
        threshold: positives are rows with ``value >= threshold``.
        links: columns ``item``, ``entity`` (optional ``_line``): the item catalogue in order and
            each item's KG entity. Without it, items are those of ``interactions``, each its own
            entity (entity id = item id).
        triples: columns ``head``, ``relation``, ``tail`` (entity ids, relation names).
        keep_unlinked_items: items that appear in ``interactions`` but not in ``links``
            are appended (entity id ``item:<id>``); when False their rows are dropped, as the
            KGCN / MKGCN preprocessing does, and the count is recorded in ``notes``.
        source: file role -> path, for provenance and error messages.
        item_attrs: optional display attributes with an ``item`` column (original ids).
    """
    paths = {k: Path(v) for k, v in (source or {}).items()}
    notes: list[str] = []
    inter = interactions.copy()
    for col in ("user", "item"):
        inter[col] = inter[col].astype(str)

    # Items and their entities.
    if links is not None:
        link_items = links["item"].astype(str).to_numpy()
        link_entities = links["entity"].astype(str).to_numpy()
        _reject_duplicates(link_items, links, paths.get("links"), "item", "linked twice")
        _reject_duplicates(link_entities, links, paths.get("links"), "entity",
                           "is the entity of two items (an item IS an entity)")
        known = pd.Index(link_items)
        unlinked = ~inter["item"].isin(known)
        n_unlinked = int(unlinked.sum())
        if n_unlinked and not keep_unlinked_items:
            notes.append(
                f"dropped {n_unlinked} of {len(inter)} interaction rows whose item has no KG "
                f"entity (as the KGCN/MKGCN preprocessing does)"
            )
            inter = inter[~unlinked.to_numpy()]
        extra = _first_appearance(inter.loc[unlinked.to_numpy(), "item"].to_numpy()) if (
            n_unlinked and keep_unlinked_items) else np.array([], dtype=str)
        if len(extra):
            notes.append(f"{len(extra)} items have no KG link; each became its own entity")
        items = np.concatenate([link_items, extra]).astype(str)
        item_entities = np.concatenate([link_entities, np.char.add("item:", extra)]).astype(str)
    else:
        items = _first_appearance(inter["item"].to_numpy())
        item_entities = items.copy()

    # Users, interactions.
    users = _first_appearance(inter["user"].to_numpy())
    frame = pd.DataFrame({
        "user": _index_of(users, inter["user"].to_numpy()).astype(np.int64),
        "item": _index_of(items, inter["item"].to_numpy()).astype(np.int64),
        "value": inter["value"].to_numpy(dtype=np.float64),
    })
    if "timestamp" in inter.columns:
        frame["timestamp"] = inter["timestamp"].to_numpy(dtype=np.float64)
    n_dup = int(frame.duplicated(["user", "item"]).sum())
    if n_dup:
        notes.append(f"{n_dup} interaction rows repeat a (user, item) pair; positives count it once")

    # Entities, relations, triples.
    if triples is not None and len(triples):
        heads = triples["head"].astype(str).to_numpy()
        tails = triples["tail"].astype(str).to_numpy()
        entities = _first_appearance(np.column_stack([heads, tails]).ravel(), seed=item_entities)
        relations = _first_appearance(triples["relation"].astype(str).to_numpy())
        coded = np.column_stack([
            _index_of(entities, heads), _index_of(relations, triples["relation"].astype(str).to_numpy()),
            _index_of(entities, tails),
        ]).astype(np.int64)
        unique_rows = ~pd.DataFrame(coded).duplicated().to_numpy()
        if (~unique_rows).any():
            notes.append(f"removed {int((~unique_rows).sum())} duplicate triples of {len(coded)}")
        coded = coded[unique_rows]
    else:
        entities, relations = item_entities.astype(str), np.array([], dtype=str)
        coded = np.zeros((0, 3), dtype=np.int64)

    attrs = None
    if item_attrs is not None:
        attrs = item_attrs.copy()
        attrs["item"] = attrs["item"].astype(str)
        attrs = attrs.drop_duplicates("item").set_index("item").reindex(items)
        attrs = attrs.fillna("").reset_index(drop=True).astype(str)

    meta: dict[str, int | float | str] = {"interaction rows read": len(interactions),
            "triple rows read": 0 if triples is None else len(triples)}
    dataset = MMKG(
        name=name, meta=meta, users=users, items=items, entities=entities, relations=relations,
        interactions=frame.reset_index(drop=True), threshold=float(threshold), triples=coded,
        item_attrs=attrs, notes=notes,
        provenance=[file_provenance(path, role) for role, path in paths.items() if path.is_file()],
    )
    dataset.validate()
    return dataset


def _reject_duplicates(values: np.ndarray, table: pd.DataFrame, path: Path | None,
                       column: str, problem: str) -> None:
    duplicated = pd.Series(values).duplicated().to_numpy()
    if duplicated.any():
        i = int(np.argmax(duplicated))
        line = int(table["_line"].iloc[i]) if "_line" in table.columns else None
        raise DataFormatError(path or "<links>", f"{column} {str(values[i])!r} {problem}", line)
