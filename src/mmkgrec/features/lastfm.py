"""Real content for Last.FM artists: text and sentiment modalities from HetRec 2011 tags.

lastfm-kgcn's 3,846 artists have the same ids as HetRec's, whose users tagged them (11,946 tag
values, 186,478 assignments). For each artist we build, without user identity:

- ``text``: MiniLM sentence embedding (or TF-IDF + SVD) of "name. tag1, tag2, ..." with the tags
  ordered by how many users gave them (at most :data:`MAX_TAGS`);
- ``sentiment``: VADER over the artist's tags, each counted as often as users gave it, summarised
  by :func:`mmkgrec.features.sentiment.sentiment_scores` (compound mean / std / min / max, mean
  pos / neg / neu, shares of positive and negative tags).

Artists nobody tagged get mask False in both (about a fifth of them).

The same assignments, with user identity, give user-side KG facts (``MMKG.user_triples``):
``(u, tagged, a)`` for each user who tagged artist ``a`` (:func:`tagged_facts`). Many are pairs
outside the user's plays (HetRec lists a user's 50 most played artists; a user tags others too).

Tags come from the same users whose plays are predicted, so content is built per split
(:func:`scoped_content`). ``scope="train"`` (the default of every run and benchmark) keeps only
the assignments whose (user, artist) pair is a TRAIN positive of the split; ``scope="no-eval"``
keeps every assignment except those on a valid / test positive. Under both, no valid or test
interaction leaves a trace, and every fitted transform (TF-IDF + SVD, PCA) is fitted on TRAIN
items only (items with a train positive). ``scope="all"`` (:func:`attach_lastfm_content`, what
``data.load`` returns) uses every assignment, fitted on every tagged item: an upper bound that
sees held-out plays, reported only as a labelled row.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from mmkgrec import paths
from mmkgrec.data.dataset import MMKG, file_provenance
from mmkgrec.data.formats.hetrec import _read, attach_friendships, attach_hetrec_text
from mmkgrec.data.formats.kgcn import read_kgcn
from mmkgrec.data.registry import DatasetSpec
from mmkgrec.errors import MMKGRecError

MAX_TAGS = 30  # tags in an artist's document, most given first (MiniLM reads ~256 tokens)


USER_RELATION = "tagged"  # the user-side relation: the user tagged the artist


def tagged_facts(dataset: MMKG, assignments: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(user_relations ``["tagged"]``, user_triples [n, 3] int64): one ``(u, 0, a)`` row per
    distinct (user, artist) pair of ``assignments`` whose user and artist are in ``dataset``."""
    users = pd.Index(dataset.users).get_indexer(assignments["user"])  # [A]
    items = pd.Index(dataset.items).get_indexer(assignments["item"])  # [A]
    known = (users >= 0) & (items >= 0)
    pairs = np.unique(np.stack([users[known], items[known]], axis=1).astype(np.int64), axis=0)
    facts = np.column_stack([pairs[:, 0], np.zeros(len(pairs), dtype=np.int64), pairs[:, 1]])
    return np.array([USER_RELATION]), facts.reshape(-1, 3)  # [n, 3]


def tag_assignments(hetrec_dir: str | Path) -> pd.DataFrame:
    """HetRec tag assignments with known tags: ``user``, ``item`` (artist id), ``tag`` (value)."""
    tables = _read(Path(hetrec_dir))
    tagged = tables["tagged"].merge(tables["tags"][["tagID", "tagValue"]], on="tagID", how="inner")
    return pd.DataFrame({"user": tagged["userID"].astype(str), "item": tagged["artistID"].astype(str),
                         "tag": tagged["tagValue"].astype(str).str.strip()})


