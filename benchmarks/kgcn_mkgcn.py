"""The figures of docs/results.md for KGCN and MKGCN (issue "MKGCN and KGCN").

    python benchmarks/kgcn_mkgcn.py ctr              # lastfm-kgcn, KGCN protocol, 3 seeds
    python benchmarks/kgcn_mkgcn.py topk             # RecBole's fixed splits, both datasets, 3 seeds
    python benchmarks/kgcn_mkgcn.py speed            # full-ranking seconds vs hops; s/epoch
        [--datasets music-d --hops 1 2 --repeats 1]
    python benchmarks/kgcn_mkgcn.py negatives        # music-d: what 1/popularity negatives do to AUC

Each writes benchmarks/results/<name>.json and prints a Markdown table. Real data is read from
$MMKGREC_DATA or ../shared/data.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from common import mean_std, run_config, save
from mmkgrec.data import apply_presplit, load, split
from mmkgrec.data.registry import data_roots
from mmkgrec.evaluate.metrics import ctr_metrics
from mmkgrec.evaluate.ranking import time_full_ranking
from mmkgrec.models import KGCN, MKGCN, default_config
from mmkgrec.models.fused import ranking_backend
from mmkgrec.train.run import RunSpec, run_experiment

SEEDS = [0, 1, 2]
# The KGCN paper's Last.FM settings; its code regularises every parameter (l2_scope "all").
KGCN_PAPER = {"dim": 16, "n_neighbors": 8, "n_hops": 1, "l2_scope": "all"}
KGCN_PAPER_TRAIN = {"epochs": 10, "batch_size": 128, "lr": 5e-4, "l2": 1e-4, "negatives": "fixed",
                    "patience": 3}


def presplit_dir(dataset: str) -> str:
    for root in data_roots():
        if (root / "recbole-splits" / dataset / "train.tsv").is_file():
            return str(root / "recbole-splits" / dataset)
    raise SystemExit(f"recbole-splits/{dataset} not found under {data_roots()}")


def ctr(seeds: list[int]) -> list[dict]:
    configs = [("pop", "pop", {}, {})]
    configs += [(f"kgcn-{agg}", "kgcn", {**KGCN_PAPER, "aggregator": agg}, KGCN_PAPER_TRAIN)
                for agg in ("sum", "concat", "neighbor")]
    for negatives in ("fixed", "uniform", "ratio"):
        configs.append((f"mkgcn ({negatives} negatives)", "mkgcn", {}, {"negatives": negatives}))
    records = []
    for label, model, options, train in configs:
        records += run_config(label, model, "lastfm-kgcn", "ctr", seeds, options, train)
    table(records, ["test_auc", "test_f1", "test_recall@20", "test_ndcg@20"], "lastfm-kgcn, ctr")
    return records


def topk(seeds: list[int], datasets: list[str]) -> list[dict]:
    records = []
    for dataset in datasets:
        presplit = presplit_dir(dataset)
        rows = []
        for label, model in (("pop", "pop"), ("kgcn", "kgcn"), ("mkgcn", "mkgcn"),
                             ("bprmf", "bprmf"), ("lightgcn", "lightgcn")):
            rows += run_config(label, model, dataset, "topk", seeds, {}, {}, presplit=presplit)
        table(rows, ["test_recall@10", "test_recall@20", "test_ndcg@10", "test_ndcg@20",
                     "train_s_per_epoch", "test_eval_s"], f"{dataset}, topk (RecBole split)")
        records += rows
    return records


def speed(datasets: list[str], hops_list: list[int], repeats: int) -> list[dict]:
    """Full ranking of every test user of the RecBole split (exactly the users reported) over
    all items, by hop count. Threads: torch's default, or OMP_NUM_THREADS; the ranking backend:
    ``$MMKGREC_KG_RANKING`` (models/fused.py)."""
    records = []
    for dataset in datasets:
        ds = load(dataset)
        sp = apply_presplit(ds, presplit_dir(dataset))
        test_users = sp.ground_truth("test")[0]  # ranked and reported: the test users only
        n_users = len(test_users)
        for cls in (KGCN, MKGCN):
            for hops in hops_list:
                config = cls.Config(**{**default_config(cls.name)["model"], "dim": 16,
                                       "n_neighbors": 8, "n_hops": hops})
                torch.manual_seed(0)
                model = cls(ds, sp, config, seed=0)
                time_full_ranking(model, sp, "test", k=50, batch_users=512,
                                  users=test_users)  # warm-up
                seconds = min(time_full_ranking(model, sp, "test", k=50, batch_users=512,
                                                users=test_users)
                              for _ in range(repeats))
                records.append({"dataset": dataset, "model": cls.name, "hops": hops, "dim": 16,
                                "neighbors": 8, "test_users": n_users, "items": ds.n_items,
                                "ranking": ranking_backend(), "seconds": seconds,
                                "threads": torch.get_num_threads()})
                print(records[-1], flush=True)
        # Train seconds per epoch at the public MKGCN code's defaults (dim 16, 8 neighbours,
        # 2 hops, batch 64), on the ctr protocol.
        for model, options in (("mkgcn", {"dim": 16, "n_hops": 2, "n_neighbors": 8}),):
            rec = run_config(f"{model} public defaults", model, dataset, "ctr", [0], options,
                             {"epochs": 2, "batch_size": 64, "patience": None},
                             threads=torch.get_num_threads())
            records.append({"dataset": dataset, "model": model, "setting": "public defaults",
                            "train_s_per_epoch": rec[0]["train_s_per_epoch"]})
            print(records[-1], flush=True)
    return records


def negatives() -> list[dict]:
    """AUC of a popularity scorer (and of MKGCN trained each way) on music-d test positives
    paired with negatives drawn uniformly, in proportion to popularity^0.75, or to 1/popularity
    (the public code). Negatives never come from items the user interacted with."""
    ds = load("music-d")
    sp = split(ds, protocol="topk", seed=0)
    popularity = sp.item_popularity().astype(float)  # train only
    test = sp.test
    seen = np.unique(ds.interactions["user"].to_numpy() * ds.n_items
                     + ds.interactions["item"].to_numpy())
    records = []
    runs = {}
    for train_alpha in (None, -1.0, 0.75):
        negatives_ = "uniform" if train_alpha is None else "ratio"
        spec = RunSpec(model="mkgcn", dataset="music-d", protocol="topk", seed=0,
                       train_options={"negatives": negatives_, "alpha": train_alpha or 0.75,
                                      "epochs": 20, "eval_every": 5})
        runs[negatives_ if train_alpha is None else f"ratio {train_alpha:g}"] = run_experiment(
            spec, None, data=(ds, sp), progress=False).model
    for label, alpha in (("uniform", 0.0), ("popularity^0.75", 0.75), ("1/popularity", -1.0)):
        rng = np.random.default_rng(0)
        weights = (popularity + 1.0) ** alpha
        weights /= weights.sum()
        users = test["user"].to_numpy()
        items = rng.choice(ds.n_items, size=len(users), p=weights)
        for _ in range(100):  # redraw negatives the user interacted with
            bad = np.isin(users * ds.n_items + items, seen)
            if not bad.any():
                break
            items[bad] = rng.choice(ds.n_items, size=int(bad.sum()), p=weights)
        eval_users = np.concatenate([users, users])
        eval_items = np.concatenate([test["item"].to_numpy(), items])
        labels = np.concatenate([np.ones(len(users)), np.zeros(len(users))])
        row = {"eval negatives": label,
               "pop AUC": ctr_metrics(labels, np.log1p(popularity[eval_items]))["auc"]}
        for name, model in runs.items():
            model.eval()
            with torch.no_grad():
                logits = model(torch.as_tensor(eval_users), torch.as_tensor(eval_items))
            row[f"mkgcn trained {name} AUC"] = ctr_metrics(labels, torch.sigmoid(logits).numpy())["auc"]
        records.append(row)
        print(row, flush=True)
    return records


def table(records: list[dict], keys: list[str], title: str) -> None:
    print(f"\n### {title}\n")
    print("| config | " + " | ".join(k.removeprefix("test_") for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for label in dict.fromkeys(r["label"] for r in records):
        rows = [r for r in records if r["label"] == label]
        print(f"| {label} | " + " | ".join(mean_std(rows, k) for k in keys) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["ctr", "topk", "speed", "negatives"])
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--datasets", nargs="+", default=["lastfm-kgcn", "music-d"])
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2, 3], help="speed: hop counts")
    parser.add_argument("--repeats", type=int, default=3, help="speed: timed passes (best kept)")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.what == "ctr":
        result = ctr(args.seeds)
    elif args.what == "topk":
        result = topk(args.seeds, args.datasets)
    elif args.what == "speed":
        result = speed(args.datasets, args.hops, args.repeats)
    else:
        result = negatives()
    name = {"topk": "topk_", "speed": "speed_"}.get(args.what, args.what)
    if args.what in ("topk", "speed"):
        name += "_".join(args.datasets)
    path = save(name, result)
    print(f"\nwrote {path} in {time.perf_counter() - start:.0f} s "
          f"(threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
