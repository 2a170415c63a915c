"""What the KG and each modality add to tuned MMKG-CF: its ablations, with paired tests.

Runs on top of an equal-budget campaign folder (``mmkgrec benchmark ... --tune-trials N --out
CAMPAIGN``, docs/results.md section 8), whose ``mmkgcf`` and ``lightgcn`` cells are the references.
Every variant is MMKG-CF at the campaign's tuned configuration (``CAMPAIGN/tuned``) with one
change, trained on the same fixed split with the same seeds, tested once:

- ``no KG``: ``kg_weight=0`` and ``kg_item_knn=0`` (the joint graph keeps users and songs only,
  no KG item-item graph); with both KG routes tuned on, also ``no KG item graph``
  (``kg_item_knn=0``) and ``no KG edges`` (``kg_weight=0``);
- ``KG``: ``kg_weight=1`` (only when the tuned model has no KG route, so that both sides exist);
- with user-side KG facts (lastfm-kgcn-content: "the user tagged the artist"): ``no user facts``
  (``user_kg_weight=0``), or ``+ user facts`` (``user_kg_weight=1``) when the tuned weight is 0;
  likewise with user-user links (HetRec friendships): ``no friendships`` (``social_weight=0``)
  or ``+ friendships`` (``social_weight=1``);
- with modalities (lastfm-kgcn-content): ``KG only`` (``modalities=[]``), ``+ text``,
  ``+ sentiment`` and ``+ text + sentiment``; in the gated route the content gates are learned
  (``learn_gates=true``, opening from closed). The tag item-item graph (``tag_item_knn``) is
  content too: with it tuned on, ``KG only`` and the modality rows drop it
  (``tag_item_knn=0``) and ``+ tags`` keeps it alone (``modalities=[]``); the tuned cell is then
  "all".

A variant equal to the tuned configuration is not re-run: the campaign's cell is used. Each
variant is a `mmkgrec benchmark` folder under ``CAMPAIGN/ablation/<variant>`` (reruns resume).
Then one table: mean ± std over seeds of Recall@20 / NDCG@20, and per-user paired Wilcoxon tests
(users x seeds pooled, or with ``--average-seeds`` each user averaged over the seeds first, the
stricter test of the benchmark tables; Holm-corrected over the table, each comparison once) of
every row against tuned MMKG-CF and against tuned LightGCN. Usage::

    OMP_NUM_THREADS=1 python benchmarks/mmkg_ablation.py --campaign benchmarks/results/mmkg-tuned \\
        --dataset music-d --presplit-root ../shared/data/recbole-splits --seeds 3

``--content-scope`` must be the campaign's (``no-eval`` for a ``--content-scope no-eval`` one);
``--reference FOLDER`` takes the tuned LightGCN cells from another campaign of the same split and
scope. In MMKG-CF's latent content route (``content_route = "latent"``) the content rows only
choose the modalities: that route has no gates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmkgrec.config import file_slug
from mmkgrec.experiments.benchmark import BenchmarkSpec, run_benchmark
from mmkgrec.experiments.results import per_user_path
from mmkgrec.experiments.significance import holm, paired_tests
from mmkgrec.models import default_config
from mmkgrec.train.run import read_config_file

METRICS = ("recall@20", "ndcg@20")
TUNED = "MMKG-CF, tuned"
LIGHTGCN = "LightGCN, tuned"


def variants(tuned: dict, modalities: list[str], user_facts: bool = False,
             user_links: bool = False) -> dict[str, list[str]]:
    """Variant name -> ``--set`` overrides of mmkgcf's tuned configuration."""
    model = {**default_config("mmkgcf")["model"], **tuned.get("model", {})}
    edges, item_graph = float(model.get("kg_weight", 1.0)), int(model.get("kg_item_knn", 0))
    out = {"no KG": ["mmkgcf.kg_weight=0", "mmkgcf.kg_item_knn=0"]}
    if edges == 0.0 and item_graph == 0:
        out = {"KG": ["mmkgcf.kg_weight=1"]}
    elif edges > 0.0 and item_graph > 0:  # each of the KG's two routes on its own
        out["no KG item graph"] = ["mmkgcf.kg_item_knn=0"]
        out["no KG edges"] = ["mmkgcf.kg_weight=0"]
    if user_facts and float(model.get("user_kg_weight", 0.0)) > 0.0:
        out["no user facts"] = ["mmkgcf.user_kg_weight=0"]
    elif user_facts:  # (a dataset without user facts has no such row)
        out["+ user facts"] = ["mmkgcf.user_kg_weight=1"]
    if user_links and float(model.get("social_weight", 0.0)) > 0.0:
        out["no friendships"] = ["mmkgcf.social_weight=0"]
        # LightGCN plus the friendships, at the tuned settings: what the social links alone give
        out["friendships only (no KG or content)"] = [
            "mmkgcf.kg_weight=0", "mmkgcf.kg_item_knn=0", "mmkgcf.user_kg_weight=0",
            *(["mmkgcf.modalities=[]"] if modalities else []), "mmkgcf.tag_item_knn=0"]
    elif user_links:  # (a dataset without user-user links has no such row)
        out["+ friendships"] = ["mmkgcf.social_weight=1"]
    if modalities:
        # the gated route opens its gates for a content row; the latent route has none
        gates = [] if model.get("content_route") == "latent" else ["mmkgcf.learn_gates=true"]
        tags = int(model.get("tag_item_knn", 0)) > 0
        no_tags = ["mmkgcf.tag_item_knn=0"] if tags else []
        out["KG only"] = ["mmkgcf.modalities=[]", *no_tags]
        if tags:
            out["+ tags"] = ["mmkgcf.modalities=[]"]
        for name in modalities:
            out[f"+ {name}"] = [f'mmkgcf.modalities=["{name}"]', *gates, *no_tags]
        if len(modalities) > 1:
            both = ", ".join(f'"{m}"' for m in modalities)
            out["+ " + " + ".join(modalities)] = [f"mmkgcf.modalities=[{both}]", *gates, *no_tags]
    return out


