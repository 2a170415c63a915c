"""Full ranking with and without the cached first aggregation round, interleaved in one process.

The user-independent first round of KGCN / MKGCN's item aggregation (``first_round_slots``) used
to be rebuilt for every block of users; ``prepare_ranking`` now computes it once per pass. The
two variants run alternately on the same model, so machine load affects both alike. Usage::

    OMP_NUM_THREADS=1 python benchmarks/ranking_slots.py --preset medium --blocks 1,8,64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mmkgrec.data import load, split
from mmkgrec.models import KGCN, default_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--blocks", default="1,8,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ranking_slots.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = load(f"synthetic-{args.preset}")
    sp = split(ds, "topk", seed=0)
    config = KGCN.Config(**{**default_config("kgcn", protocol="topk")["model"], "n_hops": 1})
    model = KGCN(ds, sp, config).eval()
    rows = []
    with torch.no_grad():
        for block in [int(b) for b in args.blocks.split(",")]:
            users = torch.arange(block)
            timings = {"rebuilt per block": [], "cached (prepare_ranking)": []}
            for _ in range(args.repeats):
                for name in timings:
                    model._ranking_slots = None
                    start = time.perf_counter()
                    if name.startswith("cached"):
                        model.prepare_ranking()  # counted: paid once per pass, not per block
                    model.score_users(users)
                    timings[name].append(time.perf_counter() - start)
            row = {"items": ds.n_items, "entities": ds.n_entities, "block_users": block,
                   **{k: min(v) for k, v in timings.items()}}
            model.prepare_ranking()
            start = time.perf_counter()
            model.score_users(users)  # a later block of the same pass: slots already cached
            row["cached, later block"] = time.perf_counter() - start
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps({"preset": args.preset, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
