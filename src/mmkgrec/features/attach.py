"""Attach extracted features to a dataset: join feature rows to its items by original item id."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from mmkgrec.data.dataset import MMKG
from mmkgrec.errors import ConfigError, MMKGRecError
from mmkgrec.features.output import FeatureSet, read_features


def attach_features(dataset: MMKG, features_dir: str | Path | FeatureSet,
                    modalities: list[str] | None = None, prefix: str = "") -> MMKG:
    """A copy of ``dataset`` with the feature modalities joined to its items by original id.

    Items without a feature row, and rows whose modality is absent, get mask False and a zero
    row. A modality of the same name already on the dataset is replaced. Notes on the result say
    how many items matched and how many feature rows matched no item.

    Args:
        dataset: the MMKG (not modified).
        features_dir: an ``extract`` output directory (or its :class:`FeatureSet`).
        modalities: the feature modalities to attach (default: all).
        prefix: prepended to each modality name on the dataset (e.g. ``"cat_"``).

    Raises:
        MMKGRecError: no dataset item id matches any feature row (ids of two different catalogues).
        ConfigError: an unknown modality name.
    """
    features = features_dir if isinstance(features_dir, FeatureSet) else read_features(features_dir)
    names = list(features.modalities) if modalities is None else list(modalities)
    unknown = sorted(set(names) - set(features.modalities))
    if unknown:
        raise ConfigError(f"unknown feature modalities {unknown}; {features.directory} has "
                          f"{sorted(features.modalities)}")
    row = pd.Index(features.item_ids).get_indexer(pd.Index(np.asarray(dataset.items, dtype=str)))
    matched = row >= 0  # [n_items]
    n_matched = int(matched.sum())
    if n_matched == 0:
        raise MMKGRecError(
            f"none of the {dataset.n_items} items of {dataset.name!r} matches one of the "
            f"{len(features.item_ids)} feature rows of {features.directory} by id (dataset ids "
            f"e.g. {list(dataset.items[:3])}; feature ids e.g. {list(features.item_ids[:3])})")
    out = dataclasses.replace(dataset, modalities=dict(dataset.modalities),
                              modality_masks=dict(dataset.modality_masks),
                              notes=list(dataset.notes), meta=dict(dataset.meta))
    unused = len(features.item_ids) - len(np.unique(row[matched]))
    out.notes.append(f"features {features.directory}: {n_matched} of {dataset.n_items} items "
                     f"matched by id ({dataset.n_items - n_matched} without a feature row); "
                     f"{unused} of {len(features.item_ids)} feature rows match no item")
    safe = np.where(matched, row, 0)  # [n_items] row of each item (0 where unmatched)
    for name in names:
        target = f"{prefix}{name}"
        mask = matched & features.masks[name][safe]  # [n_items]
        matrix = np.where(mask[:, None], features.modalities[name][safe], 0.0)  # [n_items, d]
        if target in out.modalities:
            out.notes.append(f"modality {target!r} replaced by the attached features")
        out.add_modality(target, matrix, mask)
        out.notes.append(f"modality {target!r} ({features.kinds[name]}, d={matrix.shape[1]}): "
                         f"present for {int(mask.sum())} of {dataset.n_items} items")
    out.item_attrs = _joined_attributes(dataset, features, row, matched)
    out.validate()
    return out


def _joined_attributes(dataset: MMKG, features: FeatureSet, row: np.ndarray,
                       matched: np.ndarray) -> pd.DataFrame | None:
    """The dataset's display attributes plus the catalogue's (title, artist, tags) by item id;
    a value the dataset already has wins, the catalogue fills the empty cells."""
    if dataset.item_attrs is None and not features.attributes:
        return None
    attrs = (dataset.item_attrs.copy() if dataset.item_attrs is not None
             else pd.DataFrame(index=range(dataset.n_items)))
    safe = np.where(matched, row, 0)  # [n_items]
    for name, values in features.attributes.items():
        joined = np.where(matched, values[safe], "")  # [n_items] str
        if name in attrs.columns:
            own = attrs[name].fillna("").astype(str).to_numpy()
            joined = np.where(own != "", own, joined)
        attrs[name] = joined.astype(str)
    return attrs
