"""KGAT: the collaborative KG is leak-free, attention is a per-head softmax refreshed per epoch,
pair scores equal full-ranking scores per aggregator, the TransR loss learns, it beats pop. The
shared contract (gradients, checkpoints, defaults): tests/test_model_contract.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import assert_pair_scores_match_ranking

from mmkgrec.data.split import split
from mmkgrec.models.kgat import KGAT, CollaborativeKG, neighbor_sum, segment_softmax
from mmkgrec.models.pop import Pop
from mmkgrec.train.trainer import Trainer


def build(data, **overrides):
    ds, sp = data
    torch.manual_seed(0)
    return KGAT(ds, sp, KGAT.Config(**overrides), seed=0)


def pair_keys(users, items, n_items):
    return set((np.asarray(users) * n_items + np.asarray(items)).tolist())


def test_collaborative_kg_holds_train_pairs_only_and_kg_both_ways(tiny_topk):
    ds, sp = tiny_topk
    ckg = CollaborativeKG.build(ds, sp)
    e, r = ds.n_entities, ds.n_relations
    assert ckg.n_nodes == e + ds.n_users and ckg.n_relations == 2 * r + 2
    user_item = ckg.relations == ckg.interact
    item_user = ckg.relations == ckg.interact + 1
    got = pair_keys(ckg.heads[user_item] - e, ckg.tails[user_item], ds.n_items)
    train = sp.train_positives()
    assert got == pair_keys(train["user"], train["item"], ds.n_items)
    assert got == pair_keys(ckg.tails[item_user] - e, ckg.heads[item_user], ds.n_items)
    for stage in ("valid", "test"):
        held_out = sp.positives(stage)
        assert len(held_out) and not got & pair_keys(held_out["user"], held_out["item"],
                                                     ds.n_items)
    # every KG triple appears forwards (relation r) and backwards (relation r + R)
    edges = set(zip(ckg.heads.tolist(), ckg.relations.tolist(), ckg.tails.tolist()))
    for h, rel, t in ds.triples[:50].tolist():
        assert (h, rel, t) in edges and (t, rel + r, h) in edges
    assert len(edges) == ckg.n_edges  # no repeats
    assert ckg.heads.max() < ckg.n_nodes and (ckg.tails[user_item] < ds.n_items).all()


def test_segment_softmax_and_neighbor_sum_match_dense_references():
    torch.manual_seed(0)
    segments = torch.tensor([0, 0, 2, 2, 2, 3])
    scores = torch.randn(6, requires_grad=True)
    pi = segment_softmax(scores, segments, 5)
    for s in (0, 2, 3):
        torch.testing.assert_close(pi[segments == s], torch.softmax(scores[segments == s], 0))
    tails = torch.tensor([1, 4, 0, 1, 1, 3])
    x = torch.randn(5, 3)
    dense = torch.zeros(5, 5).index_put((segments, tails), pi.detach(), accumulate=True)
    for weights in (pi, pi.detach()):  # gather path (needs grad) and sparse-matmul path
        torch.testing.assert_close(neighbor_sum(segments, tails, weights, x), dense @ x)
    neighbor_sum(segments, tails, pi, x).sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


def test_attention_rows_sum_to_one_and_follow_the_transr_formula(tiny_topk):
    model = build(tiny_topk)
    heads = model.edge_heads
    mass = torch.zeros(model.ckg.n_nodes).index_add(0, heads, model.attention)  # [N]
    has_edges = torch.bincount(heads, minlength=model.ckg.n_nodes) > 0
    torch.testing.assert_close(mass[has_edges], torch.ones(int(has_edges.sum())))
    assert (mass[~has_edges] == 0).all() and (model.attention > 0).all()
    # one head, by hand: pi(h, r, t) = softmax_t (W_r e_t)^T tanh(W_r e_h + e_r)
    h = int(heads[0])
    edges = (heads == h).nonzero().squeeze(1)
    e, w, rel = model.node_emb.weight, model.relation_proj, model.relation_emb.weight
    with torch.no_grad():
        raw = torch.stack([(e[model.edge_tails[j]] @ w[model.edge_relations[j]])
                           @ torch.tanh(e[h] @ w[model.edge_relations[j]]
                                        + rel[model.edge_relations[j]]) for j in edges])
    torch.testing.assert_close(model.attention[edges], torch.softmax(raw, 0))


def test_attention_is_refreshed_each_epoch_and_checkpointed(tiny_topk):
    model = build(tiny_topk)
    before = model.attention.clone()
    with torch.no_grad():
        model.node_emb.weight.mul_(3.0)
    model.start_epoch(1, np.random.default_rng(1))
    assert not torch.allclose(before, model.attention)
    assert "attention" in model.state_dict()
    clone = build(tiny_topk)
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    users = torch.arange(5)
    torch.testing.assert_close(clone.score_users(users), model.score_users(users))


@pytest.mark.parametrize("aggregator", ["bi-interaction", "gcn", "graphsage"])
def test_pair_scores_equal_full_ranking_scores(tiny_topk, aggregator):
    model = build(tiny_topk, aggregator=aggregator, layers=[16, 8])
    assert_pair_scores_match_ranking(model)
    assert model.node_table().shape[1] == model.output_dim == 64 + 16 + 8


def test_transr_kg_loss_decreases_and_can_be_switched_off(tiny_topk):
    model = build(tiny_topk, kg_batch_size=256)
    h, r, t = (torch.as_tensor(a[:3]) for a in (model.ckg.heads, model.ckg.relations,
                                                 model.ckg.tails))
    e = model.node_emb.weight
    distance, _ = model.triple_distance(r, e[h], e[t].unsqueeze(1))  # [3, 1]
    w = model.relation_proj[r]
    by_hand = ((torch.einsum("bd,bdk->bk", e[h], w) + model.relation_emb(r)
                - torch.einsum("bd,bdk->bk", e[t], w)) ** 2).sum(1)
    torch.testing.assert_close(distance[:, 0], by_hand)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model.auxiliary_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert build(tiny_topk, kg_loss_weight=0.0).auxiliary_loss() is None


def test_short_training_beats_popularity(small_topk):
    ds, sp = small_topk
    pop = Trainer(Pop(ds, sp), sp, {})
    pop_test = pop.fit()["test"]
    torch.manual_seed(0)
    model = KGAT(ds, sp, KGAT.Config(layers=[32, 16]), seed=0)
    result = Trainer(model, sp, {"loss": "bpr", "epochs": 4, "batch_size": 2048, "lr": 1e-2,
                                 "l2": 1e-5}).fit()
    assert result["test"]["ndcg@20"] > pop_test["ndcg@20"]
    assert result["test"]["recall@20"] > pop_test["recall@20"]


def test_ctr_split_uses_train_positives_only(tiny_topk):
    ds, _ = tiny_topk
    sp = split(ds, protocol="ctr", seed=0)
    ckg = CollaborativeKG.build(ds, sp)
    user_item = ckg.relations == ckg.interact
    got = pair_keys(ckg.heads[user_item] - ds.n_entities, ckg.tails[user_item], ds.n_items)
    train = sp.train_positives()  # label-1 rows of train
    assert got == pair_keys(train["user"], train["item"], ds.n_items)
    negatives = sp.train[sp.train["label"] == 0]
    assert not got & pair_keys(negatives["user"], negatives["item"], ds.n_items)
