"""Metrics: hand-computed cases, sklearn / brute-force references, masking, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, ndcg_score, roc_auc_score

from mmkgrec.data.csr import user_item_csr
from mmkgrec.errors import ConfigError, MMKGRecError
from mmkgrec.evaluate import ctr_metrics, per_user_topk_metrics, rank_topk, topk_metrics


def csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    items = np.array([i for r in rows for i in r], dtype=np.int64)
    return indptr, items


# ---- CTR ----------------------------------------------------------------------------------------
def test_ctr_hand_computed():
    labels = [1, 0, 1, 0, 1]
    scores = [0.9, 0.6, 0.4, 0.2, 0.7]
    # Pairs (pos > neg): 0.9 beats both, 0.7 beats both, 0.4 beats 0.2 only -> AUC 5/6.
    # Predictions at 0.5: [1, 1, 0, 0, 1] -> TP=2, FP=1, FN=1: F1 = 2*2/(2*2+1+1) = 2/3; acc = 3/5.
    out = ctr_metrics(labels, scores, logloss=True)
    assert out["auc"] == pytest.approx(5 / 6)
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(3 / 5)
    expected_ll = -np.mean(np.log([0.9, 0.4, 0.4, 0.8, 0.7]))
    assert out["logloss"] == pytest.approx(expected_ll)
    assert set(ctr_metrics(labels, scores)) == {"auc", "f1", "accuracy"}


def test_ctr_matches_sklearn_and_accepts_torch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    logits = rng.normal(size=500) + labels  # informative
    out = ctr_metrics(torch.from_numpy(labels).bool(), torch.from_numpy(logits), threshold=0.0)
    assert out["auc"] == pytest.approx(roc_auc_score(labels, logits))
    assert out["f1"] == pytest.approx(f1_score(labels, logits >= 0))
    assert out["accuracy"] == pytest.approx(accuracy_score(labels, logits >= 0))


def test_per_batch_auc_is_not_the_auc():
    # Each batch alone ranks its positive above its negative (AUC 1), but across batches the
    # positive 0.2 loses to the negative 0.8: whole-set AUC = 3 of 4 pairs = 0.75.
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    batches = (slice(0, 2), slice(2, 4))
    per_batch = np.mean([ctr_metrics(labels[b], scores[b])["auc"] for b in batches])
    assert per_batch == 1.0
    assert ctr_metrics(labels, scores)["auc"] == pytest.approx(0.75)


@pytest.mark.parametrize("labels, scores, match", [
    ([1, 0], [0.5], "2 labels but 1 scores"),
    ([1, 1, 1], [0.1, 0.2, 0.3], "every label is 1"),
    ([], [], "nothing to evaluate"),
    ([0, 2], [0.1, 0.2], "binary"),
    ([0, 1], [0.1, float("nan")], "NaN"),
])
def test_ctr_bad_input(labels, scores, match):
    with pytest.raises(MMKGRecError, match=match):
        ctr_metrics(labels, scores)


def test_ctr_logloss_needs_probabilities():
    with pytest.raises(MMKGRecError, match="logits"):
        ctr_metrics([0, 1], [-1.0, 2.0], logloss=True)


# ---- top-K: hand-computed ---------------------------------------------------------------------
def test_topk_hand_computed():
    topk = np.array([[1, 2, 3],    # truth {2, 5}: hit at rank 2
                     [4, 0, 1],    # truth {4}:    hit at rank 1
                     [0, 2, 5]])   # truth {1}:    no hit
    indptr, items = csr([[2, 5], [4], [1]])
    out = topk_metrics(topk, indptr, items, ks=(1, 3))
    l3 = 1 / math.log2(3)  # discount of rank 2 = 0.6309...
    # user 0 @3: recall 1/2, precision 1/3, DCG = l3, IDCG = 1 + l3 (two relevant), MRR 1/2.
    # user 1 @1 and @3: recall 1, precision 1 and 1/3, NDCG 1, MRR 1.   user 2: all zero.
    assert out["recall@1"] == pytest.approx((0 + 1 + 0) / 3)
    assert out["recall@3"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert out["precision@1"] == pytest.approx(1 / 3)
    assert out["precision@3"] == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)
    assert out["ndcg@1"] == pytest.approx(1 / 3)
    assert out["ndcg@3"] == pytest.approx((l3 / (1 + l3) + 1 + 0) / 3)
    assert out["ndcg@3"] == pytest.approx(0.462284, abs=1e-6)
    assert out["hit@1"] == pytest.approx(1 / 3)
    assert out["hit@3"] == pytest.approx(2 / 3)
    assert out["mrr@1"] == pytest.approx(1 / 3)
    assert out["mrr@3"] == pytest.approx((0.5 + 1 + 0) / 3)
    per_user = per_user_topk_metrics(torch.from_numpy(topk), indptr, items, ks=3)
    np.testing.assert_allclose(per_user["mrr@3"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(per_user["recall@3"], [0.5, 1.0, 0.0])


def test_ndcg_idcg_is_capped_at_k_and_padding_never_hits():
    # 5 relevant items, k = 2, both top-2 relevant -> NDCG 1 (IDCG over min(5, 2) = 2 ones).
    out = topk_metrics(np.array([[0, 1, -1]]), *csr([[0, 1, 2, 3, 4]]), ks=(2, 3))
    assert out["ndcg@2"] == pytest.approx(1.0)
    assert out["recall@3"] == pytest.approx(2 / 5)  # the -1 pad is not a hit
    # Duplicate truth entries count once: |truth| = 2, not 3.
    assert topk_metrics(np.array([[7]]), *csr([[7, 7, 8]]), ks=1)["recall@1"] == pytest.approx(0.5)


# ---- top-K: references --------------------------------------------------------------------------
def random_ranking(seed: int, n_users: int = 60, n_items: int = 40):
    rng = np.random.default_rng(seed)
    scores = rng.random((n_users, n_items))  # continuous: no ties
    relevance = rng.random((n_users, n_items)) < 0.15
    relevance[relevance.sum(1) == 0, 0] = True  # every evaluated user has a relevant item
    topk = np.argsort(-scores, axis=1)[:, :20]
    users, items = np.nonzero(relevance)
    indptr, truth = user_item_csr(users, items, n_users, n_items)
    return scores, relevance, topk, indptr, truth


@pytest.mark.parametrize("seed", [0, 1])
def test_ndcg_matches_sklearn(seed):
    scores, relevance, topk, indptr, truth = random_ranking(seed)
    per_user = per_user_topk_metrics(topk, indptr, truth, ks=(1, 5, 20))
    for k in (1, 5, 20):
        expected = [ndcg_score(relevance[u:u + 1], scores[u:u + 1], k=k)
                    for u in range(len(scores))]
        np.testing.assert_allclose(per_user[f"ndcg@{k}"], expected, atol=1e-12)


def test_recall_precision_hit_mrr_match_brute_force():
    _, relevance, topk, indptr, truth = random_ranking(2)
    out = topk_metrics(topk, indptr, truth, ks=(3, 10))
    for k in (3, 10):
        recall, precision, hit, mrr = [], [], [], []
        for u in range(len(topk)):
            relevant = set(np.flatnonzero(relevance[u]))
            ranked = list(topk[u, :k])
            hits = [i in relevant for i in ranked]
            recall.append(sum(hits) / len(relevant))
            precision.append(sum(hits) / k)
            hit.append(float(any(hits)))
            mrr.append(1 / (hits.index(True) + 1) if any(hits) else 0.0)
        assert out[f"recall@{k}"] == pytest.approx(np.mean(recall))
        assert out[f"precision@{k}"] == pytest.approx(np.mean(precision))
        assert out[f"hit@{k}"] == pytest.approx(np.mean(hit))
        assert out[f"mrr@{k}"] == pytest.approx(np.mean(mrr))


def test_topk_bad_input():
    indptr, items = csr([[1], [2]])
    topk = np.array([[1, 2], [2, 3]])
    with pytest.raises(ConfigError, match="exceeds the 2 ranked items"):
        topk_metrics(topk, indptr, items, ks=(5,))
    with pytest.raises(ConfigError, match="positive"):
        topk_metrics(topk, indptr, items, ks=(0,))
    with pytest.raises(MMKGRecError, match="does not fit 2 users"):
        topk_metrics(topk, indptr[:2], items[:1], ks=1)
    with pytest.raises(MMKGRecError, match="no evaluated user"):
        topk_metrics(np.zeros((0, 2), dtype=np.int64), [0], [], ks=1)
    with pytest.raises(MMKGRecError, match="no relevant item"):
        topk_metrics(topk, *csr([[1], []]), ks=1)
    with pytest.raises(MMKGRecError, match="repeats an item"):
        topk_metrics(np.array([[1, 1], [2, 3]]), indptr, items, ks=1)
    with pytest.raises(MMKGRecError, match=">= 0"):
        topk_metrics(np.array([[-2, 1], [2, 3]]), indptr, items, ks=1)
    with pytest.raises(MMKGRecError, match="out of range"):
        topk_metrics(topk, indptr, items, ks=1, n_items=3)


# ---- rank_topk ----------------------------------------------------------------------------------
def test_rank_topk_masks_seen_items_even_when_best():
    scores = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0],
                           [0.0, 8.0, 7.0, 1.0, 2.0]])
    indptr, items = csr([[0], [1, 2], [4]])  # CSR over 3 users
    top_scores, top_items = rank_topk(scores, indptr, items, k=2, users=[0, 1])
    assert top_items.tolist() == [[4, 3], [4, 3]]
    assert top_scores.tolist() == [[4.0, 3.0], [2.0, 1.0]]
    # Rows are mapped through `users`: row 0 is user 2 (masks item 4), row 1 is user 0 (item 0).
    _, top_items = rank_topk(scores, indptr, items, k=1, users=torch.tensor([2, 0]))
    assert top_items.tolist() == [[0], [1]]
    assert scores[0, 0] == 9.0  # not modified without inplace


def test_rank_topk_clips_k_pads_and_handles_ties():
    scores = torch.zeros(2, 4)  # all tied
    indptr, items = csr([[0, 1, 2], []])
    top_scores, top_items = rank_topk(scores, indptr, items, k=10)
    assert top_items.shape == (2, 4)  # k clipped to n_items
    # User 0 has one allowed item: it comes first, the rest is padding (-1, -inf).
    assert top_items[0].tolist() == [3, -1, -1, -1]
    assert torch.isneginf(top_scores[0, 1:]).all()
    # User 1: ties give four distinct items, whatever their order.
    assert sorted(top_items[1].tolist()) == [0, 1, 2, 3]
    # The padded ranking feeds the metrics directly.
    out = topk_metrics(top_items, *csr([[3], [2]]), ks=4)
    assert out["hit@4"] == 1.0 and out["precision@4"] == pytest.approx(0.25)


def test_rank_topk_random_never_returns_excluded():
    rng = np.random.default_rng(3)
    n_users, n_items = 50, 30
    seen = rng.random((n_users, n_items)) < 0.3
    indptr, items = user_item_csr(*np.nonzero(seen), n_users, n_items)
    scores = torch.from_numpy(rng.random((n_users, n_items)) + 10 * seen)  # seen items score best
    top_scores, top_items = rank_topk(scores, indptr, items, k=10)
    picked = top_items.numpy()
    valid = picked >= 0
    assert not seen[np.nonzero(valid)[0], picked[valid]].any()
    # Reference: the best allowed items by a dense mask.
    reference = torch.topk(scores.masked_fill(torch.from_numpy(seen), -np.inf), 10).values
    torch.testing.assert_close(top_scores, reference)


def test_rank_topk_bad_input():
    indptr, items = csr([[0], [5]])
    with pytest.raises(MMKGRecError, match="excluded item id out of range"):
        rank_topk(torch.zeros(2, 3), indptr, items, k=1)
    with pytest.raises(MMKGRecError, match="user id out of range"):
        rank_topk(torch.zeros(1, 6), indptr, items, k=1, users=[2])
    with pytest.raises(MMKGRecError, match="NaN"):
        rank_topk(torch.tensor([[float("nan"), 0.0]]), *csr([[]]), k=1)
    with pytest.raises(MMKGRecError, match="NaN"):  # anywhere among the ranked cells, any k
        rank_topk(torch.tensor([[0.0, 3.0], [2.0, float("nan")]]), *csr([[], []]), k=1)
    # an excluded cell is never ranked: its NaN cannot reach a list
    _, top = rank_topk(torch.tensor([[float("nan"), 0.0, 1.0]]), *csr([[0]]), k=2)
    assert top.tolist() == [[2, 1]]
    with pytest.raises(ConfigError):
        rank_topk(torch.zeros(1, 2), *csr([[]]), k=0)
