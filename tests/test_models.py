"""KGCN and MKGCN: pair scores = ranking for every aggregator and depth (MKGCN given its evaluation
histories), gradients for the non-default aggregators, masking, leak-freedom. The shared
contract (default-config gradients, checkpoints, defaults): tests/test_model_contract.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmkgrec.errors import ConfigError
from mmkgrec.models import KGCN, MKGCN, default_config, model_class
from mmkgrec.models.layers import MultiModalFusion, UserAggregator
from mmkgrec.models.mkgcn import sample_history


def build(name, data, **overrides):
    ds, sp = data
    cls = model_class(name)
    config = cls.Config(**{**default_config(name)["model"], **overrides})
    torch.manual_seed(0)
    return cls(ds, sp, config, seed=0)


def all_pairs(n_users, n_items):
    users = torch.arange(n_users).repeat_interleave(n_items)
    return users, torch.arange(n_items).repeat(n_users)


@pytest.mark.parametrize("name", ["kgcn", "mkgcn"])
@pytest.mark.parametrize("aggregator", ["sum", "concat", "neighbor"])
@pytest.mark.parametrize("n_hops", [0, 1, 2, 3])
def test_pair_scores_equal_full_ranking_scores(tiny_topk, name, aggregator, n_hops):
    """The receptive-field tree (training) and the all-items program (ranking) agree exactly."""
    model = build(name, tiny_topk, aggregator=aggregator, n_hops=n_hops, n_neighbors=3,
                  **({"eval_history_size": 8} if name == "mkgcn" else {}))
    model.eval()
    users = torch.arange(6)
    with torch.no_grad():
        full = model.score_users(users)  # [6, I]
        assert full.shape == (6, model.n_items)
        model.prepare_ranking()  # cached user-independent first round: the same scores
        torch.testing.assert_close(model.score_users(users), full, rtol=1e-6, atol=1e-6)
        if name == "mkgcn":  # pairs must use the same (evaluation) histories as ranking
            _, table, valid = model._ranking_cache
            model.history, model.history_valid = table, valid
        u, i = all_pairs(6, model.n_items)
        pairs = model(u, i).reshape(6, -1)
    torch.testing.assert_close(pairs, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["kgcn", "mkgcn"])
@pytest.mark.parametrize("aggregator", ["concat", "neighbor"])  # the default sum: the contract
def test_gradients_reach_every_trained_part(tiny_topk, name, aggregator):
    model = build(name, tiny_topk, aggregator=aggregator, n_hops=2)
    model.train()
    users, items = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8])
    logits = model(users, items)
    assert logits.shape == (4,)
    (logits.sum() + model.regularization(users, items)).backward()
    for key, param in model.named_parameters():
        if "empty_user" in key:
            continue  # only used by users with no history
        assert param.grad is not None and torch.isfinite(param.grad).all(), key
    if name == "mkgcn":
        assert any(p.grad.abs().sum() > 0 for k, p in model.named_parameters() if "fusion" in k)


@pytest.mark.parametrize("fusion", ["sum", "mean", "max", "concat", "residual"])
def test_masked_modalities_are_ignored(fusion):
    torch.manual_seed(0)
    layer = MultiModalFusion(4, {"audio": 3, "text": 5}, fusion)
    ids = torch.randn(2, 4)
    audio, text = torch.randn(2, 3), torch.randn(2, 5)
    masks = [torch.tensor([True, False]), torch.tensor([True, True])]
    out = layer(ids, [audio, text], masks)
    changed = audio.clone()
    changed[1] = 1e3  # item 1's audio is absent: changing it must change nothing
    out2 = layer(ids, [changed, text], masks)
    torch.testing.assert_close(out[1], out2[1])
    changed[0] = 1e3  # item 0's audio is present: it must matter
    assert not torch.allclose(layer(ids, [changed, text], masks)[0], out[0])


def test_different_items_get_different_fused_vectors(tiny_topk):
    model = build("mkgcn", tiny_topk)
    with torch.no_grad():
        fused = model.base_vectors(torch.arange(model.n_items))  # [I, d]
    assert torch.unique(fused, dim=0).shape[0] == model.n_items
    # The content part alone (same ID embedding for all) still separates items.
    with torch.no_grad():
        model.backbone.entity_emb.weight.zero_()
        content = model.base_vectors(torch.arange(model.n_items))
    assert torch.unique(content.round(decimals=5), dim=0).shape[0] > 0.9 * model.n_items


def test_pca_projection_is_fitted_on_train_items(tiny_topk):
    model = build("mkgcn", tiny_topk, projection="pca")
    assert not any("projections" in k for k, _ in model.named_parameters())
    assert model.fusion.pca_basis_0.shape == (40, model.config.dim)


def test_user_history_holds_only_train_items(tiny_topk):
    ds, sp = tiny_topk
    model = build("mkgcn", tiny_topk, history_size=50)
    train = set(map(tuple, sp.train_positives()[["user", "item"]].to_numpy()))
    held_out = set(map(tuple, np.vstack([sp.valid[["user", "item"]], sp.test[["user", "item"]]])))
    for table, valid in (
        (model.history, model.history_valid),
        (*sample_history(model.history_indptr, model.history_items, np.arange(ds.n_users), 99,
                         np.random.default_rng(1)),),
    ):
        table, valid = np.asarray(table), np.asarray(valid)
        users = np.repeat(np.arange(ds.n_users), table.shape[1])
        pairs = set(zip(users[valid.ravel()], table.ravel()[valid.ravel()]))
        assert pairs <= train and not pairs & held_out
    # With a large enough sample every train positive appears exactly once.
    assert model.history_valid.sum().item() == min(len(train), model.history_valid.sum().item())


def test_sample_history_is_without_replacement_and_padded():
    indptr, items = np.array([0, 3, 3, 10]), np.arange(10)
    table, valid = sample_history(indptr, items, np.array([0, 1, 2]), 5, np.random.default_rng(0))
    assert valid.sum(1).tolist() == [3, 0, 5]
    assert sorted(table[0][valid[0]]) == [0, 1, 2]
    assert len(set(table[2][valid[2]])) == 5 and set(table[2][valid[2]]) <= set(range(3, 10))


def test_target_item_is_masked_out_of_its_own_history(tiny_topk):
    model = build("mkgcn", tiny_topk, history_size=50)
    user = int(np.flatnonzero(np.diff(model.history_indptr) >= 2)[0])
    liked = int(model.history[user][model.history_valid[user]][0])
    model.train()
    seen = {}

    def grab(module, args, output):
        seen["valid"] = args[1].clone()
    handle = model.users.register_forward_hook(grab)
    model(torch.tensor([user]), torch.tensor([liked]))
    handle.remove()
    row = model.history[user]
    assert not seen["valid"][0][row == liked].any()


def test_new_user_is_scored_from_liked_items_without_retraining(tiny_topk):
    model = build("mkgcn", tiny_topk)
    model.eval()
    liked = torch.tensor([[3, 7, 11, 0]])
    valid = torch.tensor([[True, True, True, False]])
    with torch.no_grad():
        scores = model.score_histories(liked, valid)
        again = model.score_histories(torch.tensor([[11, 3, 7, 0]]), valid)
        other = model.score_histories(torch.tensor([[50, 60, 70, 0]]), valid)
    assert scores.shape == (1, model.n_items)
    torch.testing.assert_close(scores, again, rtol=1e-5, atol=1e-5)  # order does not matter
    assert not torch.allclose(scores, other)


@pytest.mark.parametrize("pooling", ["multi-head", "mean-pool", "max-pool"])
def test_user_aggregator_options(pooling):
    layer = UserAggregator(8, pooling, n_heads=2)
    history = torch.randn(3, 4, 8, requires_grad=True)
    valid = torch.tensor([[True, True, False, False], [False] * 4, [True] * 4])
    out = layer(history, valid)
    assert out.shape == (3, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(out[1], layer.empty_user)
    out.sum().backward()
    assert history.grad[0, 2:].abs().sum() == 0  # padding receives no gradient


def test_invalid_configs_are_rejected(tiny_topk):
    with pytest.raises(ValueError, match="divisible"):
        MKGCN.Config(dim=10, n_heads=4)
    with pytest.raises(ValueError):
        KGCN.Config(aggregator="mean")
    with pytest.raises(ConfigError, match="unknown modalities"):
        build("mkgcn", tiny_topk, modalities=["smell"])
    with pytest.raises(ConfigError, match="unknown model"):
        model_class("nope")


def test_kg_only_mkgcn_has_no_fusion_parameters(tiny_topk):
    model = build("mkgcn", tiny_topk, modalities=[])
    assert not any("fusion" in k for k, _ in model.named_parameters())


def test_float16_feature_buffers_score_like_float32(tiny_topk):
    """feature_dtype=float16 halves the feature buffers and changes scores only by rounding."""
    full = build("mkgcn", tiny_topk).eval()
    half = build("mkgcn", tiny_topk, feature_dtype="float16").eval()
    assert half.features_0.dtype == torch.float16 and half.features_0.shape == full.features_0.shape
    assert half.backbone.neighbors.dtype == torch.int32  # compact neighbour tables
    with torch.no_grad():
        torch.testing.assert_close(half.score_users(torch.arange(4)),
                                   full.score_users(torch.arange(4)), rtol=1e-2, atol=1e-2)
