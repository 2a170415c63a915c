"""Plausibility checks the KG readers share: wrong-but-loadable files become errors.

Each check raises :class:`~mmkgrec.errors.DataFormatError` naming the file (and the line when one
row is to blame). The rules, and why they are safe on the real files, are in docs/data.md
("Field caps and strictness").
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mmkgrec.data.textio import preview
from mmkgrec.errors import DataFormatError

ENTITY_ID = r"0|[1-9][0-9]*"  # a KGCN / MKGCN entity id: a non-negative integer, canonical form


def require_entity_ids(path: Path, table: pd.DataFrame, columns: list[str], fmt: str) -> None:
    """Every value of ``columns`` is a non-negative integer written without sign or leading zeros.

    The KGCN and MKGCN releases number their entities 0, 1, 2, ...; ``-3``, ``1.0``, ``007`` or a
    name would become a new entity joined to nothing (the string ``"007"`` is not ``"7"``), and a
    name where an id belongs is the mark of swapped columns.
    """
    for column in columns:
        values = pd.Series(table[column].to_numpy(dtype=object), dtype=object)
        bad = ~values.str.fullmatch(ENTITY_ID).to_numpy(dtype=bool)
        if bad.any():
            i = int(np.argmax(bad))
            value = str(values.iloc[i])
            hint = (" (a name where an entity id belongs: are the columns swapped?)"
                    if any(ch.isalpha() for ch in value) else "")
            raise DataFormatError(
                path, f"{column} {preview(value)} is not a {fmt} entity id: expected a "
                      f"non-negative integer without sign or leading zeros{hint}",
                int(table["_line"].iloc[i]) if "_line" in table.columns else None)


def check_relation_column(path: Path, triples: pd.DataFrame,
                          linked_entities: np.ndarray | None = None) -> None:
    """Refuse a relation column that holds entity ids (the columns of the KG file are swapped).

    Rule: more than half of the distinct relation names are also entity ids (a head, a tail or an
    item's linked entity) AND there are more distinct relations than sqrt(#triples). Real KGs have
    a few relations per many triples (lastfm-kgcn 60 per 15,518; music-d 1 per 36,264; KB4Rec /
    KGAT-style KGs tens per millions) -- also when relations and entities share integer ids --
    while a swapped column puts an entity column (thousands of distinct values) in their place.
    """
    n = len(triples)
    if n == 0:
        return
    relations = pd.unique(triples["relation"].to_numpy(dtype=object))
    if len(relations) <= math.sqrt(n):
        return
    known = pd.Index(pd.unique(np.concatenate([
        triples["head"].to_numpy(dtype=object), triples["tail"].to_numpy(dtype=object),
        np.asarray([] if linked_entities is None else linked_entities, dtype=object)])))
    shared = pd.Index(relations).isin(known)
    if shared.sum() * 2 > len(relations):
        example = str(relations[int(np.argmax(shared))])
        raise DataFormatError(
            path, f"the relation column looks like entity ids: {int(shared.sum()):,} of its "
                  f"{len(relations):,} distinct relations (e.g. {preview(example)}) are also entity "
                  f"ids, for {n:,} triples; are the columns swapped? (expected head, relation, tail)")


def check_links_reach_kg(kg_path: Path, link_path: Path, linked_entities: np.ndarray,
                         triples: pd.DataFrame | None) -> None:
    """With triples and links, at least one linked entity must occur in a triple.

    Otherwise every item is cut off from the KG (a link file for another KG, or a shifted column).
    """
    if triples is None or len(triples) == 0 or len(linked_entities) == 0:
        return
    ends = pd.Index(pd.unique(np.concatenate([triples["head"].to_numpy(dtype=object),
                                               triples["tail"].to_numpy(dtype=object)])))
    if not pd.Index(pd.unique(np.asarray(linked_entities, dtype=object))).isin(ends).any():
        raise DataFormatError(
            link_path, f"none of its {len(linked_entities):,} linked entities occurs in the "
                       f"{len(triples):,} triples of {kg_path.name}: every item would be cut off "
                       f"from the KG (files of different datasets?)")
