"""Content transforms fitted on TRAIN rows only: the one z-scoring helper."""

from __future__ import annotations

from typing import Literal

import numpy as np


def zscore_stats(fit_rows: np.ndarray, eps: float,
                 small: Literal["add", "floor", "unit"] = "add") -> tuple[np.ndarray, np.ndarray]:
    """(mean [d], std [d]) of ``fit_rows`` [n, d] for ``(x - mean) / std``.

    ``small`` keeps a constant column finite: ``add`` uses ``std + eps``, ``floor``
    ``max(std, eps)``, ``unit`` replaces a std <= ``eps`` by 1 (the column is only centred).
    """
    mean, std = fit_rows.mean(axis=0), fit_rows.std(axis=0)  # [d] each
    if small == "add":
        return mean, std + eps
    if small == "floor":
        return mean, np.maximum(std, eps)
    return mean, np.where(std > eps, std, 1.0)