def is_tuned(overrides: list[str], tuned: dict, modalities: list[str]) -> bool:
    """Whether a variant's overrides leave the tuned configuration unchanged."""
    model = {**default_config("mmkgcf")["model"], **tuned.get("model", {})}
    for pair in overrides:
        key, value = pair.removeprefix("mmkgcf.").split("=", 1)
        if key == "modalities":
            chosen = model.get("modalities", modalities)
            if sorted(json.loads(value)) != sorted(chosen):
                return False
        elif key == "learn_gates":
            if bool(model.get("learn_gates", True)) != (value == "true"):
                return False
        elif float(model.get(key, "nan")) != float(value):
            return False
    return True


def pooled(folder: Path, dataset: str, model: str, seeds: int, average: bool = False
           ) -> dict[str, np.ndarray] | None:
    """Per-user test metrics of one cell, seeds concatenated ([users x seeds]) or averaged
    ([users]); None if missing."""
    files = [per_user_path(folder, dataset, model, s) for s in range(seeds)]
    if not all(f.is_file() for f in files):
        return None
    loaded = [np.load(f) for f in files]
    if average:
        return {m: np.mean([z[m] for z in loaded], axis=0) for m in METRICS}
    return {m: np.concatenate([z[m] for z in loaded]) for m in METRICS}