def content_modalities(dataset: MMKG, assignments: pd.DataFrame, names: pd.Series | None = None,
                       text_backend: str = "minilm", fit_items: np.ndarray | None = None
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"text": (matrix, mask), "sentiment": (matrix, mask)}`` for ``dataset``'s items.

    Args:
        dataset: items are artist ids.
        assignments: ``user``, ``item``, ``tag`` rows to use (already scoped).
        names: [n_items] artist names ('' when unknown); default ``dataset.item_attrs["name"]``.
        text_backend: ``minilm`` (sentence-transformers, offline) or ``tfidf`` (no weights); see
            :func:`mmkgrec.features.text.embed_texts`.
        fit_items: bool [n_items]: the items a fitted transform (TF-IDF + SVD) may learn from
            (pass the split's train items); None: every tagged item (the ``all`` upper bound).
    """
    if names is None:
        names = (dataset.item_attrs["name"] if dataset.item_attrs is not None
                 and "name" in dataset.item_attrs.columns else pd.Series([""] * dataset.n_items))
    index = pd.Index(dataset.items).get_indexer(assignments["item"])
    rows = assignments[index >= 0].assign(item=index[index >= 0])
    counts = rows.groupby(["item", "tag"]).size().rename("n").reset_index()  # distinct (item, tag)
    counts = counts.sort_values(["item", "n", "tag"], ascending=[True, False, True])
    present = np.zeros(dataset.n_items, dtype=bool)
    present[counts["item"].to_numpy()] = True

    top = counts.groupby("item").head(MAX_TAGS).groupby("item")["tag"].agg(", ".join)
    tag_text = pd.Series("", index=range(dataset.n_items)).add(top, fill_value="").fillna("")
    documents = [f"{name}. {tags}" if tags else "" for name, tags in
                 zip(np.asarray(names, dtype=str), tag_text.to_numpy())]
    fit_rows = present if fit_items is None else present & np.asarray(fit_items, dtype=bool)
    if not fit_rows.any():
        fit_rows = present  # nothing tagged among the fit items: fall back (noted by the caller)
    text = cached_embeddings(documents, text_backend, fit_rows=fit_rows)
    text[~present] = 0.0
    return {"text": (text, present),
            "sentiment": (_sentiment(counts, dataset.n_items), present)}


def _sentiment(counts: pd.DataFrame, n_items: int) -> np.ndarray:
    """[n_items, 9] VADER summary over each item's tags, each tag repeated as often as given."""
    from mmkgrec.features.sentiment import sentiment_scores

    repeated = counts.loc[counts.index.repeat(counts["n"].to_numpy())]
    per_item = repeated.groupby("item")["tag"].agg(list)
    segments: list[list[str]] = [[] for _ in range(n_items)]
    for item, tags in per_item.items():  # one list per tagged artist (3,083), not per assignment
        segments[item] = tags
    return sentiment_scores(segments)


def cached_embeddings(documents: list[str], backend: str, fit_rows: np.ndarray) -> np.ndarray:
    """Text embeddings of ``documents``, cached on disk by content (.npy, no pickle)."""
    from mmkgrec.features.text import embed_texts

    digest = hashlib.sha256(backend.encode())
    for document in documents:
        digest.update(document.encode() + b"\0")
    digest.update(np.packbits(fit_rows).tobytes())
    path = paths.cache_dir("data") / "embeddings" / f"{backend}-{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    matrix = np.asarray(embed_texts(documents, backend=backend, fit_rows=fit_rows, seed=0),
                        dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, matrix, allow_pickle=False)
    tmp.replace(path)
    return matrix


def attach_lastfm_content(dataset: MMKG, hetrec_dir: str | Path,
                          text_backend: str = "minilm") -> MMKG:
    """Add ``text`` and ``sentiment`` from every HetRec tag assignment (``scope="all"``)."""
    hetrec_dir = Path(hetrec_dir)
    assignments = tag_assignments(hetrec_dir)
    assignments = assignments[assignments["item"].isin(dataset.items)]
    _set_modalities(dataset, content_modalities(dataset, assignments, text_backend=text_backend))
    dataset.user_relations, dataset.user_triples = tagged_facts(dataset, assignments)
    dataset.meta["content scope"] = "all"  # the labelled upper bound: sees held-out plays
    dataset.meta["content hetrec dir"] = str(hetrec_dir)
    dataset.meta["content text backend"] = text_backend
    tagged = int(dataset.modality_masks["text"].sum())
    dataset.notes.append(
        f"content: text ({text_backend}) and VADER sentiment from HetRec tags for {tagged}/"
        f"{dataset.n_items} artists (all {len(assignments)} assignments on them, user identity "
        f"dropped); "
        f"{dataset.n_items - tagged} untagged artists are masked")
    for name in ("tags.dat", "user_taggedartists.dat"):
        dataset.provenance.append(file_provenance(hetrec_dir / name, f"content {name}"))
    return dataset


