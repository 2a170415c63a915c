"""A check of the audio features on real recordings: do they separate moods?

``immich-memories-music`` ships 28 royalty-free tracks (Ogg Opus, ~30 s each) in five mood
folders (calm, energetic, happy, nostalgic, tender). :func:`loo_knn` measures leave-one-out
k-NN accuracy of a feature set against those labels, with everything fitted without the held-out
track (standardisation, and for bag-of-frames the codebook), and a permutation test of the
accuracy against shuffled labels. ``benchmarks/audio_moods.py`` runs it for every audio extractor.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmkgrec.data.transforms import zscore_stats
from mmkgrec.errors import MMKGRecError


@dataclass(frozen=True)
class Track:
    path: Path
    mood: str  # the folder name
    style: str  # "acoustic" / "electronic" (from the file name), else ""

    @property
    def item_id(self) -> str:
        return f"{self.mood}/{self.path.stem}"


def mood_tracks() -> list[Track]:
    """The bundled tracks, sorted by mood then file name."""
    try:
        from immich_memories_music import tracks_dir
    except ImportError:
        raise MMKGRecError("the mood tracks need the immich-memories-music package "
                           "(pip install immich-memories-music)") from None
    root = Path(tracks_dir())
    tracks = [Track(p, p.parent.name, next((s for s in ("acoustic", "electronic") if s in p.stem), ""))
              for p in sorted(root.glob("*/*")) if p.suffix.lower() in {".opus", ".ogg", ".mp3",
                                                                        ".wav", ".flac"}]
    if not tracks:
        raise MMKGRecError(f"no tracks found under {root}")
    return tracks


def write_mood_catalogue(tracks: list[Track], path: str | Path) -> Path:
    """A catalogue CSV (``item_id``, ``audio_path``) of the tracks; labels are NOT in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "audio_path"])
        writer.writerows((t.item_id, str(t.path)) for t in tracks)
    return path


def _standardise(x: np.ndarray, fit: np.ndarray) -> np.ndarray:
    mean, std = zscore_stats(x[fit], 1e-12, "unit")  # [d] each
    return (x - mean) / std


def neighbour_orders(features: np.ndarray | Callable[[int], np.ndarray], n: int,
                     k_max: int) -> np.ndarray:
    """Per held-out item ``i``: the indices of its ``k_max`` nearest other items ``[n, k_max]``.

    ``features`` is ``[n, d]`` (standardised per fold on the other n - 1 items) or a function
    ``i -> [n, d]`` giving the features computed without item ``i`` (e.g. a codebook fitted on
    the others), standardised the same way.
    """
    orders = np.zeros((n, k_max), dtype=np.int64)
    for i in range(n):  # one fold per item (n is small: this is an evaluation, not a hot path)
        x = features(i) if callable(features) else features
        others = np.arange(n) != i
        z = _standardise(np.asarray(x, dtype=np.float64), others)  # [n, d]
        dist = np.linalg.norm(z - z[i], axis=1)  # [n]
        dist[i] = np.inf
        orders[i] = np.argsort(dist, kind="stable")[:k_max]
    return orders


def knn_accuracy(orders: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Leave-one-out k-NN accuracy for each row of ``labels`` ``[P, n]`` (int codes) -> ``[P]``.

    Majority vote of the k nearest; a tie goes to the tied class with the nearer neighbour.
    """
    labels = np.atleast_2d(labels)
    n_classes = int(labels.max()) + 1
    neighbour = labels[:, orders[:, :k]]  # [P, n, k]
    weight = 1.0 + 1e-6 * (k - np.arange(k))  # [k] nearer neighbours break ties
    onehot = np.eye(n_classes)[neighbour]  # [P, n, k, C]
    votes = (onehot * weight[None, None, :, None]).sum(axis=2)  # [P, n, C]
    return (votes.argmax(axis=2) == labels).mean(axis=1)


def loo_knn(features: np.ndarray | Callable[[int], np.ndarray], labels: list[str],
            ks: tuple[int, ...] = (1, 3), n_permutations: int = 2000, seed: int = 0) -> dict:
    """Leave-one-out k-NN accuracy, the majority-class rate and a permutation p-value per k.

    p-value: (1 + #{shuffled labels with accuracy >= observed}) / (1 + n_permutations); the
    neighbour orders do not depend on labels, so every shuffle reuses them.
    """
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    n = len(codes)
    orders = neighbour_orders(features, n, max(ks))
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(codes) for _ in range(n_permutations)])  # [P, n]
    majority = float(np.bincount(codes).max() / n)
    out = {"n": n, "classes": {str(c): int(m) for c, m in zip(classes, np.bincount(codes))},
           "majority_rate": majority}
    for k in ks:
        observed = float(knn_accuracy(orders, codes[None, :], k)[0])
        null = knn_accuracy(orders, shuffled, k)  # [P]
        out[f"k{k}"] = {"accuracy": observed, "correct": round(observed * n),
                        "p_value": float((1 + (null >= observed - 1e-12).sum()) / (1 + n_permutations)),
                        "null_mean": float(null.mean())}
    return out
