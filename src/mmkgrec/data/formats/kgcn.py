"""The KGCN paper's raw format (hwwang55/KGCN, data/music): Last.FM plays with the Satori KG.

Files: ``user_artists.dat`` (userID, artistID, weight; header), ``item_index2entity_id.txt``
(artistID, entity id; no header), ``kg.txt`` (head, relation, tail; no header). As in KGCN's
preprocessing, plays of artists without an entity are dropped (and counted in ``notes``) and
every remaining play is a positive (threshold 0).

Strictness (docs/data.md): entity ids (``item_index2entity_id.txt``'s second column, ``kg.txt``'s
head and tail) must be non-negative integers; play counts must be >= 0; a relation column that
holds entity ids (swapped columns) and a link file none of whose entities is in the KG are errors.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmkgrec.data.dataset import MMKG, build_mmkg
from mmkgrec.data.formats.checks import (
    check_links_reach_kg,
    check_relation_column,
    require_entity_ids,
)
from mmkgrec.data.textio import Column, read_table

FILES = ("user_artists.dat", "item_index2entity_id.txt", "kg.txt")
THRESHOLD = 0.0


def read_kg(path: Path, fmt: str = "KGCN") -> pd.DataFrame:
    """A ``head relation tail`` triple file (header optional) with integer entity ids."""
    triples = read_table(path, [Column("head"), Column("relation"), Column("tail")])
    require_entity_ids(path, triples, ["head", "tail"], fmt)
    return triples


def check_kg(kg_path: Path, triples: pd.DataFrame, links_path: Path, entities: pd.Series) -> None:
    """The KG checks both raw formats share: swapped columns, links that miss the KG."""
    linked = entities.to_numpy(dtype=object)
    check_relation_column(kg_path, triples, linked)
    check_links_reach_kg(kg_path, links_path, linked, triples)


def read_kgcn(directory: str | Path, name: str = "lastfm-kgcn", threshold: float = THRESHOLD) -> MMKG:
    """Load a directory in the KGCN raw format."""
    directory = Path(directory)
    ratings_path, links_path, kg_path = (directory / f for f in FILES)
    ratings = read_table(ratings_path, [Column("userID"), Column("artistID"),
                                        Column("weight", "float", minimum=0)])
    links = read_table(links_path, [Column("item"), Column("entity")], header="none")
    require_entity_ids(links_path, links, ["entity"], "KGCN")
    triples = read_kg(kg_path)
    check_kg(kg_path, triples, links_path, links["entity"])
    interactions = ratings.rename(columns={"userID": "user", "artistID": "item", "weight": "value"})
    return build_mmkg(
        name, interactions, threshold=threshold, links=links, triples=triples,
        keep_unlinked_items=False,
        source={"interactions": ratings_path, "links": links_path, "kg": kg_path},
    )
