"""Real content on Last.FM: MKGCN with and without the HetRec tag modalities, and MMKG modes.

Content is leak-free unless a variant says otherwise: tags are rebuilt per split from the train
positives' tag assignments only (content scope ``train``, the default), and the TF-IDF / k-means
transforms are fitted on train items. Variants (each a `mmkgrec benchmark` folder under
--out/<protocol>/<variant>, so reruns resume):

- ``kg-only``: MKGCN on lastfm-kgcn-content with ``modalities=[]`` (the KG alone);
- ``text``, ``sentiment``: one modality each; ``text+sentiment``: both (train tags);
- ``text+sentiment (no-eval tags)``: both, from every tag except those on valid / test plays;
- ``text+sentiment (all tags, upper bound)``: every tag, held-out plays' included: NOT leak-free,
  a labelled upper bound only;
- ``kgcn attribute``: KGCN (ignores the modalities);
- ``entity``: MKGCN and KGCN on the entity-based MMKG (tags, moods and text clusters as entities,
  built per split from the train tags: ``--mmkg entity``).

Then one table per protocol (mean ± std over seeds) with paired per-user tests of every variant
against ``kg-only`` (top-K metrics; Holm-corrected Wilcoxon). Usage::

    OMP_NUM_THREADS=1 python benchmarks/content_ablation.py --protocols ctr,topk --seeds 3 \\
        --out benchmarks/results/content
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmkgrec.experiments.benchmark import BenchmarkSpec, run_benchmark
from mmkgrec.experiments.significance import holm, paired_tests

DATASET = "lastfm-kgcn-content"
# name -> (models, --set overrides, content scope, MMKG mode)
VARIANTS = {
    "kg-only": (["mkgcn"], ["mkgcn.modalities=[]"], "train", "attribute"),
    "text": (["mkgcn"], ['mkgcn.modalities=["text"]'], "train", "attribute"),
    "sentiment": (["mkgcn"], ['mkgcn.modalities=["sentiment"]'], "train", "attribute"),
    "text+sentiment": (["mkgcn"], [], "train", "attribute"),
    "text+sentiment (no-eval tags)": (["mkgcn"], [], "no-eval", "attribute"),
    "text+sentiment (all tags, upper bound)": (["mkgcn"], [], "all", "attribute"),
    "kgcn attribute": (["kgcn"], [], "train", "attribute"),
    "entity": (["mkgcn", "kgcn"], [], "train", "entity"),
}
METRICS = {"ctr": ["auc", "f1", "recall@20", "ndcg@20"], "topk": ["recall@20", "ndcg@20"]}
# topk: validate every 4 epochs instead of 2 (full ranking dominates MKGCN's top-K run time);
# the same for every variant, so the comparison stays paired.
PROTOCOL_SET = {"ctr": [], "topk": ["train.eval_every=4"]}


def slug(name: str) -> str:
    return (name.replace(" ", "-").replace("(", "").replace(")", "").replace("+", "-")
            .replace(",", ""))


def run(protocols: list[str], seeds: int, out: Path, only: list[str] | None) -> None:
    for protocol in protocols:
        for name, (models, overrides, scope, mmkg) in VARIANTS.items():
            if only and name not in only:
                continue
            spec = BenchmarkSpec.parse(datasets=[DATASET], models=models, protocol=protocol,
                                       seeds=list(range(seeds)),
                                       overrides=overrides + PROTOCOL_SET[protocol],
                                       content_scope=scope, mmkg=mmkg)
            print(f"== {protocol} · {name}", flush=True)
            run_benchmark(spec, out / protocol / slug(name), progress=False)
        summarise(out, protocol)


def summarise(out: Path, protocol: str) -> None:
    """ablation_<protocol>.md / .csv: mean ± std per variant and model, tests vs kg-only."""
    rows, per_user = [], {}
    for name in VARIANTS:
        folder = out / protocol / slug(name)
        if not (folder / "results.csv").is_file():
            continue
        frame = pd.read_csv(folder / "results.csv")
        for model, part in frame.groupby("model", sort=False):
            label = name if name != "entity" else f"entity ({model})"
            row = {"variant": label, "seeds": len(part)}
            for metric in METRICS[protocol]:
                values = part[f"test_{metric}"].to_numpy()
                row[metric] = f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0:.4f}"
                row[f"_{metric}"] = values.mean()
            rows.append(row)
            files = sorted((folder / "per_user").glob(f"*/{model}/seed*.npz"))
            if files:
                per_user[label] = np.concatenate(
                    [np.load(f)["ndcg@20"] for f in files])  # users x seeds, same order
    table = pd.DataFrame(rows)
    if table.empty:
        return
    base = per_user.get("kg-only")
    tests = {label: paired_tests(values, base) for label, values in per_user.items()
             if base is not None and label != "kg-only" and len(values) == len(base)}
    if tests:
        adjusted = holm([t["wilcoxon_p"] for t in tests.values()])
        for (label, test), p in zip(tests.items(), adjusted):
            table.loc[table["variant"] == label, "NDCG@20 vs kg-only (Holm p)"] = (
                f"{'+' if test['mean_diff'] > 0 else ''}{test['mean_diff']:.4f} (p={p:.2g})")
    table.drop(columns=[c for c in table.columns if c.startswith("_")]).to_csv(
        out / f"ablation_{protocol}.csv", index=False)
    shown = table.drop(columns=[c for c in table.columns if c.startswith("_")]).fillna("")
    lines = [f"# Content ablation on {DATASET} ({protocol}, test, mean ± std over seeds)", "",
             "| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in shown.itertuples(index=False)]
    (out / f"ablation_{protocol}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", default="ctr,topk")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/content"))
    parser.add_argument("--only", default="", help="comma-separated variant names")
    args = parser.parse_args()
    run(args.protocols.split(","), args.seeds, args.out,
        [v for v in args.only.split(",") if v] or None)
    (args.out / "variants.json").write_text(json.dumps(
        {k: {"models": v[0], "set": v[1], "content_scope": v[2], "mmkg": v[3], "dataset": DATASET}
         for k, v in VARIANTS.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
