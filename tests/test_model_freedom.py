"""FREEDOM: degree-sensitive pruning (the stated fraction, train edges only, low-degree edges
favoured), training on the pruned graph and ranking on the full one, the frozen modality kNN
graph, the modality BPR losses, beats pop. The shared contract (pair scores = full ranking,
gradients, checkpoints, defaults): tests/test_model_contract.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmkgrec.errors import ConfigError
from mmkgrec.models import default_config
from mmkgrec.models.freedom import FREEDOM, prune_edges
from mmkgrec.models.lightgcn import LightGCN, LightGCNConfig
from mmkgrec.models.pop import Pop
from mmkgrec.train.trainer import TrainConfig, Trainer


def build(ds, sp, seed=0, **overrides):
    torch.manual_seed(0)
    return FREEDOM(ds, sp, FREEDOM.Config(**overrides), seed=seed)


def bare(ds):
    return dataclasses.replace(ds, modalities={}, modality_masks={})


def keys(users, items, n_items):
    return set((np.asarray(users) * n_items + np.asarray(items)).tolist())


@pytest.mark.parametrize("dropout", [0.3, 0.8, 0.9])
def test_pruning_keeps_the_stated_fraction_of_train_edges_only(tiny_topk, dropout):
    ds, sp = tiny_topk
    model = build(ds, sp, edge_dropout=dropout)
    train = sp.train_positives()
    train_keys = keys(train["user"], train["item"], ds.n_items)
    for epoch in range(3):
        model.start_epoch(epoch, np.random.default_rng(epoch))
        kept = model.kept_edges
        assert len(kept) == int(len(train) * (1 - dropout)) and len(np.unique(kept)) == len(kept)
        users, items = model.train_users[kept], model.train_items[kept]
        assert keys(users, items, ds.n_items) <= train_keys  # never an edge not in train
        # the pruned adjacency holds exactly the kept edges, both ways, re-normalised
        dense = model.pruned_adjacency.to_dense()
        nonzero = dense.nonzero().numpy()
        user_side = nonzero[nonzero[:, 0] < ds.n_users]
        assert keys(user_side[:, 0], user_side[:, 1] - ds.n_users, ds.n_items) == keys(
            users, items, ds.n_items)
        torch.testing.assert_close(dense, dense.T)
        d_u = np.bincount(users, minlength=ds.n_users)
        d_i = np.bincount(items, minlength=ds.n_items)
        u, i = users[0], items[0]
        assert dense[u, ds.n_users + i].item() == pytest.approx(1 / np.sqrt(d_u[u] * d_i[i]))
    for stage in ("valid", "test"):
        held = sp.positives(stage)
        assert not keys(model.train_users, model.train_items, ds.n_items) & keys(
            held["user"], held["item"], ds.n_items)


def test_pruning_favours_edges_between_low_degree_nodes():
    """P(keep) grows with 1 / sqrt(d_u d_i): a hub-hub edge survives less often."""
    users = np.array([0] * 10 + [1] + list(range(2, 12)))  # user 0 a hub, users 1.. light
    items = np.array(list(range(10)) + [10] + [0] * 10)  # item 0 a hub, item 10 light
    rng = np.random.default_rng(0)
    counts = np.zeros(len(users))
    for _ in range(2000):
        counts[prune_edges(users, items, 5, rng)] += 1
    hub_hub, light_light = counts[0], counts[10]  # (user 0, item 0) vs (user 1, item 10)
    assert light_light > 3 * hub_hub
    assert counts.sum() == 2000 * 5
    assert len(prune_edges(users, items, 0, rng)) == 0
    assert len(prune_edges(users, items, 100, rng)) == len(users)


def test_training_uses_the_pruned_graph_and_ranking_the_full_graph(tiny_topk):
    ds, sp = tiny_topk
    model = build(bare(ds), sp, dim=8, edge_dropout=0.5)
    reference = LightGCN(ds, sp, LightGCNConfig(dim=8, n_layers=2), seed=0)
    users = torch.arange(6)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model.score_users(users), reference.eval().score_users(users))
        model.train()  # the pruned graph: other scores
        pruned = model(users.repeat_interleave(ds.n_items), torch.arange(ds.n_items).repeat(6))
    assert not torch.allclose(pruned.reshape(6, -1), reference.score_users(users))
    unpruned = build(bare(ds), sp, dim=8, edge_dropout=0.0).train()
    assert unpruned.pruned_adjacency is None  # edge_dropout 0: always the full graph
    with torch.no_grad():
        torch.testing.assert_close(unpruned.final_embeddings()[0], reference.propagate()[0])


def test_frozen_graph_is_the_weighted_sum_of_normalised_binary_knn_graphs(tiny_topk):
    ds, sp = tiny_topk
    weights = {"audio": 1.0, "text": 3.0, "image": 0.0, "sentiment": 0.0}
    model = build(ds, sp, knn_k=4, modality_weights=weights)
    index, value = model.item_graph_index.numpy(), model.item_graph_value
    audio, text = ds.modality_masks["audio"], ds.modality_masks["text"]
    n = ds.n_items
    dense = torch.zeros(n, n).index_put(tuple(model.item_graph_index), value)
    expected = torch.zeros(n, n)
    for name, w in (("audio", 0.25), ("text", 0.75)):
        m = model.modality_names.index(name)
        features = torch.nn.functional.normalize(getattr(model, f"features_{m}"), dim=1)
        present = torch.as_tensor(ds.modality_masks[name])
        sim = features @ features.T
        sim.fill_diagonal_(float("-inf"))
        sim[:, ~present] = float("-inf")
        a = torch.zeros(n, n)
        rows = present.nonzero().squeeze(1)
        a[rows.repeat_interleave(4), sim[rows].topk(4).indices.reshape(-1)] = 1.0
        scale = torch.where(a.sum(1) > 0, a.sum(1).clamp_min(1e-12).rsqrt(), torch.zeros(()))
        expected += w * scale[:, None] * a * scale[None, :]
    torch.testing.assert_close(dense, expected)
    neither = ~(audio | text)
    assert not np.isin(index, np.flatnonzero(neither)).any()  # masked items: no edges
    assert (np.diff(index[0] * n + index[1]) > 0).all()  # coalesced
    with pytest.raises(ConfigError, match="modality_weights"):
        build(ds, sp, modality_weights={"audio": 1.0})


def test_frozen_graph_has_k_neighbours_per_item_with_a_modality(tiny_topk):
    ds, sp = tiny_topk
    only_image = build(ds, sp, knn_k=5, modalities=["image"])
    rows, cols = only_image.item_graph_index.numpy()
    present = ds.modality_masks["image"]
    degree = np.bincount(rows, minlength=ds.n_items)
    assert (degree[present] == 5).all() and (degree[~present] == 0).all() and present[cols].all()


def test_modality_losses_train_the_projections_and_need_a_modality(tiny_topk):
    ds, sp = tiny_topk
    model = build(ds, sp, modality_loss_weight=1.0, modality_batch_size=64)
    users, positives, negatives = model._triples.numpy()
    train = sp.train_positives()
    train_keys = keys(train["user"], train["item"], ds.n_items)
    assert keys(users, positives, ds.n_items) == train_keys  # every train positive, once
    assert not keys(users, negatives, ds.n_items) & train_keys  # negatives are not positives
    model.train()
    model(torch.tensor([0, 1]), torch.tensor([2, 3]))  # the step's user vectors are reused
    assert model._step_users is not None
    loss = model.auxiliary_loss()
    assert model._step_users is None and loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert all(p.weight.grad.abs().sum() > 0 for p in model.projections)
    assert model.user_emb.weight.grad.abs().sum() > 0
    assert build(bare(ds), sp).auxiliary_loss() is None
    assert build(ds, sp, modality_loss_weight=0.0).auxiliary_loss() is None


def test_frozen_graph_travels_with_the_weights(tiny_topk):
    ds, sp = tiny_topk
    state = build(ds, sp, dim=8, knn_k=4).state_dict()
    assert {"item_graph_index", "item_graph_value"} <= set(state)


@pytest.mark.parametrize("bare_data", [False, True])
def test_short_training_beats_popularity(small_topk, bare_data):
    ds, sp = small_topk
    pop = Trainer(Pop(ds, sp), sp, {"ks": [20]}).fit()["test"]
    model = build(bare(ds) if bare_data else ds, sp)
    result = Trainer(model, sp, {"loss": "bpr", "epochs": 4, "batch_size": 2048, "lr": 1e-2,
                                 "l2": 0.0, "ks": [20]}).fit()["test"]
    assert result["ndcg@20"] > 1.3 * pop["ndcg@20"]
    assert result["recall@20"] > pop["recall@20"]


def test_default_training_has_no_l2_as_the_authors():
    assert TrainConfig(**default_config("freedom")["train"]).l2 == 0.0
