"""LightGCN: propagation against a dense reference, the normalised train-only adjacency, caching,
gradients through the graph, training-mode pairs = ranking, beats popularity. The shared
contract (eval pairs = ranking, checkpoints, defaults): tests/test_model_contract.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from mmkgrec.models import default_config
from mmkgrec.models.lightgcn import LightGCN, LightGCNConfig
from mmkgrec.models.pop import Pop
from mmkgrec.train.trainer import TrainConfig, Trainer


def dense_adjacency(sp) -> np.ndarray:
    """Â = D^-1/2 A D^-1/2 of the train graph, dense float64 [U + I, U + I], built naively."""
    train = sp.train_positives()
    n = sp.n_users + sp.n_items
    a = np.zeros((n, n))
    a[train["user"], sp.n_users + train["item"]] = 1.0
    a[sp.n_users + train["item"], train["user"]] = 1.0
    degree = a.sum(1)
    scale = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1.0)), 0.0)
    return scale[:, None] * a * scale[None, :]


def test_adjacency_is_symmetric_normalised_and_matches_dense(tiny_topk):
    ds, sp = tiny_topk
    model = LightGCN(ds, sp, LightGCNConfig(dim=4))
    sparse = model.adjacency.to_dense().double().numpy()
    np.testing.assert_allclose(sparse, sparse.T, atol=1e-7)
    np.testing.assert_allclose(sparse, dense_adjacency(sp), atol=1e-6)
    # one entry per train positive and direction, each 1 / sqrt(deg(u) deg(i))
    train = sp.train_positives()
    assert (sparse != 0).sum() == 2 * len(train)
    u, i = train["user"].to_numpy()[0], train["item"].to_numpy()[0]
    du, di = (train["user"] == u).sum(), (train["item"] == i).sum()
    assert sparse[u, ds.n_users + i] == pytest.approx(1 / np.sqrt(du * di), rel=1e-6)
    assert not sparse[:ds.n_users, :ds.n_users].any() and not sparse[ds.n_users:, ds.n_users:].any()


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_propagation_matches_a_dense_reference(tiny_topk, n_layers):
    ds, sp = tiny_topk
    model = LightGCN(ds, sp, LightGCNConfig(dim=8, n_layers=n_layers), seed=1)
    ego = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach().double().numpy()
    adjacency = dense_adjacency(sp)
    layers = [ego]
    for _ in range(n_layers):
        layers.append(adjacency @ layers[-1])
    expected = np.mean(layers, axis=0)  # [U + I, d]
    with torch.no_grad():
        users, items = model.propagate()
    np.testing.assert_allclose(users.numpy(), expected[:ds.n_users], atol=1e-5)
    np.testing.assert_allclose(items.numpy(), expected[ds.n_users:], atol=1e-5)


def test_adjacency_uses_only_train_positives(tiny_topk):
    ds, sp = tiny_topk
    base = LightGCN(ds, sp, LightGCNConfig(dim=8), seed=0).eval()
    # a new positive (user 0, an item user 0 never played) in the dataset and the test part
    played = set(ds.interactions.loc[ds.interactions["user"] == 0, "item"])
    item = next(i for i in range(ds.n_items) if i not in played)
    row = pd.DataFrame({"user": [0], "item": [item], "value": [ds.threshold + 1.0]})
    leaked = dataclasses.replace(
        ds, interactions=pd.concat([ds.interactions, row], ignore_index=True))
    test = pd.concat([sp.test, row[["user", "item"]]], ignore_index=True)
    with_test = LightGCN(leaked, dataclasses.replace(sp, test=test), LightGCNConfig(dim=8), seed=0)
    assert torch.equal(base.adjacency.to_dense(), with_test.adjacency.to_dense())
    with torch.no_grad():
        torch.testing.assert_close(base.score_users(torch.arange(5)),
                                   with_test.eval().score_users(torch.arange(5)))
    # control: the same row in TRAIN does change the graph
    train = pd.concat([sp.train, row[["user", "item"]]], ignore_index=True)
    with_train = LightGCN(ds, dataclasses.replace(sp, train=train), LightGCNConfig(dim=8), seed=0)
    assert not torch.equal(base.adjacency.to_dense(), with_train.adjacency.to_dense())


def test_training_mode_pair_scores_equal_cached_ranking_scores(tiny_topk):
    """No dropout in LightGCN: a training step's fresh propagation scores like the ranking cache."""
    ds, sp = tiny_topk
    model = LightGCN(ds, sp, LightGCNConfig(dim=16), seed=0)
    users = torch.arange(ds.n_users)
    pair_users = users.repeat_interleave(ds.n_items)  # [U * I]
    pair_items = torch.arange(ds.n_items).repeat(ds.n_users)  # [U * I]
    training_pairs = model(pair_users, pair_items).detach()  # fresh propagation (autograd on)
    model.eval()
    model.prepare_ranking()
    with torch.no_grad():
        full = model.score_users(users)  # [U, I]
    torch.testing.assert_close(training_pairs.reshape(ds.n_users, -1), full, rtol=1e-5, atol=1e-6)


