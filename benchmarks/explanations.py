"""Explanation quality: the paths MKRLN and PGPR walked against the post-hoc KG paths the service
gives for MKGCN / KGCN (coverage, validity, diversity, LIR, SEP, ETD: evaluate/explanations.py).

Reads the runs a `mmkgrec benchmark` folder keeps (``BENCH/runs/<dataset>/<model>/seed<k>``) and
scores the top-k test lists (test exclusions: train + valid positives) of the same users for
every model: all test users, or a seeded sample of ``--users``.

- Walked paths (models with :class:`~mmkgrec.models.base.WalksPaths`): ``recommend_paths``, each
  step with the policy's probability.
- Post-hoc paths (any other model, as ``GET /users/{u}/items/{i}/explanation`` finds them): the
  item's top-k list from the shared full ranking (``rank_stage``); per recommended item, every 1-
  and 2-hop KG path from one of the user's TRAIN items to it (``serve.explain.find_paths``), the
  best by the user's relation attention where the model has one (``weigh_paths``), written as a
  path of the collaborative train graph ``user -played-> h -r1-> [m -r2->] item`` (at most 3 hops,
  as the walked ones). An item no such path reaches has none (coverage < 1). Steps have no
  probability.

Every path is checked against the same train graph (KG triples both ways plus TRAIN positives
both ways; validity), so the two kinds are comparable. Usage::

    OMP_NUM_THREADS=1 python benchmarks/explanations.py --bench benchmarks/results/topk \\
        --bench benchmarks/results/topk-kgcn \\
        --datasets lastfm-kgcn,music-d --models mkrln,pgpr,mkgcn,kgcn --seeds 0,1,2 \\
        --out benchmarks/results/explanations
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmkgrec.config import file_slug
from mmkgrec.evaluate.explanations import (
    PathGraph,
    PathRecommendations,
    explanation_metrics,
    train_timestamps,
)
from mmkgrec.evaluate.ranking import rank_stage
from mmkgrec.graph.kg import KnowledgeGraph
from mmkgrec.models.base import AttentionExplanations, ItemVectors, WalksPaths
from mmkgrec.models.kgat import CollaborativeKG
from mmkgrec.serve.explain import find_paths, weigh_paths
from mmkgrec.train.run import load_run

METRICS = ["coverage", "validity", "pattern_diversity", "relation_diversity", "lir", "sep", "etd"]


def train_graph(dataset, split) -> PathGraph:
    """The collaborative train graph every path is checked on (as MKRLN's, without self-loops)."""
    ckg = CollaborativeKG.build(dataset, split)
    names = ([str(r) for r in dataset.relations] + [f"{r} (inverse)" for r in dataset.relations]
             + ["played", "played by"])
    return PathGraph(heads=ckg.heads, relations=ckg.relations, tails=ckg.tails,
                     n_items=dataset.n_items, n_entities=ckg.n_entities, n_users=dataset.n_users,
                     relation_names=tuple(names))


def post_hoc_paths(model, dataset, split, users: np.ndarray, k: int, graph: PathGraph
                   ) -> PathRecommendations:
    """Top-k lists of ``users`` [n] with the service's best post-hoc KG path per item."""
    model.eval()
    with torch.inference_mode():
        top = rank_stage(model, split, "test", users, k, batch_users=256, device="cpu")  # [n, k]
    kg = KnowledgeGraph.from_triples(dataset.triples, dataset.n_entities,
                                     max(1, dataset.n_relations), "undirected")
    indptr, history = split.user_history()  # TRAIN items per user
    attention = isinstance(model, AttentionExplanations) and isinstance(model, ItemVectors)
    n, hops = len(users), 3
    nodes = np.full((n, k, hops + 1), -1, dtype=np.int64)
    relations = np.full((n, k, hops), -1, dtype=np.int64)
    n_kg = dataset.n_relations
    for row, user in enumerate(users):  # an evaluation loop over (user, item), as the service's
        own = history[indptr[user]:indptr[user + 1]]
        weights = None
        if attention:
            with torch.inference_mode():
                weights = model.relation_weights(model.query_vectors(torch.tensor([user])))
        for col, item in enumerate(top[row]):
            if item < 0:
                continue
            best = weigh_paths(find_paths(kg, own, int(item)), weights, 1)
            if not len(best):
                continue
            path = best.iloc[0]
            middle = [int(path.middle)] if path.hops == 2 else []
            chain = [int(path.source), *middle, int(item)]
            kg_rels = [int(path.r1)] + ([int(path.r2)] if path.hops == 2 else [])
            # the undirected KG hides the direction: forward relation r, or its inverse r + R
            forward = graph.has_edges(np.array(chain[:-1]), np.array(kg_rels), np.array(chain[1:]))
            steps = [r if f else r + n_kg for r, f in zip(kg_rels, forward)]
            path_nodes = [dataset.n_entities + int(user), *chain]
            path_relations = [2 * n_kg, *steps]  # "played" is relation 2R of the train graph
            nodes[row, col, :len(path_nodes)] = path_nodes
            relations[row, col, :len(path_relations)] = path_relations
    has_path = nodes[:, :, 0] >= 0
    probs = np.full(relations.shape, np.nan, dtype=np.float32)  # post-hoc: no step probability
    return PathRecommendations(users=users, items=top, scores=np.zeros(top.shape, np.float32),
                               has_path=has_path, nodes=nodes, relations=relations,
                               step_probs=probs)


def evaluate_run(run_dir: Path, n_users: int | None, k: int) -> dict:
    run = load_run(run_dir)
    model, dataset, split = run.model, run.dataset, run.split
    users = split.ground_truth("test")[0]
    if n_users is not None and n_users < len(users):
        users = np.sort(np.random.default_rng(0).choice(users, n_users, replace=False))
    graph = train_graph(dataset, split)
    start = time.perf_counter()
    if isinstance(model, WalksPaths):
        model.eval()
        with torch.inference_mode():
            recs = model.recommend_paths(users, k, exclude=split.ranking_exclusions("test"))
        kind = "walked"
        # MKRLN's graph has a self-loop relation after "played by": drop self-loop steps
        # (a stay step adds no edge) and map its relation ids onto the shared train graph's.
        recs = _without_self_loops(recs, model.path_graph())
    else:
        recs = post_hoc_paths(model, dataset, split, users, k, graph)
        kind = "post-hoc"
    seconds = time.perf_counter() - start
    metrics = explanation_metrics(recs, graph, train_timestamps(dataset, split))
    steps = np.isfinite(recs.step_probs)
    return {**metrics, "paths": kind, "users": len(users), "seconds": seconds,
            "mean_step_prob": float(np.nanmean(recs.step_probs)) if steps.any() else float("nan")}


def _without_self_loops(recs: PathRecommendations, walked: PathGraph) -> PathRecommendations:
    """Paths with their self-loop steps removed (left-aligned, -1 / NaN padded)."""
    keep = (recs.relations >= 0) & (recs.relations != walked.self_loop)  # [n, k, H]
    order = np.argsort(~keep, axis=-1, kind="stable")  # kept steps first, in walk order
    relations = np.where(np.take_along_axis(keep, order, -1),
                         np.take_along_axis(recs.relations, order, -1), -1)
    probs = np.where(np.take_along_axis(keep, order, -1),
                     np.take_along_axis(recs.step_probs, order, -1), np.nan)
    tails = np.take_along_axis(recs.nodes[..., 1:], order, -1)
    nodes = np.concatenate([recs.nodes[..., :1],
                            np.where(np.take_along_axis(keep, order, -1), tails, -1)], axis=-1)
    return PathRecommendations(users=recs.users, items=recs.items, scores=recs.scores,
                               has_path=recs.has_path, nodes=nodes, relations=relations,
                               step_probs=probs.astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, action="append",
                        help="benchmark folder(s) holding runs/ (repeatable; the first with the "
                             "run wins; default benchmarks/results/topk)")
    parser.add_argument("--datasets", default="lastfm-kgcn,music-d")
    parser.add_argument("--models", default="mkrln,pgpr,mkgcn,kgcn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--users", type=int, default=None, help="seeded sample of test users")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/explanations"))
    args = parser.parse_args()
    benches = args.bench or [Path("benchmarks/results/topk")]
    rows = []
    for dataset in args.datasets.split(","):
        for model in args.models.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                found = [b / "runs" / file_slug(dataset) / model / f"seed{seed}" for b in benches]
                found = [d for d in found if (d / "run.json").is_file()]
                if not found:
                    print(f"skip {dataset} {model} seed {seed}: no run", flush=True)
                    continue
                run_dir = found[0]
                row = {"dataset": dataset, "model": model, "seed": seed,
                       **evaluate_run(run_dir, args.users, args.k)}
                print({key: (round(v, 4) if isinstance(v, float) else v)
                       for key, v in row.items()}, flush=True)
                rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "explanations.csv", index=False)
    columns = METRICS + ["mean_step_prob"]
    groups = frame.groupby(["dataset", "model", "paths"])[columns]
    mean, std = groups.mean(), groups.std().fillna(0.0)
    lines = [f"# Explanation quality of top-{args.k} lists (test users; mean ± std over seeds)", "",
             "| dataset | model | paths | " + " | ".join(METRICS) + " | mean step prob |",
             "|---|---|---|" + "---|" * (len(METRICS) + 1)]
    for key in mean.index:
        cells = ["n/a" if np.isnan(mean.loc[key, c]) else f"{mean.loc[key, c]:.4f} ± {std.loc[key, c]:.4f}"
                 for c in columns]
        lines.append("| " + " | ".join(map(str, key)) + " | " + " | ".join(cells) + " |")
    (args.out / "explanations.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