def run(campaign: Path, dataset: str, presplit_root: str, seeds: int, only: list[str],
        content_scope: str = "train", reference: Path | None = None,
        average_seeds: bool = False) -> Path:
    tuned_path = campaign / "tuned" / file_slug(dataset) / "mmkgcf.toml"
    model_options, _ = read_config_file(tuned_path)
    tuned = {"model": model_options}
    from mmkgrec.data import load

    loaded = load(dataset)
    modalities = sorted(loaded.modalities)
    table = variants(tuned, modalities, user_facts=len(loaded.user_triples) > 0,
                     user_links=len(loaded.user_links) > 0)
    folders = {TUNED: campaign, LIGHTGCN: reference or campaign}
    for name, overrides in table.items():
        if is_tuned(overrides, tuned, modalities):
            folders[name] = campaign
            continue
        folder = campaign / "ablation" / file_slug(dataset) / file_slug(name)
        folders[name] = folder
        if only and name not in only:
            continue
        spec = BenchmarkSpec.parse(datasets=[dataset], models=["mmkgcf"], protocol="topk",
                                   seeds=list(range(seeds)), presplit_root=presplit_root,
                                   tuned=str(campaign / "tuned"), overrides=overrides,
                                   content_scope=content_scope)
        print(f"== {dataset} · {name}: {' '.join(overrides)}", flush=True)
        run_benchmark(spec, folder, progress=False)
    return summarise(campaign, dataset, seeds, folders, table, average_seeds)


def summarise(campaign: Path, dataset: str, seeds: int, folders: dict[str, Path],
              table: dict[str, list[str]], average_seeds: bool = False) -> Path:
    per_user, rows = {}, []
    for name, folder in folders.items():
        model = "lightgcn" if name == LIGHTGCN else "mmkgcf"
        values = pooled(folder, dataset, model, seeds, average_seeds)
        if values is None:
            continue
        per_user[name] = values
        frame = pd.read_csv(folder / "results.csv")
        frame = frame[(frame["model"] == model) & (frame["dataset"] == dataset)]
        row = {"variant": name, "set": " ".join(table.get(name, [])) or "(tuned)",
               "seeds": len(frame)}
        for metric in METRICS:
            column = frame[f"test_{metric}"].to_numpy()
            spread = column.std(ddof=1) if len(column) > 1 else 0.0
            row[metric] = f"{column.mean():.4f} ± {spread:.4f}"
        rows.append(row)
    tests, labels = [], []
    # each comparison once: no row that is the tuned cell again, LightGCN only as a reference
    duplicates = {n for n, f in folders.items() if f == campaign and n != TUNED}
    for reference in (TUNED, LIGHTGCN):
        for name, values in per_user.items():
            if name in (reference, LIGHTGCN) or name in duplicates or reference not in per_user:
                continue
            for metric in METRICS:
                tests.append(paired_tests(values[metric], per_user[reference][metric]))
                labels.append((name, reference, metric))
    adjusted = holm([t["wilcoxon_p"] for t in tests]) if tests else []
    frame = pd.DataFrame(rows)
    for (name, reference, metric), test, p in zip(labels, tests, adjusted):
        column = f"{metric} vs {reference.split(',')[0]} (Holm p)"
        frame.loc[frame["variant"] == name, column] = (
            f"{'+' if test['mean_diff'] > 0 else ''}{test['mean_diff']:.4f} (p={p:.2g})")
    frame = frame.fillna("")
    out = campaign / "ablation" / f"{file_slug(dataset)}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out.with_suffix(".csv"), index=False)
    lines = [f"# MMKG-CF ablations on {dataset} (topk, test, {seeds} seeds, tuned configuration "
             f"of {campaign / 'tuned'})", "",
             "Per-user paired Wilcoxon tests, "
             + ("each user averaged over the seeds" if average_seeds else "users x seeds pooled")
             + ", Holm over every test of the table; a difference is test minus reference.", "",
             "| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaign", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--presplit-root", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated variant names to run")
    parser.add_argument("--content-scope", default="train", choices=["train", "no-eval", "all"])
    parser.add_argument("--reference", type=Path, default=None,
                        help="folder of the tuned LightGCN cells (default: the campaign)")
    parser.add_argument("--average-seeds", action="store_true",
                        help="test users averaged over the seeds (default: users x seeds pooled)")
    args = parser.parse_args()
    run(args.campaign, args.dataset, args.presplit_root, args.seeds,
        [v for v in args.only.split(",") if v], args.content_scope, args.reference,
        args.average_seeds)


if __name__ == "__main__":
    main()
