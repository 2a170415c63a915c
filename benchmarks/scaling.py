"""Cost curves: training and full-ranking cost of MKGCN, KGCN and LightGCN vs data size.

Synthetic music MMKGs of growing size (``n_items`` = N, ``n_users`` = N/2, 20 interactions per
user, ~4.3 N KG triples; :func:`scaled_config`) are generated with the linear-time candidate-pool
generator (``SyntheticConfig.candidates``), written in the native format and loaded
memory-mapped. Each (size, model, variant) is measured in a FRESH subprocess, so peak RSS is its
own. Per measurement, with the model's topk defaults (``models/configs/<model>.toml``):

- ``epoch_s``: one epoch's training rows built by the sampler (timed) + ``n_batches`` x the mean
  optimiser step of ``--batches`` steps after ``--warmup`` steps (so the epoch time is
  EXTRAPOLATED from a fixed number of batches); ``samples_per_s`` = epoch rows / ``epoch_s``;
- ``rank_s_per_1000``: seconds to score, mask and top-50 1,000 users over the split's
  candidate items (timed on a sample of at least 8 test users, scaled, in calls that do not
  prepare again), plus ``prepare_s`` (the once-per-pass set-up: the user-independent
  precomputation and what the first ranked user builds, e.g. the native kernel's tables);
- ``peak_rss_mib``: the subprocess's peak resident set (ru_maxrss; memory-mapped dataset pages
  count while resident);
- ``profile``: the top operators of a few training steps (torch.profiler, self CPU time).

Variants: ``dense`` (Adam, the default) and, for the KG models, ``sparse``
(``sparse_embeddings=True``: row-sparse gradients + SparseAdam). Growth exponents are fitted on
log-log (``np.polyfit``) against the number of interactions.

    python benchmarks/scaling.py run --sizes 1e4,1e5,1e6 --threads 1   # writes results/scaling
    python benchmarks/scaling.py report                                # tables + plots again
    python benchmarks/scaling.py gpu                                   # GPU table (gpu_check.sh)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mmkgrec.paths import cache_dir

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "scaling"
MODELS = ("mkgcn", "kgcn", "lightgcn")
SPARSE_OK = ("mkgcn", "kgcn")  # LightGCN reads its whole tables each step (graph propagation)
RANK_K = 50
COLORS = {"mkgcn": "tab:red", "kgcn": "tab:blue", "lightgcn": "tab:green"}
MIN_RANK_USERS = 8  # users timed at least, whatever the time budget
SCORE_CELLS = 1 << 25  # floats of one ranking block's per-(user, item) vectors: bounded memory


class _Stop(Exception):
    """Raised from the on_batch callback once enough steps are timed."""


def scaled_config(n_items: int):
    """The synthetic config of size N: N songs, N/2 users, 20 rows per user, pooled generator."""
    from mmkgrec.data.synthetic import SyntheticConfig

    return SyntheticConfig(
        n_users=max(50, n_items // 2), n_items=n_items, n_artists=max(24, n_items // 25),
        n_albums=max(48, n_items // 10), n_genres=24, n_tags=100, interactions_per_user=20,
        candidates=200)


def rss_mib() -> float:
    """Current resident set (VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- one dataset --------------------------------------------------------------------------------
def generate_one(size: int, data_dir: Path) -> dict:
    """Generate size N, write it natively, build its memory-map cache; report seconds."""
    from mmkgrec.data.formats.native import read_native, write_native
    from mmkgrec.data.synthetic import generate

    start = time.perf_counter()
    ds = generate(scaled_config(size), seed=0)
    generate_s = time.perf_counter() - start
    target = data_dir / f"n{size}"
    start = time.perf_counter()
    write_native(ds, target)
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    read_native(target, mmap=True)  # builds the .npy cache once
    cache_s = time.perf_counter() - start
    return {"size": size, "generate_s": generate_s, "write_s": write_s, "mmap_cache_s": cache_s,
            "n_users": ds.n_users, "n_items": ds.n_items, "n_entities": ds.n_entities,
            "n_interactions": len(ds.interactions), "n_triples": len(ds.triples),
            "peak_rss_mib": peak_rss_mib()}


# ---- one measurement ----------------------------------------------------------------------------
def measure_one(data: Path, model_name: str, variant: str, device: str, threads: int,
                warmup: int, batches: int, rank_seconds: float, profile_steps: int,
                dataset=None) -> dict:
    """Train a few steps and rank a few users of one model on one dataset (this process)."""
    import torch

    from mmkgrec.data import split
    from mmkgrec.data.formats.native import read_native
    from mmkgrec.evaluate.ranking import rank_stage
    from mmkgrec.models import default_config, model_class
    from mmkgrec.train import NegativeSampler, TrainConfig, Trainer, seed_everything

    torch.set_num_threads(threads)
    record: dict = {"model": model_name, "variant": variant, "device": device,
                    "threads": threads, "rss_mib": {}}
    stage = record["rss_mib"]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    start = time.perf_counter()
    ds = dataset if dataset is not None else read_native(data, mmap=True)
    record["load_s"] = time.perf_counter() - start
    stage["loaded"] = rss_mib()
    start = time.perf_counter()
    sp = split(ds, protocol="topk", seed=0)
    record["split_s"] = time.perf_counter() - start
    stage["split"] = rss_mib()
    record.update(n_users=ds.n_users, n_items=ds.n_items, n_entities=ds.n_entities,
                  n_interactions=len(ds.interactions), n_triples=len(ds.triples),
                  n_train=len(sp.train))

    defaults = default_config(model_name, protocol="topk")
    cls = model_class(model_name)
    config = cls.Config(**defaults["model"])
    train = TrainConfig.parse(**{**defaults["train"], "device": device, "patience": None,
                                 "sparse_embeddings": variant == "sparse"})
    record["batch_size"], record["dim"] = train.batch_size, getattr(config, "dim", None)
    start = time.perf_counter()
    seed_everything(0)
    model = cls(ds, sp, config, seed=0)
    record["build_s"] = time.perf_counter() - start
    record["n_parameters"] = sum(p.numel() for p in model.parameters())
    stage["model"] = rss_mib()

    # The epoch's training rows, as the trainer builds them.
    start = time.perf_counter()
    sampler = NegativeSampler(sp, train.negatives, train.alpha, train.n_negatives, 0)
    rows = sampler.epoch_pairs() if train.loss == "bce" else sampler.epoch_triples()
    record["epoch_rows_s"] = time.perf_counter() - start
    n_rows = len(rows[0])
    del rows, sampler

    # Optimiser steps through the real Trainer, stopped after warmup + batches steps.
    stamps: list[float] = []

    def on_batch(epoch: int, batch: int) -> None:
        sync()
        stamps.append(time.perf_counter())
        if len(stamps) > warmup + batches:
            raise _Stop

    with contextlib.suppress(_Stop):
        Trainer(model, sp, train, progress=False).fit(on_batch=on_batch, evaluate_test=False)
    steps = np.diff(stamps[warmup:])  # [<= batches]
    record["step_s"] = float(steps.mean())
    record["n_rows"] = n_rows
    record["n_batches"] = math.ceil(n_rows / train.batch_size)
    record["epoch_s"] = record["epoch_rows_s"] + record["n_batches"] * record["step_s"]
    record["samples_per_s"] = n_rows / record["epoch_s"]
    record["steps_timed"] = len(steps)
    stage["trained"] = rss_mib()

    if profile_steps:
        record["profile"] = _profile(model, sp, train, profile_steps)

    # Full ranking over all items for a sample of test users, until ~rank_seconds are spent.
    users = sp.ground_truth("test")[0]
    users = np.random.default_rng(0).permutation(users)
    width = record["dim"] or 64
    if model_name == "lightgcn":
        block = 256
    else:  # KG models build [block, items, dim] vectors per block
        cells = SCORE_CELLS * (16 if device.startswith("cuda") else 1)  # GPUs have the memory
        block = int(max(1, min(256, cells // (ds.n_items * width))))
    record["rank_batch_users"] = block
    model.eval()
    with torch.no_grad():
        sync()
        start = time.perf_counter()
        model.prepare_ranking()
        sync()
        record["prepare_s"] = time.perf_counter() - start
    # The pass's set-up (prepare_ranking: KGCN / MKGCN build their plan, LightGCN propagates;
    # plus what the first ranked user builds once per pass: the native kernel's tables and the
    # candidate-set view) is timed once and reported as prepare_s; then one block, then as many
    # users as fit the budget, without preparing again (rank_stage(prepare=False)). At least
    # MIN_RANK_USERS users are timed so that the per-user figure is not one user's noise.
    limit = min(len(users) - 1, 1000)
    with torch.no_grad():  # the first user: the rest of the pass's set-up
        sync()
        start = time.perf_counter()
        rank_stage(model, sp, "test", users[:1], RANK_K, block, None, prepare=False)
        sync()
        record["first_user_s"] = time.perf_counter() - start
        record["prepare_s"] += record["first_user_s"]
    users = users[1:]
    spent, done = 0.0, 0
    for want in (block, None):
        if want is None:  # the second call: fill the time budget
            per_user = max(spent, 1e-6) / done
            want = int(min(limit - done, max(0.0, rank_seconds - spent) / per_user))
            want = max(want, min(limit, MIN_RANK_USERS) - done)
            want -= want % block if want > block else 0
        if want <= 0:
            break
        chunk = users[done:done + want]
        sync()
        start = time.perf_counter()
        rank_stage(model, sp, "test", chunk, RANK_K, block, None, prepare=False)
        sync()
        spent += time.perf_counter() - start
        done += len(chunk)
    record["rank_users"] = done
    record["rank_s_per_1000"] = spent / done * 1000
    stage["ranked"] = rss_mib()
    record["peak_rss_mib"] = peak_rss_mib()
    if device.startswith("cuda"):
        record["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return record


def _profile(model, sp, train, steps: int, warmup: int = 2) -> list[dict]:
    """Top operators (self CPU time) of ``steps`` training steps after ``warmup`` steps."""
    from torch.profiler import ProfilerActivity, profile

    from mmkgrec.train import Trainer

    prof = profile(activities=[ProfilerActivity.CPU])
    count = [0]

    def on_batch(epoch: int, batch: int) -> None:
        count[0] += 1
        if count[0] == warmup:
            prof.start()
        elif count[0] == warmup + steps:
            prof.stop()
            raise _Stop

    with contextlib.suppress(_Stop):
        Trainer(model, sp, train, progress=False).fit(on_batch=on_batch, evaluate_test=False)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / steps,
             "share": e.self_cpu_time_total / total} for e in events[:8]]


# ---- the run ------------------------------------------------------------------------------------
def _subprocess(args: list[str], timeout: float) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args) -> None:
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    models = args.models.split(",")
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scaling.json"
    results = json.loads(path.read_text()) if path.is_file() and args.resume else {
        "datasets": [], "measurements": []}
    results["setup"] = {
        "threads": args.threads, "device": "cpu", "cpu_count": os.cpu_count(),
        "machine": f"{os.cpu_count()}-core VM, 23 GiB RAM, load average "
                   f"{os.getloadavg()[0]:.1f} at the start",
        "command": " ".join([Path(sys.executable).name, "benchmarks/scaling.py", *sys.argv[1:]]),
        "warmup": args.warmup, "batches": args.batches, "rank_seconds": args.rank_seconds,
        "torch": __import__("torch").__version__,
    }
    wall = time.perf_counter()
    for size in sizes:
        have = {d["size"] for d in results["datasets"] if "error" not in d}
        if size not in have or not (data_dir / f"n{size}" / "dataset.json").is_file():
            print(f"generating N={size:,} ...", flush=True)
            info = _subprocess(["generate", "--size", str(size), "--data-dir", str(data_dir)],
                               args.timeout)
            info["size"] = size
            results["datasets"] = [d for d in results["datasets"] if d["size"] != size] + [info]
            print(f"  {info}", flush=True)
            _save(results, path)
            if "error" in info:
                continue
        for model in models:
            for variant in ("dense", "sparse") if model in SPARSE_OK else ("dense",):
                if args.resume and any(m.get("size") == size and m["model"] == model
                                       and m["variant"] == variant and "error" not in m
                                       for m in results["measurements"]):
                    continue
                print(f"N={size:,} {model} {variant} ...", flush=True)
                start = time.perf_counter()
                record = _subprocess([
                    "measure", "--data", str(data_dir / f"n{size}"), "--model", model,
                    "--variant", variant, "--threads", str(args.threads),
                    "--warmup", str(args.warmup), "--batches", str(args.batches),
                    "--rank-seconds", str(args.rank_seconds),
                    "--profile-steps", str(args.profile_steps)], args.timeout)
                record.update(size=size, model=model, variant=variant,
                              wall_s=time.perf_counter() - start)
                results["measurements"] = [
                    m for m in results["measurements"]
                    if not (m.get("size") == size and m["model"] == model
                            and m["variant"] == variant)] + [record]
                _save(results, path)
                print("  " + _line(record), flush=True)
    results["setup"]["wall_s"] = time.perf_counter() - wall
    _save(results, path)
    report(out)


def _save(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1) + "\n")


def _line(r: dict) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    return (f"epoch {r['epoch_s']:.1f} s (step {r['step_s'] * 1e3:.1f} ms x {r['n_batches']:,}), "
            f"{r['samples_per_s']:,.0f} samples/s, rank {r['rank_s_per_1000']:.2f} s/1000 users "
            f"(+ prepare {r['prepare_s']:.2f} s), peak RSS {r['peak_rss_mib']:,.0f} MiB, "
            f"wall {r.get('wall_s', 0):.0f} s")


# ---- report -------------------------------------------------------------------------------------
METRICS = {  # key: (label, unit)
    "epoch_s": ("train seconds per epoch (extrapolated)", "s"),
    "samples_per_s": ("training samples per second", "samples/s"),
    "rank_s_per_1000": ("full-ranking seconds per 1,000 users", "s"),
    "peak_rss_mib": ("peak RSS", "MiB"),
}


def fit_exponents(measurements: list[dict]) -> dict:
    """Per (model, variant, metric): slope of log(metric) vs log(interactions), overall and
    between the two largest sizes."""
    out: dict = {}
    ok = [m for m in measurements if "error" not in m]
    for key in sorted({(m["model"], m["variant"]) for m in ok}):
        rows = sorted((m for m in ok if (m["model"], m["variant"]) == key),
                      key=lambda m: m["n_interactions"])
        if len(rows) < 2:
            continue
        x = np.log([m["n_interactions"] for m in rows])
        fits = {}
        for metric in METRICS:
            y = np.log([max(m[metric], 1e-9) for m in rows])
            fits[metric] = {"exponent": float(np.polyfit(x, y, 1)[0]),
                            "last_segment": float((y[-1] - y[-2]) / (x[-1] - x[-2]))}
        out[f"{key[0]}/{key[1]}"] = fits
    return out


def report(out: Path) -> None:
    results = json.loads((out / "scaling.json").read_text())
    results["exponents"] = fit_exponents(results["measurements"])
    _save(results, out / "scaling.json")
    _plots(results, out)
    (out / "scaling.md").write_text(_markdown(results))
    print((out / "scaling.md").read_text())


def _plots(results: dict, out: Path) -> None:
    from matplotlib.figure import Figure

    ok = [m for m in results["measurements"] if "error" not in m]
    for metric, (label, unit) in METRICS.items():
        figure = Figure(figsize=(6, 4), layout="constrained")
        axis = figure.subplots()
        for model, variant in sorted({(m["model"], m["variant"]) for m in ok}):
            rows = sorted((m for m in ok if (m["model"], m["variant"]) == (model, variant)),
                          key=lambda m: m["n_interactions"])
            fit = results["exponents"].get(f"{model}/{variant}", {}).get(metric)
            name = f"{model} ({variant})" + (f": slope {fit['exponent']:.2f}" if fit else "")
            axis.loglog([m["n_interactions"] for m in rows], [m[metric] for m in rows],
                        "o-" if variant == "dense" else "s--", label=name,
                        color=COLORS.get(model, "black"))
        axis.set_xlabel("interactions (items = interactions / 10)")
        axis.set_ylabel(f"{label} [{unit}]")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
        figure.savefig(out / f"{metric}.png", dpi=100)


def _markdown(results: dict) -> str:
    setup = results["setup"]
    lines = [
        "# Cost curves (synthetic MMKGs)",
        "",
        (f"Command: `{setup['command']}`; torch {setup['torch']}, device {setup['device']}, "
        f"{setup['threads']} intra-op thread(s) (OMP_NUM_THREADS={setup['threads']}), "
        f"{setup['machine']}: absolute seconds are noisy; the slopes are what to read. "
        f"Epoch times are extrapolated from {setup['batches']} timed steps (after "
        f"{setup['warmup']} warm-up steps) plus the timed construction of one epoch's rows. "
        f"Each measurement ran in a fresh subprocess. Total wall time "
        f"{setup.get('wall_s', 0) / 60:.1f} min."),
        "",
        "## Datasets",
        "",
        ("| N (items) | users | entities | interactions | triples | generate s | write s | "
        "mmap cache s |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in sorted(results["datasets"], key=lambda d: d["size"]):
        if "error" in d:
            lines.append(f"| {d['size']:,} | error: {d['error']} |||||||")
            continue
        lines.append(f"| {d['n_items']:,} | {d['n_users']:,} | {d['n_entities']:,} | "
                     f"{d['n_interactions']:,} | {d['n_triples']:,} | {d['generate_s']:.1f} | "
                     f"{d['write_s']:.1f} | {d['mmap_cache_s']:.1f} |")
    lines += ["", "## Measurements", "",
              ("| N | model | variant | load s | split s | build s | step ms | batches | "
              "epoch s | samples/s | prepare s | rank s / 1k users | peak RSS MiB |"),
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in sorted(results["measurements"], key=lambda m: (m["model"], m["variant"], m["size"])):
        if "error" in m:
            lines.append(f"| {m['size']:,} | {m['model']} | {m['variant']} | error: "
                         f"{m['error']} ||||||||||")
            continue
        lines.append(
            f"| {m['size']:,} | {m['model']} | {m['variant']} | {m['load_s']:.1f} | "
            f"{m['split_s']:.1f} | {m['build_s']:.1f} | {m['step_s'] * 1e3:.1f} | "
            f"{m['n_batches']:,} | {m['epoch_s']:,.1f} | {m['samples_per_s']:,.0f} | "
            f"{m['prepare_s']:.2f} | {m['rank_s_per_1000']:,.1f} | {m['peak_rss_mib']:,.0f} |")
    lines += ["", "## Growth exponents (log-log slope vs interactions)", "",
              "`fit`: np.polyfit over all sizes; `last`: between the two largest sizes.", "",
              "| model / variant | " + " | ".join(label for label, _ in METRICS.values()) + " |",
              "|---|" + "---:|" * len(METRICS)]
    for key, fits in results["exponents"].items():
        cells = [f"{fits[m]['exponent']:.2f} (last {fits[m]['last_segment']:.2f})"
                 for m in METRICS]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    profiles = [m for m in results["measurements"] if m.get("profile")]
    if profiles:
        lines += ["", "## Where a training step goes (largest size, torch.profiler)", ""]
        largest = max(m["size"] for m in profiles)
        for m in sorted((m for m in profiles if m["size"] == largest),
                        key=lambda m: (m["model"], m["variant"])):
            top = ", ".join(f"{p['op']} {p['self_ms_per_step']:.0f} ms ({p['share']:.0%})"
                            for p in m["profile"][:5])
            lines.append(f"- {m['model']} {m['variant']} (N={largest:,}): {top}")
    lines += ["", "Plots: " + ", ".join(f"`{m}.png`" for m in METRICS) + ". Why each curve "
              "grows as it does (profiles, fixes, limits): docs/scaling.md.", ""]
    return "\n".join(lines)


# ---- GPU table ----------------------------------------------------------------------------------
def gpu(args) -> None:
    """Training and full-ranking timings on CUDA: lastfm-kgcn and a large synthetic MMKG."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from mmkgrec.data import load

    rows = []
    datasets = []
    try:
        datasets.append(("lastfm-kgcn", load("lastfm-kgcn")))
    except Exception as error:  # noqa: BLE001 - report and continue with synthetic
        print(f"lastfm-kgcn skipped: {error}", flush=True)
    from mmkgrec.data.synthetic import generate

    start = time.perf_counter()
    datasets.append((f"synthetic N={args.size:,}", generate(scaled_config(args.size), seed=0)))
    print(f"generated synthetic N={args.size:,} in {time.perf_counter() - start:.0f} s",
          flush=True)
    for name, ds in datasets:
        for model in args.models.split(","):
            for variant in args.variants.split(","):
                if variant == "sparse" and model not in SPARSE_OK:
                    continue
                try:
                    r = measure_one(Path("."), model, variant, device, args.threads, args.warmup,
                                    args.batches, args.rank_seconds, 0, dataset=ds)
                except Exception as error:  # noqa: BLE001 - one failure must not hide the rest
                    r = {"model": model, "variant": variant,
                         "error": f"{type(error).__name__}: {error}"}
                r["dataset"] = name
                rows.append(r)
                print(f"{name:>24} {model:>9} {variant:>6} {device}: " + _line(r), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu_{device.split(':')[0]}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| dataset | model | variant | device | step ms | epoch s | samples/s | "
          "rank s / 1k users | GPU peak MiB |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        head = f"| {r['dataset']} | {r['model']} | {r['variant']} | {device} |"
        if "error" in r:
            print(f"{head} error: {r['error']} |||||")
            continue
        print(f"{head} {r['step_s'] * 1e3:.1f} | "
              f"{r['epoch_s']:.1f} | {r['samples_per_s']:,.0f} | {r['rank_s_per_1000']:.2f} | "
              f"{r.get('cuda_peak_mib', float('nan')):,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="generate, measure in subprocesses, report")
    p.add_argument("--sizes", default="1e4,1e5,1e6")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--rank-seconds", type=float, default=8.0)
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--data-dir", default=str(cache_dir("scaling")))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--resume", action="store_true", help="keep finished measurements")
    p = sub.add_parser("generate", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--data-dir", required=True)
    p = sub.add_parser("measure", help=argparse.SUPPRESS)
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--variant", default="dense")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--rank-seconds", type=float, default=8.0)
    p.add_argument("--profile-steps", type=int, default=0)
    p = sub.add_parser("report", help="rebuild scaling.md and the plots from scaling.json")
    p.add_argument("--out", default=str(OUT))
    p = sub.add_parser("gpu", help="timing table on CUDA (see benchmarks/gpu_check.sh)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--variants", default="dense,sparse")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--rank-seconds", type=float, default=5.0)
    p.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    elif args.command == "generate":
        print(json.dumps(generate_one(args.size, Path(args.data_dir))))
    elif args.command == "measure":
        print(json.dumps(measure_one(Path(args.data), args.model, args.variant, args.device,
                                     args.threads, args.warmup, args.batches, args.rank_seconds,
                                     args.profile_steps)))
    elif args.command == "report":
        report(Path(args.out))
    else:
        gpu(args)


if __name__ == "__main__":
    main()
