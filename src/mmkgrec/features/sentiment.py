"""Sentiment: VADER scores of an item's lyric lines (or tags), summarised to a fixed width.

VADER (vaderSentiment; a lexicon and rules, no weights) scores each segment (a lyric line or a
tag) with ``compound`` in [-1, 1] and the ``pos`` / ``neg`` / ``neu`` shares. An item's vector is
:data:`SENTIMENT_COLUMNS`: compound mean / std / min / max, the mean pos / neg / neu, and the
share of segments that are positive (compound >= 0.05) and negative (<= -0.05), VADER's own
thresholds. An item with no segment gets a zero row (and, in ``extract``, mask False).
"""

from __future__ import annotations

from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np

from mmkgrec.features.base import BatchExtractor, Modality, Options, missing_modules, sha256_text
from mmkgrec.features.catalogue import CatalogueItem

SENTIMENT_COLUMNS = ("compound_mean", "compound_std", "compound_min", "compound_max", "pos_mean",
                     "neg_mean", "neu_mean", "positive_share", "negative_share")


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def score_segments(segments: list[str]) -> np.ndarray:
    """VADER (compound, pos, neg, neu) per segment: float64 ``[n, 4]``."""
    analyzer = _analyzer()
    scores = [analyzer.polarity_scores(s) for s in segments]  # VADER scores one string at a time
    return np.array([[s["compound"], s["pos"], s["neg"], s["neu"]] for s in scores],
                    dtype=np.float64).reshape(-1, 4)


def sentiment_scores(segments: list[list[str]]) -> np.ndarray:
    """Summarised VADER sentiment per item: float32 ``[n, len(SENTIMENT_COLUMNS)]``.

    Args:
        segments: per item, its lyric lines or tags. Blank strings are dropped; an item with none
            left gets a zero row. Each distinct string is scored once (tags repeat a lot).

    Returns:
        Columns :data:`SENTIMENT_COLUMNS`.
    """
    cleaned = [[s.strip() for s in item if s and s.strip()] for item in segments]
    lengths = np.array([len(c) for c in cleaned], dtype=np.int64)  # [n]
    out = np.zeros((len(cleaned), len(SENTIMENT_COLUMNS)), dtype=np.float32)
    if lengths.sum() == 0:
        return out
    flat = [s for c in cleaned for s in c]
    unique, inverse = np.unique(np.array(flat, dtype=object), return_inverse=True)
    scores = score_segments(list(unique))[inverse]  # [total, 4]
    owner = np.repeat(np.arange(len(cleaned)), lengths)  # [total] item of each segment
    n = len(cleaned)
    count = np.maximum(lengths, 1).astype(np.float64)  # [n]
    mean = np.column_stack([np.bincount(owner, scores[:, j], minlength=n) for j in range(4)]
                           ) / count[:, None]  # [n, 4]
    compound = scores[:, 0]  # [total]
    var = np.bincount(owner, (compound - mean[owner, 0]) ** 2, minlength=n) / count  # [n]

    def share(hit):  # [n] share of each item's segments where ``hit``
        return np.bincount(owner, hit.astype(np.float64), minlength=n) / count

    has = lengths > 0
    starts = (np.cumsum(lengths) - lengths)[has]  # first segment of each non-empty item
    summary = np.column_stack([mean[:, 0], np.sqrt(var), np.zeros(n), np.zeros(n), mean[:, 1],
                               mean[:, 2], mean[:, 3], share(compound >= 0.05),
                               share(compound <= -0.05)])  # [n, 9]
    summary[has, 2] = np.minimum.reduceat(compound, starts)
    summary[has, 3] = np.maximum.reduceat(compound, starts)
    out[has] = summary[has]
    return out


class VaderOptions(Options):
    source: Literal["lyrics_or_tags", "lyrics", "tags", "lyrics_and_tags"] = "lyrics_or_tags"


class Vader(BatchExtractor):
    """VADER sentiment of the lyric lines (else the tags), summarised (9 columns)."""

    name = "vader"
    modality: ClassVar[Modality] = "sentiment"
    inputs: ClassVar[tuple[str, ...]] = ("lyrics", "tags")
    weights = "none (VADER lexicon shipped in vaderSentiment)"
    OptionsModel = VaderOptions
    batch_size = 64

    @property
    def width(self) -> int:
        return len(SENTIMENT_COLUMNS)

    def available(self) -> tuple[bool, str]:
        missing = missing_modules("vaderSentiment")
        return (False, "needs vaderSentiment (pip install 'mmkgrec[features]')") if missing else (
            True, "ok")

    def has_input(self, item: CatalogueItem) -> bool:
        source = self.options.source
        lyrics, tags = item.has("lyrics"), bool(item.tags)
        return {"lyrics": lyrics, "tags": tags}.get(source, lyrics or tags)

    def segments(self, item: CatalogueItem) -> list[str]:
        """Lyric lines and / or tags, as the ``source`` option says."""
        source = self.options.source
        lines = ([line for line in item.lyrics_text().splitlines() if line.strip()]
                 if source != "tags" else [])
        if source == "lyrics":
            return lines
        if source == "tags":
            return list(item.tags)
        if source == "lyrics_and_tags":
            return lines + list(item.tags)
        return lines or list(item.tags)

    def input_digest(self, item: CatalogueItem, file_digest) -> str:
        return sha256_text("\x1f".join(self.segments(item)))

    def prepare(self, item: CatalogueItem) -> list[str]:
        return self.segments(item)

    def compute(self, prepared: list[list[str]]) -> np.ndarray:
        return sentiment_scores(prepared)  # [g, 9]
