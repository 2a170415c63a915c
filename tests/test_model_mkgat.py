"""MKGAT: masked modalities change nothing, the attention layer equals its per-edge definition,
pair scores equal full-ranking scores with mean fusion, TransE, it beats pop. The shared
contract (gradients, default-config pairs, checkpoints, defaults): tests/test_model_contract.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import assert_pair_scores_match_ranking

from mmkgrec.errors import ConfigError
from mmkgrec.models.mkgat import MKGAT, MKGATLayer
from mmkgrec.models.pop import Pop
from mmkgrec.train.trainer import Trainer


def build(ds, sp, **overrides):
    torch.manual_seed(0)
    return MKGAT(ds, sp, MKGAT.Config(**overrides), seed=0)


def test_masked_modality_changes_nothing_for_that_item(tiny_topk):
    ds, sp = tiny_topk
    name = "audio"
    absent = np.flatnonzero(~ds.modality_masks[name])
    present = np.flatnonzero(ds.modality_masks[name])
    assert len(absent)

    def with_audio(rows, value):
        features = ds.modalities[name].copy()
        features[rows] = value
        return dataclasses.replace(ds, modalities={**ds.modalities, name: features})

    base = build(ds, sp).eval()
    noisy = build(with_audio(absent, 1e3), sp).eval()  # garbage where the mask says "absent"
    items = torch.as_tensor(absent)
    with torch.no_grad():
        torch.testing.assert_close(noisy.ego_rows(items), base.ego_rows(items))
        torch.testing.assert_close(noisy.score_users(torch.arange(8)),
                                   base.score_users(torch.arange(8)))
        # the check can fail: a present item's features do move its vector
        moved = build(with_audio(present[:1], 3.0), sp).eval()
        assert not torch.allclose(moved.ego_rows(torch.as_tensor(present[:1])),
                                  base.ego_rows(torch.as_tensor(present[:1])))


@pytest.mark.parametrize("aggregation", ["add", "concat"])
def test_attention_layer_equals_its_per_edge_definition(aggregation):
    torch.manual_seed(0)
    n, n_rel, d_in, d_rel, d_out = 7, 3, 5, 4, 6
    layer = MKGATLayer(d_in, d_rel, d_out, aggregation)
    heads = torch.tensor([0, 0, 0, 2, 2, 5, 6])
    relations = torch.tensor([0, 1, 1, 2, 0, 1, 1])
    tails = torch.tensor([1, 3, 4, 0, 0, 6, 5])
    x, rel = torch.randn(n, d_in), torch.randn(n_rel, d_rel)
    m = layer.message(torch.cat([x[heads], rel[relations], x[tails]], dim=1))  # [M, d_out]
    logits = F.leaky_relu(layer.score(m).squeeze(1))
    pi = torch.zeros(len(heads))
    agg = torch.zeros(n, d_out)
    for h in heads.unique():
        edges = heads == h
        pi[edges] = torch.softmax(logits[edges], 0)
        agg[h] = (pi[edges, None] * m[edges]).sum(0)
    expected = (F.leaky_relu(layer.combine(torch.cat([x, agg], 1))) if aggregation == "concat"
                else F.leaky_relu(layer.combine(x) + agg))
    torch.testing.assert_close(layer.attention(x, rel, heads, relations, tails), pi)
    torch.testing.assert_close(layer(x, rel, heads, relations, tails), expected)
    mass = torch.zeros(n).index_add(0, heads, pi)
    torch.testing.assert_close(mass[heads.unique()], torch.ones(len(heads.unique())))


def test_pair_scores_equal_full_ranking_scores_with_mean_fusion(tiny_topk):
    ds, sp = tiny_topk
    assert_pair_scores_match_ranking(build(ds, sp, layers=[16, 8], fusion="mean"))


def test_transe_distance_and_modality_options(tiny_topk):
    ds, sp = tiny_topk
    model = build(ds, sp)
    assert model.modality_names == list(ds.modalities)  # all of them by default
    r = torch.tensor([0, 3])
    heads, tails = torch.randn(2, 64), torch.randn(2, 2, 64)
    distance, norm = model.triple_distance(r, heads, tails)
    e_r = model.relation_emb(r)
    torch.testing.assert_close(distance, ((heads + e_r)[:, None] - tails).pow(2).sum(-1))
    assert norm.shape == (2,)
    kg_only = build(ds, sp, modalities=[])
    assert kg_only.modality_names == [] and len(list(kg_only.fusion.parameters())) == 0
    with pytest.raises(ConfigError, match="unknown modalities"):
        build(ds, sp, modalities=["video"])


def test_short_training_beats_popularity(small_topk):
    ds, sp = small_topk
    pop_test = Trainer(Pop(ds, sp), sp, {}).fit()["test"]
    torch.manual_seed(0)
    model = MKGAT(ds, sp, MKGAT.Config(layers=[32, 16]), seed=0)
    result = Trainer(model, sp, {"loss": "bpr", "epochs": 2, "batch_size": 2048, "lr": 1e-2,
                                 "l2": 1e-5}).fit()
    assert result["test"]["ndcg@20"] > pop_test["ndcg@20"]
    assert result["test"]["recall@20"] > pop_test["recall@20"]
