"""The explicit registry of feature extractors: name -> class."""

from __future__ import annotations

from typing import Any

from mmkgrec.errors import ConfigError
from mmkgrec.features.audio import ChromaBof, ChromaStats, Emobase, MfccBof, MfccStats
from mmkgrec.features.base import Extractor
from mmkgrec.features.image import ColorHist, EfficientNetLite0
from mmkgrec.features.sentiment import Vader
from mmkgrec.features.text import MiniLM, TfidfSvd

EXTRACTORS: dict[str, type[Extractor]] = {
    "mfcc_stats": MfccStats,
    "chroma_stats": ChromaStats,
    "mfcc_bof": MfccBof,
    "chroma_bof": ChromaBof,
    "emobase": Emobase,
    "minilm": MiniLM,
    "tfidf_svd": TfidfSvd,
    "vader": Vader,
    "efficientnet_lite0": EfficientNetLite0,
    "color_hist": ColorHist,
}

# Used when ``extract`` is given no extractor list: one or two per modality, those whose input
# columns the catalogue has.
DEFAULT_EXTRACTORS = ("mfcc_stats", "chroma_stats", "minilm", "vader", "efficientnet_lite0")


def make_extractor(name: str, options: dict[str, Any] | None = None) -> Extractor:
    """An extractor by registry name, with validated options (ConfigError on a bad one)."""
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown extractor {name!r}; known: {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name](**(options or {}))