def scoped_content(dataset: MMKG, data_split, scope: str) -> MMKG:
    """The same content rebuilt from a leak-controlled subset of the tag assignments.

    ``scope="train"``: only assignments whose (user, artist) pair is a TRAIN positive of the
    split. ``scope="no-eval"``: every assignment except those on a valid or test positive (a
    held-out play never shapes the artist's content, but tags from users who tagged without
    playing, or whose play is in train, stay). Rebuilt: the ``text`` / ``sentiment`` modalities
    (made by :func:`attach_lastfm_content`; TF-IDF fitted on the split's train items only) and
    the ``tags`` display / entity attribute (made by ``attach_hetrec_text``) and the user-side
    ``tagged`` facts.

    Args:
        dataset: a dataset whose meta names its HetRec folder (``content hetrec dir`` or
            ``hetrec dir``).
        data_split: the split whose positives decide what is kept.
    Returns:
        a copy of ``dataset`` (ids, interactions and KG are shared, not copied) whose meta
        records the scope and the split's fingerprint.
    """
    folder = dataset.meta.get("content hetrec dir", dataset.meta.get("hetrec dir"))
    if folder is None:
        raise MMKGRecError(f"dataset {dataset.name!r} has no tag content to scope")
    if scope not in ("train", "no-eval"):
        raise MMKGRecError(f"unknown content scope {scope!r}; expected train or no-eval")
    assignments = tag_assignments(str(folder))
    assignments = assignments[assignments["item"].isin(dataset.items)]
    parts = ["train"] if scope == "train" else ["valid", "test"]
    pairs = pd.concat([data_split.positives(part) for part in parts], ignore_index=True)
    keys = pd.Index(dataset.users[pairs["user"].to_numpy()] + "\t"
                    + dataset.items[pairs["item"].to_numpy()])
    listed = keys.get_indexer(assignments["user"] + "\t" + assignments["item"]) >= 0
    kept = assignments[listed if scope == "train" else ~listed]
    scoped = replace(dataset, modalities=dict(dataset.modalities), notes=list(dataset.notes),
                     modality_masks=dict(dataset.modality_masks), meta=dict(dataset.meta),
                     item_attrs=None if dataset.item_attrs is None else dataset.item_attrs.copy())
    if scoped.item_attrs is not None and "tags" in scoped.item_attrs.columns:
        scoped.item_attrs["tags"] = tag_attribute(scoped, kept)
    scoped.user_relations, scoped.user_triples = tagged_facts(scoped, kept)
    note = (f"content scope {scope}: {len(kept)}/{len(assignments)} tag assignments kept; "
            f"{len(scoped.user_triples)} (user, tagged, artist) facts")
    if "content hetrec dir" in dataset.meta:
        train_items = data_split.item_popularity() > 0  # [n_items] fitted transforms learn here
        _set_modalities(scoped, content_modalities(
            scoped, kept, text_backend=str(dataset.meta.get("content text backend", "minilm")),
            fit_items=train_items))
        note += (f"; {int(scoped.modality_masks['text'].sum())}/{scoped.n_items} artists keep "
                 f"tags; TF-IDF / SVD fitted on train items only")
    scoped.meta["content scope"] = scope
    scoped.meta["content split"] = data_split.fingerprint(with_candidates=False)
    scoped.notes.append(note)
    return scoped


def tag_attribute(dataset: MMKG, assignments: pd.DataFrame) -> pd.Series:
    """[n_items] str: each item's most given tags (at most ``TOP_TAGS``), ``"; "``-joined, from
    ``assignments`` (``item``, ``tag``) only; ``""`` for an item none of them tags."""
    from mmkgrec.data.formats.hetrec import TOP_TAGS

    index = pd.Index(dataset.items).get_indexer(assignments["item"])
    rows = assignments[index >= 0].assign(item=index[index >= 0])
    counts = rows.groupby(["item", "tag"]).size().rename("n").reset_index()
    counts = counts.sort_values(["item", "n", "tag"], ascending=[True, False, True])
    top = counts.groupby("item").head(TOP_TAGS).groupby("item")["tag"].agg("; ".join)
    return pd.Series(top.reindex(range(dataset.n_items)).fillna("").to_numpy(dtype=str))


def _set_modalities(dataset: MMKG, built: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for name, (matrix, mask) in built.items():
        dataset.modalities.pop(name, None)
        dataset.modality_masks.pop(name, None)
        dataset.add_modality(name, matrix, mask)


def _build_content_dataset(folders: list[Path]) -> MMKG:
    """lastfm-kgcn joined with HetRec names / tags / friendships, then the text and sentiment
    modalities."""
    dataset = attach_hetrec_text(read_kgcn(folders[0]), folders[1])
    dataset = attach_lastfm_content(attach_friendships(dataset, folders[1]), folders[1])
    dataset.name = "lastfm-kgcn-content"
    return dataset


# registered in data.registry through the "mmkgrec.datasets" entry point (pyproject.toml)
CONTENT_DATASET = DatasetSpec(
    "lastfm-kgcn-content", ("lastfm-kgcn", "hetrec-lastfm-2k"), _build_content_dataset,
    "lastfm-kgcn + text (MiniLM) and sentiment (VADER) modalities from HetRec tags")
