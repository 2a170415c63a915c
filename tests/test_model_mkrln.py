"""MKRLN / PGPR: the environment is the train graph, pruning is user-conditional, beam paths are
valid, ranking puts reached items first, the same seed gives the same paths, it beats popularity,
checkpoints restore the paths, and the trainer / CLI drive it. The shared contract (pair scores =
ranking, gradients, checkpoints, defaults): tests/test_model_contract.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from tests.conftest import run_cli

from mmkgrec.evaluate.explanations import (
    evaluate_explanations,
    explanation_metrics,
    train_timestamps,
)
from mmkgrec.models import MKRLN, PGPR, default_config, model_class
from mmkgrec.models.pop import Pop
from mmkgrec.train import load_checkpoint
from mmkgrec.train.checkpoint import save_checkpoint
from mmkgrec.train.trainer import Trainer

FAST = {"pretrain_epochs": 20, "pretrain_lr": 1e-2, "dim": 32, "hidden": 64,
        "beam_widths": [10, 4, 1]}
FAST_TRAIN = {"epochs": 2, "batch_size": 256, "lr": 2e-3, "loss": "bpr", "patience": None,
              "eval_every": 2, "l2": 0.0}


def build(data, name="mkrln", **overrides):
    ds, sp = data
    cls = model_class(name)
    torch.manual_seed(0)
    return cls(ds, sp, cls.Config(**{**FAST, **overrides}), seed=0)


def trained(data, name="mkrln", epochs=2, **overrides):
    model = build(data, name, **overrides)
    Trainer(model, data[1], {**FAST_TRAIN, "epochs": epochs}).fit(evaluate_test=False)
    model.eval()
    return model


@pytest.fixture(scope="module")
def tiny_model(tiny_topk):
    return trained(tiny_topk)


def edge_set(heads, relations, tails):
    return set(zip(np.asarray(heads).tolist(), np.asarray(relations).tolist(),
                   np.asarray(tails).tolist()))


def test_environment_actions_are_exactly_the_train_edges(tiny_topk):
    ds, sp = tiny_topk
    model = build(tiny_topk)
    e, r = ds.n_entities, ds.n_relations
    # the expected graph, from scratch: KG both ways, train positives both ways
    kg = [(h, rel, t) for h, rel, t in ds.triples.tolist()]
    train = sp.train_positives()
    expected = (edge_set(*zip(*kg)) | {(t, rel + r, h) for h, rel, t in kg}
                | edge_set(e + train["user"], np.full(len(train), 2 * r), train["item"])
                | edge_set(train["item"], np.full(len(train), 2 * r + 1), e + train["user"]))
    tables = model._tables()
    nodes = torch.arange(model.n_nodes)
    dots, _ = model._user_scores(torch.zeros(1, dtype=torch.int64), tables)
    relations, tails, mask = model.actions(dots, torch.zeros_like(nodes), nodes,
                                           torch.full((model.n_nodes, 1), -1), tables,
                                           max_actions=10**6)
    assert (relations[:, 0] == model.self_loop).all() and (tails[:, 0] == nodes).all()
    assert mask[:, 0].all()
    source = nodes.unsqueeze(1).expand_as(tails)[:, 1:][mask[:, 1:]]
    got = edge_set(source, relations[:, 1:][mask[:, 1:]], tails[:, 1:][mask[:, 1:]])
    assert got == expected and int(mask[:, 1:].sum()) == len(expected)  # no repeats either
    assert got == edge_set(model.graph.heads, model.graph.relations, model.graph.tails)
    # no valid or test pair is reachable, in either direction
    for stage in ("valid", "test"):
        held = sp.positives(stage)
        assert not got & edge_set(e + held["user"], np.full(len(held), 2 * r), held["item"])
        assert not got & edge_set(held["item"], np.full(len(held), 2 * r + 1), e + held["user"])


def test_pruning_keeps_the_users_best_actions_and_never_revisits(tiny_topk):
    model = build(tiny_topk)
    model.pretrain()
    with torch.no_grad():
        tables = model._tables()
    users = torch.tensor([0, 3])
    dots, _ = model._user_scores(users, tables)
    degree = model.indptr.diff()
    nodes = torch.topk(degree.float(), 4).indices  # the busiest nodes
    limit = 3
    for row, user in enumerate(users.tolist()):
        owners = torch.full_like(nodes, row)
        visited = torch.stack([model.user_nodes(users[row]).expand_as(nodes), nodes], 1)
        relations, tails, mask = model.actions(dots, owners, nodes, visited, tables, limit)
        for s, node in enumerate(nodes.tolist()):
            lo, hi = int(model.indptr[node]), int(model.indptr[node + 1])
            e = model.n_entities
            candidates = []
            for j in range(lo, hi):  # the score of every fresh edge, one at a time
                tail, rel = int(model.edge_tails[j]), int(model.edge_relations[j])
                if tail in (e + user, node):
                    continue  # visited: the start user and the node itself
                t = tables["nodes"][tail]
                query = tables["nodes"][e + user].clone()
                if tail < e:
                    query += tables["relations"][model.played]
                if model.n_items <= tail < e:
                    query += tables["relations"][rel]
                candidates.append((float(query @ t), rel, tail))
            best = sorted(candidates, reverse=True)[:limit]
            kept = {(int(a), int(b)) for a, b, m in zip(relations[s, 1:], tails[s, 1:],
                                                         mask[s, 1:]) if m}
            assert kept == {(rel, tail) for _, rel, tail in best}
            assert e + user not in tails[s, 1:][mask[s, 1:]].tolist()


def test_beam_paths_are_valid_and_reached_items_rank_first(tiny_topk, tiny_model):
    ds, sp = tiny_topk
    model = tiny_model
    users = np.arange(ds.n_users)
    recs = model.recommend_paths(users, k=20)
    graph = model.path_graph()
    metrics = explanation_metrics(recs, graph, train_timestamps(ds, sp))
    assert metrics["n_paths"] > 0 and metrics["validity"] == 1.0
    assert 0 < metrics["coverage"] <= 1 and np.isfinite(metrics["lir"])
    for key in ("pattern_diversity", "relation_diversity", "sep", "etd"):
        assert 0 <= metrics[key] <= 1, key
    # paths start at the user, end at the item; no train item is recommended
    rows, cols = np.nonzero(recs.has_path)
    assert (recs.nodes[rows, cols, 0] == ds.n_entities + recs.users[rows]).all()
    assert (recs.nodes[rows, cols, -1] == recs.items[rows, cols]).all()
    history = set(zip(sp.train_positives()["user"].tolist(), sp.train_positives()["item"]
                      .tolist()))
    assert not any((u, i) in history for u, row in zip(recs.users, recs.items) for i in row)
    assert ((recs.step_probs[rows, cols] > 0) & (recs.step_probs[rows, cols] <= 1)).all()
    # in every list, items with a path come before items without one
    for flags in recs.has_path:
        assert not (np.diff(flags.astype(int)) > 0).any()


def test_unreached_items_keep_the_embedding_score_below_reached_ones(tiny_model):
    model = tiny_model
    users = torch.arange(6)
    scores, path_of, _ = model._rank_block(users)
    _, embedding = model._user_scores(users, model._tables())
    reached = path_of >= 0
    torch.testing.assert_close(scores[~reached], embedding[~reached])
    for b in range(len(users)):
        if reached[b].any() and (~reached[b]).any():
            assert scores[b][reached[b]].min() > scores[b][~reached[b]].max()
            # rank_by="reward": reached items keep the embedding order among themselves
            order = torch.argsort(scores[b][reached[b]])
            assert (embedding[b][reached[b]][order].diff() >= 0).all()


def test_rank_by_probability_orders_reached_items_by_path_probability(tiny_topk, tiny_model):
    model = build(tiny_topk, rank_by="probability")
    model.load_state_dict(tiny_model.state_dict())
    model.eval()
    recs = model.recommend_paths(np.arange(8), k=10)
    for probs, flags in zip(recs.path_probs, recs.has_path):
        assert (np.diff(probs[flags]) <= 1e-6).all()


def test_same_seed_gives_the_same_paths_and_metrics(tiny_topk):
    ds, sp = tiny_topk
    runs = []
    for _ in range(2):
        model = build(tiny_topk)
        result = Trainer(model, sp, {**FAST_TRAIN, "epochs": 2}).fit()
        runs.append((result, model.recommend_paths(np.arange(ds.n_users), k=10),
                     evaluate_explanations(model, ds, sp, "test", k=10)))
    (first, paths_a, expl_a), (second, paths_b, expl_b) = runs
    assert first["test"] == second["test"] and first["valid"] == second["valid"]
    assert expl_a == pytest.approx(expl_b, nan_ok=True)
    for field in ("items", "has_path", "nodes", "relations"):
        np.testing.assert_array_equal(getattr(paths_a, field), getattr(paths_b, field))
    np.testing.assert_array_equal(paths_a.step_probs, paths_b.step_probs)


def test_short_training_beats_popularity(small_topk):
    ds, sp = small_topk
    pop = Trainer(Pop(ds, sp), sp, {}).fit()["test"]
    cfg = default_config("mkrln")
    torch.manual_seed(0)
    model = MKRLN(ds, sp, MKRLN.Config(**{**cfg["model"], "dim": 32, "pretrain_epochs": 40,
                                          "beam_widths": [25, 5, 2]}), seed=0)
    result = Trainer(model, sp, {**cfg["train"], "epochs": 1, "eval_every": 1}).fit()
    assert result["test"]["ndcg@20"] > pop["ndcg@20"]
    assert result["test"]["recall@20"] > pop["recall@20"]


def test_checkpoint_round_trip_gives_the_same_scores_and_paths(tiny_topk, tiny_model, tmp_path):
    ds, sp = tiny_topk
    save_checkpoint(tmp_path, tiny_model, model_name="mkrln",
                    model_config=tiny_model.config.model_dump(mode="json"), train_config={},
                    split=sp, dataset=ds)
    clone = build(tiny_topk)
    assert not bool(clone.pretrained)
    load_checkpoint(tmp_path, clone, dataset=ds, split=sp)
    clone.eval()
    assert bool(clone.pretrained)
    users = torch.arange(ds.n_users)
    torch.testing.assert_close(clone.score_users(users), tiny_model.score_users(users))
    a, b = (m.recommend_paths(np.arange(10), k=10) for m in (tiny_model, clone))
    np.testing.assert_array_equal(a.nodes, b.nodes)
    np.testing.assert_array_equal(a.items, b.items)
    # a restored model is not pretrained again at its next epoch
    before = clone.node_emb.weight.detach().clone()
    clone.start_epoch(1, np.random.default_rng(0))
    torch.testing.assert_close(clone.node_emb.weight, before)


def test_policy_gradient_trains_the_policy_not_the_pretrained_embeddings(tiny_topk):
    model = build(tiny_topk)
    model.start_epoch(0, np.random.default_rng(0))
    model.train()
    users = torch.arange(32)
    loss = model.training_loss(users, users, users)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert model.node_emb.weight.grad is None and model.relation_emb.weight.grad is None
    for key, param in model.named_parameters():
        if key.startswith(("node_emb", "relation_emb")):
            continue
        assert param.grad is not None and torch.isfinite(param.grad).all(), key
    assert model.modality_proj[0].weight.grad.abs().sum() > 0  # the multi-modal state learns


def test_modality_attention_skips_absent_modalities_and_non_items(tiny_topk):
    ds, _ = tiny_topk
    model = build(tiny_topk)
    assert model.modality_names == list(ds.modalities)
    present = torch.stack([getattr(model, f"present_{k}") for k in
                           range(len(model.modality_names))], 1)  # [I, K]
    nodes = torch.tensor([int(torch.nonzero(~present.all(1))[0]) if (~present.all(1)).any()
                          else 0, model.n_items, model.n_entities])  # item, entity, user
    users = torch.randn(3, model.config.dim)
    steps = model.step_emb.weight[0].expand(3, -1)
    with torch.no_grad():
        context, weights = model._modality_context(users, steps, nodes)
    item = int(nodes[0])
    assert (weights[0][~present[item]] == 0).all()
    assert weights[0][present[item]].sum() == pytest.approx(1.0)
    assert (weights[1:] == 0).all() and (context[1:] == 0).all()


def test_pgpr_is_mkrln_without_modalities(tiny_topk):
    pgpr, plain = build(tiny_topk, "pgpr"), build(tiny_topk, use_modalities=False)
    assert pgpr.modality_names == [] and isinstance(pgpr, PGPR)
    assert list(pgpr.state_dict()) == list(plain.state_dict())
    pgpr.eval(), plain.eval()
    users = torch.arange(4)
    torch.testing.assert_close(pgpr.score_users(users), plain.score_users(users))
    with pytest.raises(ValidationError):
        PGPR.Config(use_modalities=True)


def test_beam_widths_must_match_max_hops():
    with pytest.raises(ValidationError, match="beam_widths"):
        MKRLN.Config(max_hops=2)


def test_cli_trains_and_evaluates_mkrln(capsys, tmp_path):
    code, out, err = run_cli(
        capsys, "train", "--model", "pgpr", "--dataset", "synthetic-tiny", "--protocol", "topk",
        "--out", str(tmp_path / "run"), "--set", "epochs=1", "--set", "pretrain_epochs=2",
        "--set", "dim=16", "--set", "hidden=32")
    assert code == 0, out + err
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
