"""Modal feature extraction: from a music catalogue to the modality matrices an MMKG consumes.

Typical use::

    from mmkgrec.features import extract, attach_features
    report = extract("catalogue.csv", "feats", ["mfcc_stats", "minilm", "vader"],
                     train_items=train_ids, workers=4)
    dataset = attach_features(dataset, "feats")

Modules: :mod:`~mmkgrec.features.catalogue` (the catalogue file), :mod:`~.base` (the
``Extractor`` interface), :mod:`~.audio`, :mod:`~.text`, :mod:`~.sentiment`, :mod:`~.image`
(the extractors), :mod:`~.registry` (``EXTRACTORS``), :mod:`~.extraction` (parallel, cached runs),
:mod:`~.pool` (its crash-isolating worker pool), :mod:`~.output` (the output format and its
reader), :mod:`~.attach`, :mod:`~.content` (user content scoped per split), :mod:`~.lastfm`,
:mod:`~.cli`. See ``docs/features.md``.

Names are imported lazily so that importing this package (e.g. by the CLI) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Catalogue": "catalogue", "CatalogueItem": "catalogue", "read_catalogue": "catalogue",
    "Extractor": "base", "ExtractionError": "base",  # defined in mmkgrec.errors
    "EXTRACTORS": "registry", "make_extractor": "registry",
    "extract": "extraction", "read_features": "output", "read_errors": "output",
    "ExtractReport": "output", "FeatureSet": "output",
    "attach_features": "attach",
    "embed_texts": "text", "sentiment_scores": "sentiment", "SENTIMENT_COLUMNS": "sentiment",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"mmkgrec.features.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mmkgrec.features' has no attribute {name!r}")
