"""KGCN full ranking of every test user, RecBole 1.2.1 and mmkgrec side by side (issue 13 §1).

    OMP_NUM_THREADS=2 python benchmarks/kgcn_recbole.py                      # both datasets, 1 and 2 hops
    python benchmarks/kgcn_recbole.py --datasets lastfm-kgcn --hops 1 --repeats 5 --threads 2
    python benchmarks/kgcn_recbole.py --recbole-python /work/recbole-venv/bin/python

Identical settings on both sides: dim 64, 4 sampled neighbours, ``sum`` aggregator, 1 or 2 hops,
untrained models (ranking cost does not depend on the weights), RecBole's fixed split
(recbole-splits/<dataset>: the same train / valid / test rows, original ids), its test users,
the items of the split's interaction files the candidates (RecBole's; every item on lastfm-kgcn),
the user's train and valid positives masked, top 50. RecBole runs in its
own virtual environment (``--recbole-python``, default /work/recbole-venv/bin/python; it needs
numpy 1.26.4, pandas 2.2.3, scipy 1.12.0) as a worker process that loads the dataset once and
then times ``Trainer.evaluate`` on the test split each time it is asked; the two systems
alternate A/B/A/B in one run and the medians are reported. Without a RecBole install only
mmkgrec's figures are printed.

The arithmetic floor: the multiply-adds of the all-items pass (formula printed with the table)
at this machine's measured float32 matmul rate on the thread count used, plus one activation
per computed (user, row, feature) at the measured vectorised tanh rate (the faster of torch's and
the native kernel's own); each side's ratio to it.
Writes benchmarks/results/kgcn_recbole.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_RECBOLE_PYTHON = "/work/recbole-venv/bin/python"
K_TOP = 50


# ---- RecBole side (runs inside the RecBole venv; imports nothing of mmkgrec) --------------------
def recbole_worker(args: argparse.Namespace) -> None:
    """Load the dataset once, print one JSON line of facts, then time one test evaluation per
    ``run`` line read from stdin (one JSON line each) until ``quit``."""
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.knowledge_aware_recommender import KGCN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    config = Config(model="KGCN", dataset=args.dataset, config_dict={
        "data_path": args.atomic, "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id", "rating"],
                     "kg": ["head_id", "relation_id", "tail_id"],
                     "link": ["item_id", "entity_id"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "embedding_size": args.dim, "n_iter": args.hops, "neighbor_sample_size": args.neighbors,
        "aggregator": "sum", "eval_args": {"group_by": "user", "order": "RO", "mode": "full"},
        "metrics": ["Recall", "NDCG"], "topk": [K_TOP], "valid_metric": f"NDCG@{K_TOP}",
        "eval_batch_size": args.eval_batch, "device": "cpu", "use_gpu": False, "seed": 0,
        "reproducibility": True, "show_progress": False, "state": "ERROR",
        "checkpoint_dir": tempfile.mkdtemp(prefix="recbole-ckpt-"), "worker": 0})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    _, _, test_data = data_preparation(config, dataset)
    model = KGCN(config, test_data._dataset).eval()
    trainer = Trainer(config, model)
    torch.set_num_threads(args.threads)
    users = len(getattr(test_data, "uid_list", []))
    print(json.dumps({"ready": True, "users": users, "items": int(dataset.item_num) - 1,
                      "entities": int(dataset.entity_num), "relations": int(dataset.relation_num),
                      "threads": torch.get_num_threads(), "eval_batch_size": args.eval_batch}),
          flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        with torch.no_grad():
            trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


class RecBole:
    """The worker process: ``run()`` -> seconds of one test evaluation."""

    def __init__(self, python: str, atomic: Path, dataset: str, hops: int, args) -> None:
        command = [python, __file__, "--worker", "--atomic", str(atomic), "--datasets", dataset,
                   "--hops", str(hops), "--dim", str(args.dim), "--neighbors", str(args.neighbors),
                   "--threads", str(args.threads), "--eval-batch", str(args.eval_batch)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ""}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=tempfile.gettempdir())
        self.facts = self._read()

    def _read(self) -> dict:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the RecBole worker exited ({self.process.wait()})")

    def run(self) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return float(self._read()["seconds"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
        self.process.wait(timeout=60)


def recbole_available(python: str) -> bool:
    if not Path(python).is_file():
        return False
    probe = subprocess.run([python, "-c", "import recbole, sys; sys.exit(recbole.__version__ "
                                          "!= '1.2.1')"],
                           capture_output=True, env={**os.environ, "PYTHONPATH": ""})
    return probe.returncode == 0


def write_atomic(ds, presplit: Path, root: Path, name: str) -> None:
    """RecBole atomic files of ``ds`` with the fixed split: <name>.{train,valid,test}.inter (the
    split's rows), <name>.kg (mmkgrec's triples, original ids), <name>.link (item -> entity)."""
    import numpy as np
    import pandas as pd

    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("train", "valid", "test"):
        frame = pd.read_csv(presplit / f"{part}.tsv", sep="\t", dtype=str)
        frame.columns = ["user_id:token", "item_id:token", "rating:float"]
        frame.to_csv(folder / f"{name}.{part}.inter", sep="\t", index=False)
    h, r, t = ds.triples[:, 0], ds.triples[:, 1], ds.triples[:, 2]  # [n] each
    pd.DataFrame({"head_id:token": ds.entities[h], "relation_id:token": ds.relations[r],
                  "tail_id:token": ds.entities[t]}).to_csv(folder / f"{name}.kg", sep="\t",
                                                           index=False)
    # link only the items the interaction files hold (the candidates both sides rank): RecBole
    # cannot merge an entity linked to an item it never saw (music-d's never-played songs)
    seen = set(pd.concat(pd.read_csv(presplit / f"{part}.tsv", sep="\t", dtype=str).iloc[:, 1]
                         for part in ("train", "valid", "test")))
    linked = np.isin(ds.items, list(seen))  # [n_items]
    pd.DataFrame({"item_id:token": ds.items[linked],
                  "entity_id:token": ds.entities[: ds.n_items][linked]}).to_csv(
        folder / f"{name}.link", sep="\t", index=False)


# ---- the floor -----------------------------------------------------------------------------------
def machine_rates(threads: int) -> dict:
    """Measured float32 matmul GFLOP/s (2048^3, best of 5) and vectorised tanh Gelem/s (a
    cache-resident 64 Ki elements per thread, best of 5), on ``threads`` threads. The tanh rate is the
    faster of torch's and the native kernel's own (``fused_native.tanh``, where it builds):
    the floor should not charge an activation at a rate the kernel beats."""
    import torch

    from mmkgrec.models import fused_native

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(5))
    n = threads << 16
    x, out = torch.randn(n), torch.empty(n)
    torch.tanh(x, out=out)
    rates = {"torch": min(_seconds(lambda: [torch.tanh(x, out=out) for _ in range(200)])
                          for _ in range(5))}
    if fused_native.library() is not None:
        fused_native.tanh(x, out=out)
        rates["native"] = min(
            _seconds(lambda: [fused_native.tanh(x, out=out) for _ in range(200)])
            for _ in range(5))
    source = min(rates, key=rates.__getitem__)
    return {"matmul_gflops": 2 * 2048 ** 3 / best / 1e9,
            "tanh_gelems": 200 * n / rates[source] / 1e9, "tanh_source": source,
            "tanh_gelems_by_source": {k: 200 * n / v / 1e9 for k, v in rates.items()},
            "threads": threads}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pass_work(users: int, items: int, reach0: int, dim: int, k: int, hops: int) -> dict:
    """Multiply-adds and activations of the all-items pass (user-independent work excluded):
    1 hop: U·I·(K·d mixture + K weights + d dot), U·I·d tanh; 2 hops: U·R0·(K·d + K + d·d
    linear) for the R0 entities the items reach, then the items as above, U·(R0 + I)·d
    activations."""
    if hops == 1:
        return {"macs": users * items * (k * dim + k + dim), "activations": users * items * dim,
                "formula": "U*I*(K*d + K + d) MACs + U*I*d tanh"}
    if hops != 2:
        raise SystemExit("the floor is stated for 1 and 2 hops")
    macs = users * reach0 * (k * dim + k + dim * dim) + users * items * (k * dim + k + dim)
    return {"macs": macs, "activations": users * (reach0 + items) * dim,
            "formula": "U*R0*(K*d + K + d*d) + U*I*(K*d + K + d) MACs + U*(R0 + I)*d activations"}


def plan_work(model, users: int, items: int, dim: int, k: int, candidates=None) -> dict:
    """The work the all-items pass cannot avoid given the KG's structure: rows whose sampled
    neighbours share one relation need no user input (computed once per pass, not counted),
    so per user only the plan's user-dependent rows cost mixing, activation and (2 hops) the
    d x w linear map; the user-independent items cost one d-dot each. Counted from the
    model's ranking plan (``models/fused.py: build_plan``), restricted to the ``candidates``
    (sorted item ids; None: every item) as the ranking pass is."""
    import torch

    from mmkgrec.models.fused import RankingPlan, restricted

    with torch.no_grad():
        model.prepare_ranking()
    plan = model._ranking_slots
    if not isinstance(plan, RankingPlan):
        return {}
    if candidates is not None:
        plan = restricted(plan, torch.as_tensor(candidates, dtype=torch.int64))
    n_const = len(plan.const_items)
    macs, activations = users * n_const * dim, 0
    for r, p in enumerate(plan.rounds):
        rows = len(p.rows)
        macs += users * rows * (k * dim + k)  # the neighbour mixture and its weights
        activations += users * rows * dim
        if r + 1 < len(plan.rounds):  # the next round's linear map of these rows
            macs += users * rows * dim * plan.rounds[r + 1].weight.shape[0]
    macs += users * len(plan.rounds[-1].rows) * dim  # the last round's dot with the user
    return {"macs": macs, "activations": activations,
            "rows": [len(p.rows) for p in plan.rounds], "const_items": n_const,
            "formula": "U*I_c*d + sum_r U*n_r*(K*d + K [+ d*w]) + U*n_last*d MACs + "
                       "sum_r U*n_r*d activations (n_r: user-dependent rows of round r)"}


def floor_seconds(work: dict, rates: dict) -> float:
    return (2 * work["macs"] / (rates["matmul_gflops"] * 1e9)
            + work["activations"] / (rates["tanh_gelems"] * 1e9))


# ---- the comparison -------------------------------------------------------------------------------
def compare(args: argparse.Namespace) -> list[dict]:
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kgcn_mkgcn import presplit_dir
    from mmkgrec.data import apply_presplit, load
    from mmkgrec.evaluate.ranking import time_full_ranking
    from mmkgrec.models import KGCN, default_config
    from mmkgrec.models.fused import ranking_backend

    torch.set_num_threads(args.threads)
    rates = machine_rates(args.threads)
    print(f"machine: matmul {rates['matmul_gflops']:.0f} GFLOP/s, tanh "
          f"{rates['tanh_gelems']:.2f} Gelem/s ({rates['tanh_source']}) on {args.threads} "
          "thread(s)", flush=True)
    have_recbole = recbole_available(args.recbole_python)
    if not have_recbole:
        print(f"no RecBole 1.2.1 at {args.recbole_python}: mmkgrec's figures only", flush=True)
    records = []
    atomic = Path(tempfile.mkdtemp(prefix="kgcn-recbole-"))
    for name in args.datasets:
        ds = load(name)
        presplit = Path(presplit_dir(name))
        sp = apply_presplit(ds, str(presplit))
        test_users = np.asarray(sp.ground_truth("test")[0])  # users with a test positive
        if have_recbole:
            write_atomic(ds, presplit, atomic, name)
        for hops in args.hops:
            config = KGCN.Config(**{**default_config("kgcn")["model"], "dim": args.dim,
                                    "n_neighbors": args.neighbors, "n_hops": hops,
                                    "aggregator": "sum"})
            torch.manual_seed(0)
            model = KGCN(ds, sp, config, seed=0)
            nb = model.backbone.neighbors.long()
            reach0 = len(torch.unique(torch.cat([torch.arange(ds.n_items),
                                                 nb[:ds.n_items].reshape(-1)])))

            def ours(model=model, sp=sp, users=test_users) -> float:
                return time_full_ranking(model, sp, "test", k=K_TOP, batch_users=args.batch_users,
                                         users=users)

            recbole = RecBole(args.recbole_python, atomic, name, hops, args) if have_recbole \
                else None
            ours()  # warm-up
            if recbole is not None:
                recbole.run()
            times: dict[str, list[float]] = {"mmkgrec": [], "recbole": []}
            for _ in range(args.repeats):  # A/B/A/B
                times["mmkgrec"].append(ours())
                if recbole is not None:
                    times["recbole"].append(recbole.run())
            if recbole is not None:
                recbole.close()
            ranked = sp.candidate_items("test")  # None: every item
            n_ranked = ds.n_items if ranked is None else len(ranked)
            work = pass_work(len(test_users), n_ranked, reach0, args.dim, args.neighbors, hops)
            floor = floor_seconds(work, rates)
            structure = plan_work(model, len(test_users), n_ranked, args.dim, args.neighbors,
                                  ranked)
            row = {"dataset": name, "dim": args.dim, "neighbors": args.neighbors, "hops": hops,
                   "mmkgrec_users": len(test_users), "mmkgrec_items": n_ranked,
                   "mmkgrec_s": statistics.median(times["mmkgrec"]),
                   "mmkgrec_backend": ranking_backend(), "mmkgrec_batch_users": args.batch_users,
                   "floor_s": floor, "macs": work["macs"], "activations": work["activations"],
                   "floor_formula": work["formula"], "reach0": reach0, "rates": rates,
                   "plan_floor_s": floor_seconds(structure, rates) if structure else None,
                   "plan_work": structure,
                   "threads": args.threads, "repeats": args.repeats, "top_k": K_TOP,
                   "mmkgrec_all_s": times["mmkgrec"]}
            if recbole is not None:
                row.update({"recbole_users": recbole.facts["users"],
                            "recbole_items": recbole.facts["items"],
                            "recbole_s": statistics.median(times["recbole"]),
                            "recbole_eval_batch_size": args.eval_batch,
                            "recbole_all_s": times["recbole"]})
            records.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("all_s")}),
                  flush=True)
    table(records)
    return records


PLAN_FORMULA = ("the user-dependent rows of the plan only (rows whose neighbours share one "
                "relation are user-independent and computed once)")


def table(records: list[dict]) -> None:
    print("\n| dataset | dim | neighbours | hops | mmkgrec users / items | RecBole users / items "
          "| mmkgrec s | RecBole s | speed-up | floor s | mmkgrec / floor | RecBole / floor "
          "| plan floor s | mmkgrec / plan floor |")
    print("|---" * 14 + "|")
    for r in records:
        rb = r.get("recbole_s")
        ratio = "-" if rb is None else f"{rb / r['mmkgrec_s']:.1f}x"
        rb_s = "-" if rb is None else f"{rb:.2f}"
        rb_floor = "-" if rb is None else f"{rb / r['floor_s']:.0f}"
        print(f"| {r['dataset']} | {r['dim']} | {r['neighbors']} | {r['hops']} "
              f"| {r['mmkgrec_users']} / {r['mmkgrec_items']} "
              f"| {r.get('recbole_users', '-')} / {r.get('recbole_items', '-')} "
              f"| {r['mmkgrec_s']:.3f} | {rb_s} | {ratio} | {r['floor_s']:.4f} "
              f"| {r['mmkgrec_s'] / r['floor_s']:.1f} | {rb_floor} "
              + ("| - | - |" if not r.get("plan_floor_s") else
                 f"| {r['plan_floor_s']:.4f} | {r['mmkgrec_s'] / r['plan_floor_s']:.1f} |"))
    if records:
        r = records[0]
        print(f"\nmedians of {r['repeats']} alternating passes; {r['threads']} thread(s); top "
              f"{r['top_k']}; floor: " + "; ".join(sorted({f"{x['hops']} hop(s): "
                                                            f"{x['floor_formula']}" for x in records}))
              + f" (R0: entities the items reach); plan floor: {PLAN_FORMULA}; at "
              f"{r['rates']['matmul_gflops']:.0f} GFLOP/s matmul and "
              f"{r['rates']['tanh_gelems']:.2f} Gelem/s tanh")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["lastfm-kgcn", "music-d"])
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--neighbors", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per side (median)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--batch-users", type=int, default=256, help="mmkgrec users per block")
    parser.add_argument("--eval-batch", type=int, default=4096, help="RecBole eval_batch_size")
    parser.add_argument("--recbole-python", default=DEFAULT_RECBOLE_PYTHON)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default benchmarks/results/kgcn_recbole.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--atomic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.dataset, args.hops = args.datasets[0], args.hops[0]
        recbole_worker(args)
        return
    start = time.perf_counter()
    records = compare(args)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import RESULTS

    path = args.out or RESULTS / "kgcn_recbole.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1) + "\n")
    print(f"\nwrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
