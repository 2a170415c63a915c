"""LATTICE: kNN item-item graphs (k neighbours per item with the modality, none for masked items,
the true cosine top-k), the normalisation, the learned graph's per-epoch rebuild, LightGCN
without modalities, it beats pop. The shared contract (pair scores = full ranking, gradients,
checkpoints, defaults): tests/test_model_contract.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import assert_pair_scores_match_ranking

from mmkgrec.models.lattice import LATTICE, knn_neighbors, normalized_values
from mmkgrec.models.lightgcn import LightGCN, LightGCNConfig
from mmkgrec.models.pop import Pop
from mmkgrec.train.trainer import Trainer


def build(ds, sp, seed=0, **overrides):
    torch.manual_seed(0)
    return LATTICE(ds, sp, LATTICE.Config(**overrides), seed=seed)


def bare(ds):
    return dataclasses.replace(ds, modalities={}, modality_masks={})


@pytest.mark.parametrize("k", [1, 5])
def test_knn_graph_has_k_neighbours_per_item_with_the_modality_and_none_for_masked(tiny_topk, k):
    ds, sp = tiny_topk
    model = build(ds, sp, knn_k=k)
    for m, name in enumerate(model.modality_names):
        present = ds.modality_masks[name]
        rows, cols = getattr(model.latent, f"initial_index_{m}").numpy()
        out_degree = np.bincount(rows, minlength=ds.n_items)
        assert (out_degree[present] == k).all() and (out_degree[~present] == 0).all(), name
        assert present[cols].all()  # no edge into a masked item either
        assert not (rows == cols).any()  # no self loops
        assert len(set(zip(rows.tolist(), cols.tolist()))) == len(rows)  # no repeats
        # the learned graph obeys the same rules
        with torch.no_grad():
            projected = model.latent.projections[m](getattr(model, f"features_{m}"))
        lrows, lcols = (t.numpy() for t in knn_neighbors(projected, torch.as_tensor(present), k))
        learned_degree = np.bincount(lrows, minlength=ds.n_items)
        assert (learned_degree[present] == k).all() and (learned_degree[~present] == 0).all()
        assert present[lcols].all() and not (lrows == lcols).any()


def test_knn_neighbours_are_the_cosine_top_k_and_blocks_do_not_matter(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(50, 7)
    present = torch.rand(50) > 0.2
    rows, cols = knn_neighbors(x, present, 4)
    normed = F.normalize(x, dim=1)
    sim = normed @ normed.T
    sim.fill_diagonal_(float("-inf"))
    sim[:, ~present] = float("-inf")
    for item in present.nonzero().squeeze(1).tolist():
        expected = set(sim[item].topk(4).indices.tolist())
        assert set(cols[rows == item].tolist()) == expected
    from mmkgrec.models import lattice

    monkeypatch.setattr(lattice, "SIMILARITY_CELLS", 7 * 40)  # blocks of 7 rows
    small_rows, small_cols = knn_neighbors(x, present, 4)
    assert torch.equal(small_rows, rows) and torch.equal(small_cols, cols)
    # fewer present items than k + 1: each links every other present item
    few = torch.zeros(50, dtype=torch.bool)
    few[[3, 9, 20]] = True
    rows, cols = knn_neighbors(x, few, 10)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(a, b) for a in (3, 9, 20)
                                                         for b in (3, 9, 20) if a != b]


def test_initial_graph_is_row_sum_normalised_cosine_knn(tiny_topk):
    ds, sp = tiny_topk
    model = build(ds, sp, knn_k=3)
    index, value = model.latent.initial_index_0, model.latent.initial_value_0
    features = model.features_0
    normed = F.normalize(features, dim=1)
    s = torch.zeros(ds.n_items, ds.n_items)
    s[index[0], index[1]] = (normed[index[0]] * normed[index[1]]).sum(1).clamp_min(0)
    degree = s.sum(1)
    scale = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros(()))
    dense = scale[:, None] * s * scale[None, :]
    torch.testing.assert_close(value, dense[index[0], index[1]])
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 0])
    torch.testing.assert_close(normalized_values(rows, cols, torch.tensor([1.0, 3.0, 2.0]), 3),
                               torch.tensor([1 / 8 ** 0.5, 0.0, 2 / 8 ** 0.5]))


def test_item_graph_mixes_initial_and_learned_with_lambda_and_modality_weights(tiny_topk):
    ds, sp = tiny_topk
    model = build(ds, sp, knn_k=3, lambda_coeff=0.7).eval()
    n = ds.n_items

    def dense(index, values):
        return torch.zeros(n, n).index_put(tuple(index), values, accumulate=True)

    with torch.no_grad():
        model.latent.modal_weight.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
        got = dense(model.learned_graph()[:2], model.learned_graph()[2])  # [I, I]
        alpha = torch.softmax(model.latent.modal_weight, 0)
        initial, learned = torch.zeros(n, n), torch.zeros(n, n)
        for m in range(4):
            initial += alpha[m] * dense(getattr(model.latent, f"initial_index_{m}"),
                                        getattr(model.latent, f"initial_value_{m}"))
            projected = F.normalize(model.latent.projections[m](getattr(model, f"features_{m}")), dim=1)
            rows, cols = knn_neighbors(projected, getattr(model, f"present_{m}"), 3)
            learned += alpha[m] * dense((rows, cols),
                                        (projected[rows] * projected[cols]).sum(1).clamp_min(0))
        degree = learned.sum(1)
        scale = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros(()))
        expected = 0.7 * initial + 0.3 * scale[:, None] * learned * scale[None, :]
    torch.testing.assert_close(got, expected)
    with_any = np.logical_or.reduce([ds.modality_masks[name] for name in model.modality_names])
    assert (got.sum(1)[~torch.as_tensor(with_any)] == 0).all()


def test_pair_scores_equal_full_ranking_scores_with_two_item_layers(tiny_topk):
    ds, sp = tiny_topk
    assert_pair_scores_match_ranking(build(ds, sp, dim=16, knn_k=4, item_layers=2, n_layers=1))


def test_learned_graph_carries_gradient_on_each_epochs_first_step(tiny_topk):
    ds, sp = tiny_topk
    model = build(ds, sp, knn_k=4)
    model.train()
    users, items = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8])
    logits = model(users, items)  # the epoch's first step: the learned graph carries gradient
    assert logits.shape == (4,)
    (logits.sum() + model.regularization(users, items)).backward()
    assert all(p.weight.grad.abs().sum() > 0 for p in model.latent.projections)
    assert model.latent.modal_weight.grad.abs().sum() > 0
    model.zero_grad()
    model(users, items).sum().backward()  # later steps reuse the epoch's graph, detached
    assert all(p.weight.grad is None for p in model.latent.projections)
    model.start_epoch(1, np.random.default_rng(0))
    model.zero_grad()
    model(users, items).sum().backward()  # a new epoch rebuilds it
    assert all(p.weight.grad.abs().sum() > 0 for p in model.latent.projections)


def test_without_modalities_lattice_is_lightgcn(tiny_topk):
    ds, sp = tiny_topk
    model = build(bare(ds), sp, dim=8, n_layers=2).eval()
    assert not model.modality_names and model.latent is None
    reference = LightGCN(ds, sp, LightGCNConfig(dim=8, n_layers=2), seed=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.score_users(torch.arange(6)),
                                   reference.score_users(torch.arange(6)))


def test_masked_rows_change_nothing(tiny_topk):
    ds, sp = tiny_topk
    absent = ~ds.modality_masks["image"]
    features = ds.modalities["image"].copy()
    features[absent] = 1e3
    noisy = build(dataclasses.replace(ds, modalities={**ds.modalities, "image": features}), sp)
    with torch.no_grad():
        torch.testing.assert_close(noisy.eval().score_users(torch.arange(6)),
                                   build(ds, sp).eval().score_users(torch.arange(6)))


def test_initial_graphs_travel_with_the_weights(tiny_topk):
    ds, sp = tiny_topk
    model = build(ds, sp, dim=8, feat_dim=8, knn_k=4)
    frozen = {f"latent.initial_{part}_{m}" for part in ("index", "value") for m in range(4)}
    assert frozen <= set(model.state_dict())


def test_short_training_beats_popularity(small_topk):
    ds, sp = small_topk
    pop = Trainer(Pop(ds, sp), sp, {"ks": [20]}).fit()["test"]
    model = build(ds, sp)
    result = Trainer(model, sp, {"loss": "bpr", "epochs": 3, "batch_size": 2048, "lr": 1e-2,
                                 "l2": 1e-4, "ks": [20]}).fit()["test"]
    assert result["ndcg@20"] > 1.3 * pop["ndcg@20"]
    assert result["recall@20"] > pop["recall@20"]
