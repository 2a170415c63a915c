"""The benchmark's files: per-user arrays and CSV tables upserted by (dataset, model, seed)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mmkgrec.config import file_slug
from mmkgrec.experiments.spec import BenchmarkSpec

KEY = ["dataset", "model", "seed"]


def per_user_path(out: Path, dataset: str, model: str, seed: int) -> Path:
    return out / "per_user" / file_slug(dataset) / model / f"seed{seed}.npz"


def read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=KEY)
    return pd.read_csv(path, dtype={"config_hash": str, "model": str, "dataset": str})


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Atomic: a killed run never leaves a half-written CSV."""
    staging = path.with_name(path.name + ".tmp")
    frame.to_csv(staging, index=False)
    os.replace(staging, path)


def requested(frame: pd.DataFrame, spec: BenchmarkSpec) -> pd.DataFrame:
    """The rows of the cells ``spec`` asks for (results.csv may hold others)."""
    return frame[frame["dataset"].isin(spec.datasets) & frame["model"].isin(spec.models)
                 & frame["seed"].isin(spec.seeds)]


def find(frame: pd.DataFrame, dataset: str, model: str, seed: int) -> pd.DataFrame:
    return frame[(frame["dataset"] == dataset) & (frame["model"] == model)
                 & (frame["seed"] == seed)]


def upsert(frame: pd.DataFrame, new: pd.DataFrame, dataset: str, model: str,
            seed: int) -> pd.DataFrame:
    """``frame`` without the rows of this cell, plus ``new``."""
    kept = frame.drop(find(frame, dataset, model, seed).index)
    parts = [part for part in (kept, new) if len(part)]
    return pd.concat(parts, ignore_index=True) if parts else new
