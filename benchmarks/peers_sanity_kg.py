"""KGAT / MKGAT / MMGCN sanity run on RecBole's fixed lastfm-kgcn split, next to RecBole's figures.

    python benchmarks/peers_sanity_kg.py [--models kgat mkgat mmgcn] [--max-seconds 240]

Full ranking over all items (train positives masked; train + valid at test time), metrics
averaged over test users, as in /work/shared/data/recbole-splits/README.md. Settings come from
``src/mmkgrec/models/configs/<name>.toml`` with its lastfm-kgcn overrides. lastfm-kgcn has no
modalities: MKGAT then runs without fusion and MMGCN is its ID channel alone. One thread (the
machine is shared). KGAT's / MKGAT's KG loss only counts once the Trainer calls
``model.auxiliary_loss()``.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

import torch

from mmkgrec.config import tomllib
from mmkgrec.data import apply_presplit, load
from mmkgrec.models.kgat import KGAT
from mmkgrec.models.mkgat import MKGAT
from mmkgrec.models.mmgcn import MMGCN
from mmkgrec.train.trainer import Trainer

PRESPLIT = "/work/shared/data/recbole-splits/lastfm-kgcn"
RECBOLE = {"KGIN": (0.3072, 0.1439, 0.85), "CKE": (0.3259, 0.1551, 1.15),
           "KGCN": (0.2651, 0.1162, 0.37), "BPR": (0.3166, 0.1532, 0.05)}  # R@20, N@20, s/epoch
MODELS = {m.name: m for m in (KGAT, MKGAT, MMGCN)}


def defaults(name: str, dataset: str = "lastfm-kgcn") -> dict:
    """``configs/<name>.toml`` with its ``[dataset.<dataset>.*]`` overrides applied."""
    path = resources.files("mmkgrec.models").joinpath("configs", f"{name}.toml")
    raw = tomllib.loads(path.read_text())
    overrides = raw.get("dataset", {}).get(dataset, {})
    return {part: {**raw.get(part, {}), **overrides.get(part, {})} for part in ("model", "train")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["kgat"], choices=sorted(MODELS))
    parser.add_argument("--max-seconds", type=float, default=240.0, help="training time cap")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results"
                        / "peers_sanity_kg.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = load("lastfm-kgcn")
    sp = apply_presplit(ds, PRESPLIT)
    records = []
    for name in args.models:
        config = defaults(name)
        torch.manual_seed(0)
        model = MODELS[name](ds, sp, MODELS[name].Config(**config["model"]), seed=0)
        start = time.perf_counter()
        result = Trainer(model, sp, {**config["train"], "max_train_seconds": args.max_seconds,
                                     "device": "cpu"}).fit()
        test = result["test"]
        records.append({"model": name, "recall@20": test["recall@20"], "ndcg@20": test["ndcg@20"],
                        "recall@10": test["recall@10"], "ndcg@10": test["ndcg@10"],
                        "s_per_epoch": result["train_seconds_per_epoch"],
                        "s_test": result["eval_seconds"]["test"],
                        "best_epoch": result["best_epoch"],
                        "epochs_run": result["epochs_run"], "stop": result["stop_reason"],
                        "wall_s": time.perf_counter() - start})
        print(json.dumps(records[-1]), flush=True)
    print("| model | Recall@20 | NDCG@20 | s/epoch |\n|---|---|---|---|")
    for r in records:
        print(f"| {r['model']} (mmkgrec) | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} "
              f"| {r['s_per_epoch']:.2f} |")
    for name, (recall, ndcg, seconds) in RECBOLE.items():
        print(f"| {name} (RecBole) | {recall:.4f} | {ndcg:.4f} | {seconds:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
