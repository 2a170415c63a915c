"""Shared helpers of the benchmark scripts: run a named configuration over seeds, summarise."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from mmkgrec.data import apply_presplit, load, split
from mmkgrec.train.run import RunSpec, run_experiment

RESULTS = Path(__file__).resolve().parent / "results"


def run_config(label: str, model: str, dataset: str, protocol: str, seeds: list[int],
               model_options: dict, train_options: dict, presplit: str | None = None,
               source: str | None = None, threads: int = 2) -> list[dict]:
    """Train ``model`` once per seed; return one flat record per seed (metrics and timings)."""
    torch.set_num_threads(threads)
    ds = load(dataset, source=source)
    records = []
    for seed in seeds:
        sp = apply_presplit(ds, presplit) if presplit else split(ds, protocol=protocol, seed=seed)
        spec = RunSpec(model=model, dataset=dataset, source=source, protocol=protocol, seed=seed,
                       presplit=presplit, model_options=model_options, train_options=train_options)
        start = time.perf_counter()
        run = run_experiment(spec, None, data=(ds, sp), progress=False)
        m = run.metrics
        records.append({
            "label": label, "model": model, "dataset": dataset, "protocol": protocol, "seed": seed,
            **{f"test_{k}": v for k, v in m["test"].items()},
            **{f"valid_{k}": v for k, v in m["valid"].items()},
            "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
            "train_s_per_epoch": m["train_seconds_per_epoch"],
            "test_eval_s": m["eval_seconds"]["test"], "wall_s": time.perf_counter() - start,
            "model_options": model_options, "train_options": train_options,
        })
        print(json.dumps({k: v for k, v in records[-1].items() if not k.startswith("valid_")
                          and k not in ("model_options", "train_options")}), flush=True)
    return records


def mean_std(records: list[dict], key: str) -> str:
    values = np.array([r[key] for r in records if key in r], dtype=float)
    if not len(values):
        return "–"
    return f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}"


def save(name: str, records: list[dict]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(records, indent=1) + "\n")
    return path
