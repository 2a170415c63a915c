"""Real content for Last.FM artists: text and sentiment modalities from HetRec 2011 tags.

lastfm-kgcn's 3,846 artists have the same ids as HetRec's, whose users tagged them (11,946 tag
values, 186,478 assignments). For each artist we build, without user identity:

- ``text``: MiniLM sentence embedding (or TF-IDF + SVD) of "name. tag1, tag2, ..." with the tags
  ordered by how many users gave them (at most :data:`MAX_TAGS`);
- ``sentiment``: VADER over the artist's tags, each counted as often as users gave it, summarised
  by :func:`mmkgrec.features.sentiment.sentiment_scores` (compound mean / std / min / max, mean
  pos / neg / neu, shares of positive and negative tags).

Artists nobody tagged get mask False in both (about a fifth of them).

Caveat: tags come from the same users whose plays are predicted. ``scope="all"`` uses every tag
assignment (a tag given on a held-out play then shapes the artist's document); ``scope="train"``
(:func:`scoped_content`) keeps only assignments whose (user, artist) pair is a TRAIN positive of
the split, so no valid/test interaction leaves a trace; ``scope="no-eval"`` drops only the
assignments on valid/test positives. Results report them side by side.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from mmkgrec.data.dataset import MMKG, file_provenance
from mmkgrec.data.formats.hetrec import _read
from mmkgrec.errors import MMKGRecError

MAX_TAGS = 30  # tags in an artist's document, most given first (MiniLM reads ~256 tokens)


def tag_assignments(hetrec_dir: str | Path) -> pd.DataFrame:
    """HetRec tag assignments with known tags: ``user``, ``item`` (artist id), ``tag`` (value)."""
    tables = _read(Path(hetrec_dir))
    tagged = tables["tagged"].merge(tables["tags"][["tagID", "tagValue"]], on="tagID", how="inner")
    return pd.DataFrame({"user": tagged["userID"].astype(str), "item": tagged["artistID"].astype(str),
                         "tag": tagged["tagValue"].astype(str).str.strip()})


def content_modalities(dataset: MMKG, assignments: pd.DataFrame, names: pd.Series | None = None,
                       text_backend: str = "minilm") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"text": (matrix, mask), "sentiment": (matrix, mask)}`` for ``dataset``'s items.

    Args:
        dataset: items are artist ids.
        assignments: ``user``, ``item``, ``tag`` rows to use (already scoped).
        names: [n_items] artist names ('' when unknown); default ``dataset.item_attrs["name"]``.
        text_backend: ``minilm`` (sentence-transformers, offline) or ``tfidf`` (no weights); see
            :func:`mmkgrec.features.text.embed_texts`.
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
    text = cached_embeddings(documents, text_backend, fit_rows=present)
    text[~present] = 0.0
    return {"text": (text, present),
            "sentiment": (_sentiment(counts, dataset.n_items), present)}


def _sentiment(counts: pd.DataFrame, n_items: int) -> np.ndarray:
    """[n_items, 9] VADER summary over each item's tags, each tag repeated as often as given."""
    from mmkgrec.features.sentiment import sentiment_scores

    repeated = counts.loc[counts.index.repeat(counts["n"].to_numpy())]
    per_item = repeated.groupby("item")["tag"].agg(list)
    segments = [[] for _ in range(n_items)]
    for item, tags in per_item.items():  # one list per tagged artist (3,083), not per assignment
        segments[item] = tags
    return sentiment_scores(segments)


def cached_embeddings(documents: list[str], backend: str, fit_rows: np.ndarray) -> np.ndarray:
    """Text embeddings of ``documents``, cached on disk by content (.npy, no pickle)."""
    from mmkgrec.data.registry import cache_dir
    from mmkgrec.features.text import embed_texts

    digest = hashlib.sha256(backend.encode())
    for document in documents:
        digest.update(document.encode() + b"\0")
    digest.update(np.packbits(fit_rows).tobytes())
    path = cache_dir() / "embeddings" / f"{backend}-{digest.hexdigest()[:24]}.npy"
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
    dataset.meta["content scope"] = "all"
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
    """The same modalities rebuilt from a leak-controlled subset of the tag assignments.

    ``scope="train"``: only assignments whose (user, artist) pair is a TRAIN positive of the
    split. ``scope="no-eval"``: every assignment except those on a valid or test positive (a
    held-out play never shapes the artist's document, but tags from users who tagged without
    playing, or whose play is in train, stay).

    Args:
        dataset: a dataset made by :func:`attach_lastfm_content` (it names the HetRec folder).
        data_split: the split whose positives decide what is kept.
    Returns:
        a copy of ``dataset`` with rebuilt ``text`` / ``sentiment`` (ids, interactions and KG
        are shared, not copied).
    """
    if "content hetrec dir" not in dataset.meta:
        raise MMKGRecError(f"dataset {dataset.name!r} has no tag content to scope")
    if scope not in ("train", "no-eval"):
        raise MMKGRecError(f"unknown content scope {scope!r}; expected train or no-eval")
    assignments = tag_assignments(dataset.meta["content hetrec dir"])
    assignments = assignments[assignments["item"].isin(dataset.items)]
    parts = ["train"] if scope == "train" else ["valid", "test"]
    pairs = pd.concat([data_split.positives(part) for part in parts], ignore_index=True)
    keys = pd.Index(dataset.users[pairs["user"].to_numpy()] + "\t"
                    + dataset.items[pairs["item"].to_numpy()])
    listed = keys.get_indexer(assignments["user"] + "\t" + assignments["item"]) >= 0
    kept = assignments[listed if scope == "train" else ~listed]
    scoped = replace(dataset, modalities=dict(dataset.modalities), notes=list(dataset.notes),
                     modality_masks=dict(dataset.modality_masks), meta=dict(dataset.meta))
    _set_modalities(scoped, content_modalities(
        scoped, kept, text_backend=str(dataset.meta.get("content text backend", "minilm"))))
    scoped.meta["content scope"] = scope
    scoped.notes.append(
        f"content scope {scope}: {len(kept)}/{len(assignments)} tag assignments kept; "
        f"{int(scoped.modality_masks['text'].sum())}/{scoped.n_items} artists keep tags")
    return scoped


def _set_modalities(dataset: MMKG, built: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for name, (matrix, mask) in built.items():
        dataset.modalities.pop(name, None)
        dataset.modality_masks.pop(name, None)
        dataset.add_modality(name, matrix, mask)
