"""The KGCN paper's raw format (hwwang55/KGCN, data/music): Last.FM plays with the Satori KG.

Files: ``user_artists.dat`` (userID, artistID, weight; header), ``item_index2entity_id.txt``
(artistID, entity id; no header), ``kg.txt`` (head, relation, tail; no header). As in KGCN's
preprocessing, plays of artists without an entity are dropped (and counted in ``notes``) and
every remaining play is a positive (threshold 0).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmkgrec.data.dataset import MMKG, build_mmkg
from mmkgrec.data.textio import Column, read_table

FILES = ("user_artists.dat", "item_index2entity_id.txt", "kg.txt")
THRESHOLD = 0.0


def read_kg(path: Path) -> pd.DataFrame:
    """A ``head relation tail`` triple file (header optional)."""
    return read_table(path, [Column("head"), Column("relation"), Column("tail")])


def read_kgcn(directory: str | Path, name: str = "lastfm-kgcn", threshold: float = THRESHOLD) -> MMKG:
    """Load a directory in the KGCN raw format."""
    directory = Path(directory)
    ratings_path, links_path, kg_path = (directory / f for f in FILES)
    ratings = read_table(ratings_path, [Column("userID"), Column("artistID"), Column("weight", "float")])
    links = read_table(links_path, [Column("item"), Column("entity")], header="none")
    triples = read_kg(kg_path)
    interactions = ratings.rename(columns={"userID": "user", "artistID": "item", "weight": "value"})
    return build_mmkg(
        name, interactions, threshold=threshold, links=links, triples=triples,
        keep_unlinked_items=False,
        source={"interactions": ratings_path, "links": links_path, "kg": kg_path},
    )
