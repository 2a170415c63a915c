"""MMGCN: one channel per modality (+ ID), the ID-only fallback, the train-only mean adjacency,
missing modalities, pair scores equal full-ranking scores for the non-default fusions, it beats
pop. The shared contract (gradients, default pairs, checkpoints, defaults):
tests/test_model_contract.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tests.conftest import assert_pair_scores_match_ranking

from mmkgrec.errors import ConfigError
from mmkgrec.models.mmgcn import MMGCN, mean_adjacency
from mmkgrec.models.pop import Pop
from mmkgrec.train.trainer import Trainer


@pytest.fixture(scope="module")
def small_with_pop(small_topk):
    """synthetic's topk split and the popularity baseline's test metrics on it."""
    ds, sp = small_topk
    return ds, sp, Trainer(Pop(ds, sp), sp, {}).fit()["test"]


def build(ds, sp, **overrides):
    torch.manual_seed(0)
    return MMGCN(ds, sp, MMGCN.Config(**overrides), seed=0)


def test_one_channel_per_modality_plus_id(tiny_topk):
    ds, sp = tiny_topk
    model = build(ds, sp)
    assert model.n_modality_channels == len(ds.modalities) == 4
    assert len(model.channels) == len(ds.modalities) + 1
    assert len(build(ds, sp, modalities=["text"], id_channel=False).channels) == 1
    with pytest.raises(ConfigError, match="unknown modalities"):
        build(ds, sp, modalities=["video"])
    with pytest.raises(ConfigError, match="needs a channel"):
        build(ds, sp, modalities=[], id_channel=False)


def test_without_modalities_mmgcn_is_the_id_channel(tiny_topk):
    ds, sp = tiny_topk
    bare = dataclasses.replace(ds, modalities={}, modality_masks={})
    model = build(bare, sp).eval()
    assert model.n_modality_channels == 0 and len(model.channels) == 1
    assert not [k for k, _ in model.named_parameters() if "preferences" in k or "projections" in k]
    with torch.no_grad():
        scores = model.score_users(torch.arange(4))
    assert scores.shape == (4, ds.n_items) and torch.isfinite(scores).all()
    with pytest.raises(ConfigError, match="needs a channel"):
        build(bare, sp, id_channel=False)


def test_mean_adjacency_is_row_normalised_over_train_pairs_only(tiny_topk):
    ds, sp = tiny_topk
    indices, values = mean_adjacency(sp, ds.n_users, ds.n_items)
    rows, cols = indices.numpy()
    n = ds.n_users + ds.n_items
    row_sums = np.bincount(rows, weights=values.numpy(), minlength=n)
    degree = np.bincount(rows, minlength=n)
    np.testing.assert_allclose(row_sums[degree > 0], 1.0, rtol=1e-6)
    user_side = rows < ds.n_users
    got = set((rows[user_side] * ds.n_items + cols[user_side] - ds.n_users).tolist())
    train = sp.train_positives()
    assert got == set((train["user"] * ds.n_items + train["item"]).tolist())
    for stage in ("valid", "test"):
        held = sp.positives(stage)
        assert not got & set((held["user"] * ds.n_items + held["item"]).tolist())
    assert (np.diff(rows * n + cols) > 0).all()  # coalesced order, as the model declares


@pytest.mark.parametrize("missing", ["learned", "zeros"])
def test_items_missing_a_modality_use_the_missing_vector(tiny_topk, missing):
    ds, sp = tiny_topk
    absent = np.flatnonzero(~ds.modality_masks["image"])
    k = list(ds.modalities).index("image")
    model = build(ds, sp, missing=missing)
    with torch.no_grad():
        model.missing[k].fill_(0.5 if missing == "learned" else 0.0)
        items = model.channel_inputs()[k][ds.n_users:]  # [I, d]
    torch.testing.assert_close(items[absent], model.missing[k].expand(len(absent), -1))
    assert model.missing[k].requires_grad == (missing == "learned")
    # garbage in the absent rows changes nothing
    features = ds.modalities["image"].copy()
    features[absent] = 1e3
    noisy = build(dataclasses.replace(ds, modalities={**ds.modalities, "image": features}), sp,
                  missing=missing)
    base = build(ds, sp, missing=missing)
    with torch.no_grad():
        torch.testing.assert_close(noisy.eval().score_users(torch.arange(6)),
                                   base.eval().score_users(torch.arange(6)))


@pytest.mark.parametrize(("fusion", "combination"),  # the default scores / concat: the contract
                         [("scores", "element"), ("vectors", "concat"), ("vectors", "element")])
def test_pair_scores_equal_full_ranking_scores(tiny_topk, fusion, combination):
    ds, sp = tiny_topk
    assert_pair_scores_match_ranking(build(ds, sp, fusion=fusion, combination=combination, dim=16))


@pytest.mark.parametrize(("modalities", "epochs"), [(None, 3), ([], 6)])
def test_short_training_beats_popularity(small_with_pop, modalities, epochs):
    ds, sp, pop_test = small_with_pop
    torch.manual_seed(0)
    model = MMGCN(ds, sp, MMGCN.Config(dim=32, modalities=modalities), seed=0)
    result = Trainer(model, sp, {"loss": "bpr", "epochs": epochs, "batch_size": 2048,
                                 "lr": 1e-2, "l2": 1e-5}).fit()
    assert result["test"]["ndcg@20"] > pop_test["ndcg@20"]
    assert result["test"]["recall@20"] > pop_test["recall@20"]
