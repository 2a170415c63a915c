"""Validation-only probe of MMKG-CF's latent content route (docs/results.md 8.12).

lastfm-kgcn-content, RecBole's split, content scope no-eval, seed 0, every cell at LATTICE's
tuned training settings of 8.11 (lr 1.35e-2, L2 3.9e-3, 2 layers, kNN 20, lambda 0.8); one
change per cell (KG edge weight, user-fact weight). Test is never evaluated.

    OMP_NUM_THREADS=1 python benchmarks/latent_probe.py [CELL ...]   # default: every cell
"""

from __future__ import annotations

import json
import sys
import time

from mmkgrec.train.run import RunSpec, build_model, prepare_data, resolved_configs
from mmkgrec.train.trainer import Trainer

BASE = {"dataset": "lastfm-kgcn-content", "protocol": "topk", "seed": 0,
        "presplit": "../shared/data/recbole-splits/lastfm-kgcn", "content_scope": "no-eval"}
TRAIN = {"lr": 0.013513681745618336, "l2": 0.0039456989570993625}  # LATTICE's tuned (8.11)
LATENT = {"content_route": "latent", "knn": 20, "lambda_coeff": 0.8, "n_layers": 2}


def latent(kg_weight: float, user_kg_weight: float) -> tuple[str, dict]:
    return "mmkgcf", {**LATENT, "kg_weight": kg_weight, "user_kg_weight": user_kg_weight}


CELLS = {
    "lattice": ("lattice", {"knn_k": 20, "lambda_coeff": 0.8, "n_layers": 2}),
    "mmkgcf-latent-nokg": latent(0.0, 0.0),
    "mmkgcf-latent-kg0.25": latent(0.25, 0.0),
    "mmkgcf-latent-kg2-facts2": latent(2.0, 2.0),
    "mmkgcf-latent-kg0.5-facts1": latent(0.5, 1.0),
    "mmkgcf-latent-facts2-nokg": latent(0.0, 2.0),
}


def main(names: list[str]) -> None:
    data = None
    for name in names or list(CELLS):
        model_name, options = CELLS[name]
        spec = RunSpec(model=model_name, **BASE, model_options=options, train_options=TRAIN)
        data = data or prepare_data(spec)  # the same data for every cell
        dataset, split = data
        model_cfg, train_cfg = resolved_configs(spec)
        model = build_model(spec, dataset, split, model_cfg)
        start = time.perf_counter()
        result = Trainer(model, split, train_cfg, None, dataset=dataset,
                         progress=False).fit(evaluate_test=False)
        print(json.dumps({"cell": name, "valid_ndcg@20": round(result["valid"]["ndcg@20"], 4),
                          "valid_recall@20": round(result["valid"]["recall@20"], 4),
                          "best_epoch": result["best_epoch"],
                          "s": round(time.perf_counter() - start)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