def test_gradients_flow_through_the_graph(tiny_topk):
    """Unlike MF, a user's score moves the ego embeddings of the items and users it is linked to."""
    ds, sp = tiny_topk
    model = LightGCN(ds, sp, LightGCNConfig(dim=8, n_layers=2), seed=0)
    users, items = torch.tensor([0]), torch.tensor([0])
    logits = model(users, items)
    assert logits.shape == (1,)
    (logits.sum() + model.regularization(users, items)).backward()
    indptr, history = sp.user_history()
    neighbours = history[indptr[0]:indptr[1]]  # user 0's train items
    item_grad = model.item_emb.weight.grad.abs().sum(-1)  # [I]
    assert (item_grad[torch.as_tensor(neighbours)] > 0).all()
    assert (model.user_emb.weight.grad.abs().sum(-1) > 0).sum() > 1  # co-listeners of item 0 too


def test_regularization_uses_ego_embeddings(tiny_topk):
    ds, sp = tiny_topk
    model = LightGCN(ds, sp, LightGCNConfig(dim=8), seed=0)
    users, items = torch.tensor([1, 2]), torch.tensor([3, 4])
    ego = model.user_emb.weight[users].pow(2).sum() + model.item_emb.weight[items].pow(2).sum()
    torch.testing.assert_close(model.regularization(users, items), 0.5 * ego / 2)


def test_ranking_cache_follows_parameter_changes(tiny_topk):
    ds, sp = tiny_topk
    model = LightGCN(ds, sp, LightGCNConfig(dim=8), seed=0).eval()
    model.prepare_ranking()
    with torch.no_grad():
        before = model.score_users(torch.arange(3))
        model.item_emb.weight.mul_(2.0)  # in-place change, no train() toggle
        after = model.score_users(torch.arange(3))
    assert not torch.allclose(after, before)
    users, items = model.propagate()
    torch.testing.assert_close(after, users[:3] @ items.T)


def test_default_config_pins_recbole_settings():
    raw = default_config("lightgcn")
    config = LightGCNConfig(**raw["model"])
    assert (config.dim, config.n_layers) == (64, 3)
    train = TrainConfig.parse(**raw["train"])
    assert (train.loss, train.negatives, train.batch_size) == ("bpr", "uniform", 2048)


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_short_training_beats_popularity(small_topk, loss):
    ds, sp = small_topk
    pop = Trainer(Pop(ds, sp), sp, {"ks": [20], "device": "cpu"}).fit()
    model = LightGCN(ds, sp, LightGCNConfig(), seed=0)
    result = Trainer(model, sp, {"ks": [20], "loss": loss, "lr": 2e-2, "epochs": 3,
                                 "batch_size": 2048, "device": "cpu"}).fit()
    for stage in ("valid", "test"):
        assert result[stage]["ndcg@20"] > 1.3 * pop[stage]["ndcg@20"], stage
        assert result[stage]["recall@20"] > pop[stage]["recall@20"], stage
