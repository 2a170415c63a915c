"""Attribute-based and entity-based multi-modal KGs from the same item content.

The MKGCN paper describes both constructions:

- ``attribute``: modality features stay attributes of the item entity (``MMKG.modalities``);
  MKGCN's multi-modal aggregator consumes them, KG-only models ignore them.
- ``entity``: content becomes entities of their own, linked to items by new relations, so a
  KGCN-style model without a multi-modal aggregator still propagates over it:

  ========================  ==========================  =======================================
  content                   entity                      relation
  ========================  ==========================  =======================================
  ``item_attrs["tags"]``    ``tag:<value>``             ``has_tag`` (tags of >= min_tag_items)
  ``sentiment`` (column 0   ``mood:<very negative ..    ``has_mood``
  = VADER compound)         very positive>``
  any other modality M      ``M_cluster:<k>`` (k-means  ``M_like`` ("sounds like" for audio)
                            of standardised M vectors)
  ========================  ==========================  =======================================

  Clusters are fitted on item content only (no interactions), seeded, on the ``fit_items`` (pass
  the split's train items so no held-out song shapes them; every present item is then assigned
  to its nearest cluster). Absent rows (mask False)
  get no link. An entity that already exists under the same name (e.g. a KG's own ``tag:x``) is
  reused. The modalities themselves are dropped unless ``keep_modalities``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
import pandas as pd

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.transforms import zscore_stats
from mmkgrec.errors import ConfigError

Mode = Literal["attribute", "entity"]
# VADER compound cut points (VADER's own +-0.05 "neutral" band, and +-0.5 for strong moods).
MOOD_BINS = np.array([-0.5, -0.05, 0.05, 0.5])
MOODS = ("very negative", "negative", "neutral", "positive", "very positive")
TAG_SEPARATOR = ";"


def build_mmkg(dataset: MMKG, mode: Mode, *, clusters: int = 32, min_tag_items: int = 2,
               keep_modalities: bool = False, seed: int = 0,
               fit_items: np.ndarray | None = None) -> MMKG:
    """The ``attribute`` or ``entity`` MMKG of ``dataset`` (see the module docstring).

    Args:
        dataset: an MMKG with modalities and/or ``item_attrs["tags"]`` (``;``-separated).
        mode: ``attribute`` (unchanged copy) or ``entity``.
        clusters: k of the k-means per clustered modality (at most the present items).
        min_tag_items: tags linked to fewer items are left out (they connect nothing).
        keep_modalities: entity mode: keep the modality matrices as attributes too.
        seed: k-means seed.
        fit_items: bool [n_items]: the items standardisation and k-means are fitted on (the
            split's train items); None: every present item.
    """
    if mode not in ("attribute", "entity"):
        raise ConfigError(f"mode must be 'attribute' or 'entity', got {mode!r}")
    if clusters < 2:
        raise ConfigError(f"clusters must be >= 2, got {clusters}")
    has_tags = dataset.item_attrs is not None and "tags" in dataset.item_attrs.columns
    if not dataset.modalities and not has_tags:
        raise ConfigError(f"dataset {dataset.name!r} has no modalities and no tags: there is no "
                          "content to build a multi-modal KG from")
    if mode == "attribute":
        out = replace(dataset, notes=list(dataset.notes), meta=dict(dataset.meta))
        out.meta["mmkg mode"] = "attribute"
        return out

    links: list[pd.DataFrame] = []  # item, relation name, entity name
    if has_tags:
        assert dataset.item_attrs is not None  # has_tags
        links.append(_tag_links(dataset.item_attrs["tags"], min_tag_items))
    for name, matrix in dataset.modalities.items():
        mask = dataset.modality_masks[name]
        if not mask.any() or matrix.shape[1] == 0:
            continue
        if name == "sentiment":
            links.append(_mood_links(matrix[:, 0], mask))
        else:
            links.append(_cluster_links(name, matrix, mask, clusters, seed, fit_items))
    new = pd.concat(links, ignore_index=True) if links else pd.DataFrame(
        columns=["item", "relation", "entity"])
    return _with_links(dataset, new, keep_modalities)


def _tag_links(tags: pd.Series, min_items: int) -> pd.DataFrame:
    """``has_tag`` links from ``;``-separated tag texts (lower-cased, stripped)."""
    split = tags.fillna("").astype(str).str.split(TAG_SEPARATOR)
    frame = pd.DataFrame({"item": np.repeat(np.arange(len(tags)), split.str.len()),
                          "tag": np.concatenate(split.to_numpy()) if len(split) else []})
    frame["tag"] = frame["tag"].str.strip().str.lower()
    frame = frame[frame["tag"] != ""].drop_duplicates()
    frame = frame[frame.groupby("tag")["item"].transform("size") >= min_items]
    return pd.DataFrame({"item": frame["item"].to_numpy(), "relation": "has_tag",
                         "entity": "tag:" + frame["tag"]})


def _mood_links(compound: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
    """``has_mood`` links: VADER compound binned into five moods."""
    items = np.flatnonzero(mask)
    mood = np.asarray(MOODS)[np.digitize(compound[items], MOOD_BINS)]
    return pd.DataFrame({"item": items, "relation": "has_mood",
                         "entity": np.char.add("mood:", mood.astype(str))})


def _cluster_links(name: str, matrix: np.ndarray, mask: np.ndarray, clusters: int,
                   seed: int, fit_items: np.ndarray | None = None) -> pd.DataFrame:
    """``<name>_like`` links to the k-means cluster of each present item's standardised vector;
    standardisation and k-means are fitted on the present ``fit_items`` only."""
    from sklearn.cluster import KMeans

    items = np.flatnonzero(mask)
    fit = mask if fit_items is None else mask & np.asarray(fit_items, dtype=bool)  # [n_items]
    if not fit.any():
        return pd.DataFrame(columns=["item", "relation", "entity"])
    fit_rows = matrix[fit].astype(np.float64)  # [n_fit, d]
    mean, std = zscore_stats(fit_rows, 1e-8, "floor")  # [d] each
    k = min(clusters, len(np.unique(fit_rows, axis=0)))
    if k < 2:
        return pd.DataFrame(columns=["item", "relation", "entity"])
    kmeans = KMeans(n_clusters=k, n_init=4, random_state=seed).fit((fit_rows - mean) / std)
    labels = kmeans.predict((matrix[items].astype(np.float64) - mean) / std)  # [n_present]
    return pd.DataFrame({"item": items, "relation": f"{name}_like",
                         "entity": np.char.add(f"{name}_cluster:", labels.astype(str))})


def _with_links(dataset: MMKG, links: pd.DataFrame, keep_modalities: bool) -> MMKG:
    """Append the new entities / relations and their (item, relation, entity) triples."""
    names = links["entity"].astype(str)
    known = pd.Index(dataset.entities.astype(str))
    fresh = pd.Index(pd.unique(names[known.get_indexer(names) < 0]))  # entities to append
    entities = np.concatenate([dataset.entities.astype(str), fresh.to_numpy(dtype=str)])
    entity_ids = pd.Index(entities).get_indexer(names)  # an existing entity of that name is reused
    relations = np.concatenate([dataset.relations.astype(str), pd.Index(pd.unique(
        links["relation"].astype(str))).difference(dataset.relations.astype(str), sort=False)
        .to_numpy(dtype=str)])
    relation_ids = pd.Index(relations).get_indexer(links["relation"].astype(str))
    triples = np.stack([links["item"].to_numpy(np.int64), relation_ids.astype(np.int64),
                        entity_ids.astype(np.int64)], axis=1)  # [n_new, 3]
    all_triples = np.unique(np.concatenate([dataset.triples, triples]), axis=0)
    counts = links.groupby("relation").agg(links=("item", "size"), entities=("entity", "nunique"))
    summary = ", ".join(f"{r}: {int(c.links)} links to {int(c.entities)} entities"
                        for r, c in counts.iterrows())
    out = replace(
        dataset,
        entities=entities, relations=relations, triples=all_triples,
        modalities=dict(dataset.modalities) if keep_modalities else {},
        modality_masks=dict(dataset.modality_masks) if keep_modalities else {},
        notes=[*dataset.notes, f"entity-based MMKG: {summary}"
               + ("" if keep_modalities else "; modality attributes dropped")],
        meta={**dataset.meta, "mmkg mode": "entity"},
    )
    out.validate()
    return out
