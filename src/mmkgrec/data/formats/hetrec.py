"""HetRec 2011 Last.FM 2K (Cantador et al., RecSys 2011), and its join onto lastfm-kgcn.

Files: ``artists.dat`` (id, name, url, pictureURL; UTF-8), ``tags.dat`` (tagID, tagValue;
latin-1), ``user_artists.dat`` (userID, artistID, weight), ``user_taggedartists.dat`` (userID,
artistID, tagID, day, month, year), ``user_friends.dat`` (userID, friendID). All have a header
and CRLF line ends.

As an MMKG it is entity-based: each tag becomes an entity ``tag:<tagID>`` linked to the artists
users tagged with it (relation ``has_tag``), and every artist carries its name and its most used
tags as text attributes. Artist ids are the same as lastfm-kgcn's, so :func:`attach_hetrec_text`
gives the KGCN artists their names and tag texts. User ids are HetRec's too, so
:func:`attach_friendships` gives a Last.FM dataset HetRec's friendships as ``user_links``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmkgrec.data.dataset import MMKG, build_mmkg, file_provenance
from mmkgrec.data.textio import MAX_TEXT_CHARS, Column, read_table

FILES = ("artists.dat", "tags.dat", "user_artists.dat", "user_taggedartists.dat", "user_friends.dat")
TOP_TAGS = 10  # tags kept in an artist's text attribute, most used first


def _read(directory: Path) -> dict[str, pd.DataFrame]:
    d = directory
    text = MAX_TEXT_CHARS  # names, URLs and tag values are free text; ids keep the id cap
    return {
        "artists": read_table(d / "artists.dat", [
            Column("id"), Column("name", max_chars=text),
            Column("url", allow_empty=True, max_chars=text),
            Column("pictureURL", allow_empty=True, max_chars=text)], header="required"),
        "tags": read_table(d / "tags.dat", [Column("tagID"), Column("tagValue", max_chars=text)],
                           header="required"),
        "plays": read_table(d / "user_artists.dat", [Column("userID"), Column("artistID"),
                                                     Column("weight", "float", minimum=0)],
                            header="required"),
        "tagged": read_table(d / "user_taggedartists.dat",
                             [Column("userID"), Column("artistID"), Column("tagID"), Column("day", "int"),
                              Column("month", "int"), Column("year", "int")], header="required"),
        "friends": _read_friends(d),
    }


def _read_friends(directory: Path) -> pd.DataFrame:
    return read_table(directory / "user_friends.dat", [Column("userID"), Column("friendID")],
                      header="required")


def artist_text(artists: pd.DataFrame, tags: pd.DataFrame, tagged: pd.DataFrame) -> pd.DataFrame:
    """Per artist: ``item``, ``name``, ``tags`` (its TOP_TAGS most used tag values, '; '-joined)."""
    counts = tagged.groupby(["artistID", "tagID"]).size().rename("n").reset_index()
    counts = counts.merge(tags[["tagID", "tagValue"]], on="tagID", how="left")
    counts = counts.sort_values(["artistID", "n", "tagValue"], ascending=[True, False, True])
    top = counts.groupby("artistID").head(TOP_TAGS).groupby("artistID")["tagValue"].agg("; ".join)
    text = artists[["id", "name"]].rename(columns={"id": "item"})
    text["tags"] = text["item"].map(top).fillna("")
    return text


def read_hetrec(directory: str | Path, name: str = "hetrec-lastfm-2k") -> MMKG:
    """Load HetRec Last.FM 2K as an entity-based MMKG (artists, tags as entities)."""
    directory = Path(directory)
    t = _read(directory)
    artists, tags, plays, tagged = t["artists"], t["tags"], t["plays"], t["tagged"]
    known_tag = tagged["tagID"].isin(tags["tagID"])
    known_artist = tagged["artistID"].isin(artists["id"])
    kept = tagged[(known_tag & known_artist).to_numpy()]
    pairs = kept.drop_duplicates(["artistID", "tagID"])
    triples = pd.DataFrame({"head": pairs["artistID"], "relation": "has_tag",
                            "tail": "tag:" + pairs["tagID"].astype(str)})
    links = pd.DataFrame({"item": artists["id"], "entity": artists["id"], "_line": artists["_line"]})
    interactions = plays.rename(columns={"userID": "user", "artistID": "item", "weight": "value"})
    dataset = build_mmkg(
        name, interactions, threshold=0.0, links=links, triples=triples, keep_unlinked_items=True,
        source={f.split(".")[0]: directory / f for f in FILES},
        item_attrs=artist_text(artists, tags, kept),
    )
    dataset.notes.append(
        f"{int((~known_artist).sum())} of {len(tagged)} tag assignments name an artist missing from "
        f"artists.dat and {int((~known_tag).sum())} name an unknown tag; they are not in the KG")
    attach_friendships(dataset, directory, t["friends"])
    dataset.meta.update({
        "hetrec tags": len(tags), "hetrec tag-assignment rows": len(tagged),
        "hetrec user-artist rows": len(plays),
    })
    return dataset


def attach_hetrec_text(dataset: MMKG, directory: str | Path) -> MMKG:
    """Give a Last.FM dataset (artist ids as item ids) HetRec's artist names and tag texts."""
    directory = Path(directory)
    t = _read(directory)
    text = artist_text(t["artists"], t["tags"], t["tagged"]).set_index("item")
    text = text.reindex(dataset.items).fillna("")
    text.index.name = None
    dataset.item_attrs = text.reset_index(drop=True).astype(str)
    named = int((dataset.item_attrs["name"] != "").sum())
    tagged = int((dataset.item_attrs["tags"] != "").sum())
    dataset.meta.update({"items with a HetRec name": named, "items with HetRec tags": tagged,
                         "hetrec dir": str(directory)})  # the tags attribute is user content
    dataset.notes.append(
        f"HetRec text joined by artist id: {named}/{dataset.n_items} items named, "
        f"{tagged}/{dataset.n_items} with tags")
    for f in ("artists.dat", "tags.dat", "user_taggedartists.dat"):
        dataset.provenance.append(file_provenance(directory / f, f"hetrec text {f}"))
    return dataset


def attach_friendships(dataset: MMKG, directory: str | Path,
                       friends: pd.DataFrame | None = None) -> MMKG:
    """Set ``dataset.user_links`` from HetRec's ``user_friends.dat`` (users matched by id).

    The file lists each friendship in both directions; a link is kept once. Rows naming a user
    the dataset does not have, and self links, are dropped and counted in ``notes``.
    """
    directory = Path(directory)
    if friends is None:
        friends = _read_friends(directory)
    users = pd.Index(dataset.users)
    ends = np.stack([users.get_indexer(friends["userID"]),
                     users.get_indexer(friends["friendID"])], axis=1)  # [rows, 2], -1: unknown
    known = (ends >= 0).all(axis=1)
    dataset.user_links = MMKG.undirected_links(ends[known])  # [links, 2]
    dataset.meta["hetrec friendship rows"] = len(friends)
    dataset.notes.append(
        f"user_friends.dat: {len(friends)} rows -> {len(dataset.user_links)} user-user links; "
        f"{int((~known).sum())} rows name a user outside the dataset")
    path = directory / "user_friends.dat"
    if all(record["file"] != str(path) for record in dataset.provenance):  # read_hetrec has it
        dataset.provenance.append(file_provenance(path, "hetrec friendships user_friends.dat"))
    return dataset
