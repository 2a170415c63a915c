"""Evaluation metrics: CTR (AUC / F1 / accuracy) and full-ranking top-K (RecBole-compatible).

Every metric is computed over the WHOLE evaluated set. AUC in particular is never averaged over
batches: the mean of per-batch AUCs ignores every (positive, negative) pair that straddles two
batches and so is not the AUC (see ``tests/test_metrics.py`` for a counter-example).

Top-K metrics take the ranked lists ``[n_eval_users, max_k]`` (best first, ``-1`` = no item) and
the ground truth as a CSR over the same users (``truth_indptr [n_eval_users + 1]``,
``truth_items [nnz]``, see :func:`mmkgrec.data.csr.user_item_csr`). Definitions follow RecBole:

- ``recall@k = hits@k / |truth|``, ``precision@k = hits@k / k``;
- ``ndcg@k = DCG@k / IDCG@k`` with binary gains, ``DCG@k = sum_{i<k} hit_i / log2(i + 2)`` and
  the IDCG over ``min(|truth|, k)`` hits;
- ``hit@k = 1`` if any of the top k is relevant; ``mrr@k = 1 / rank`` of the first hit (0 if none).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

from mmkgrec.data.csr import csr_rows
from mmkgrec.errors import ConfigError, MMKGRecError

TOPK_METRICS = ("recall", "precision", "ndcg", "hit", "mrr")


def _to_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


# ---- CTR ----------------------------------------------------------------------------------------
def ctr_metrics(labels, scores, threshold: float = 0.5, logloss: bool = False) -> dict[str, float]:
    """AUC, F1 and accuracy of click-through predictions over the whole evaluated set.

    Args:
        labels: ``[n]`` binary labels (0/1 or bool), numpy or torch.
        scores: ``[n]`` predicted scores (probabilities, or logits with ``threshold=0``).
        threshold: a prediction is positive when ``score >= threshold`` (F1 and accuracy).
        logloss: also return the binary cross-entropy (needs probabilities in [0, 1]).

    Returns:
        ``{"auc", "f1", "accuracy"[, "logloss"]}`` as floats.

    Raises:
        MMKGRecError: lengths differ, the set is empty, labels are not binary or hold a single
            class (AUC is undefined), or a score is NaN / inf.
    """
    labels = _to_numpy(labels).reshape(-1)
    scores = _to_numpy(scores).astype(np.float64).reshape(-1)
    if len(labels) != len(scores):
        raise MMKGRecError(f"ctr_metrics: {len(labels)} labels but {len(scores)} scores")
    if len(labels) == 0:
        raise MMKGRecError("ctr_metrics: nothing to evaluate (no labels)")
    if not np.isin(labels, (0, 1)).all():
        raise MMKGRecError("ctr_metrics: labels must be binary (0/1)")
    labels = labels.astype(np.int64)
    if labels.min() == labels.max():
        raise MMKGRecError(
            f"ctr_metrics: every label is {labels[0]}; AUC needs both positives and negatives"
        )
    if not np.isfinite(scores).all():
        raise MMKGRecError("ctr_metrics: scores contain NaN or inf")
    predicted = (scores >= threshold).astype(np.int64)
    out = {
        "auc": float(roc_auc_score(labels, scores)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(labels, predicted)),
    }
    if logloss:
        if scores.min() < 0 or scores.max() > 1:
            raise MMKGRecError("ctr_metrics: logloss needs probabilities in [0, 1], not logits")
        eps = 1e-7
        out["logloss"] = float(log_loss(labels, np.clip(scores, eps, 1 - eps), labels=[0, 1]))
    return out


# ---- top-K --------------------------------------------------------------------------------------
def _check_ks(ks: int | Iterable[int], max_k: int) -> list[int]:
    ks = sorted({int(k) for k in ([ks] if isinstance(ks, (int, np.integer)) else ks)})
    if not ks or ks[0] < 1:
        raise ConfigError(f"top-k cut-offs must be positive integers, got {ks}")
    if ks[-1] > max_k:
        raise ConfigError(
            f"top-k cut-off {ks[-1]} exceeds the {max_k} ranked items per user; rank more items "
            f"(rank_topk clips k to the catalogue size) or drop that cut-off"
        )
    return ks


def per_user_topk_metrics(
    topk_items,
    truth_indptr,
    truth_items,
    ks: int | Iterable[int] = (5, 10, 20, 50),
    n_items: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-user top-K metrics (for paired significance tests); see the module docstring.

    Args:
        topk_items: ``[n_users, max_k]`` int ranked item ids, best first; ``-1`` pads lists that
            are shorter than ``max_k`` (never a hit).
        truth_indptr: ``[n_users + 1]`` CSR row pointer of each evaluated user's relevant items.
        truth_items: ``[nnz]`` relevant item ids (duplicates within a user count once).
        ks: cut-offs, each ``<= max_k``.
        n_items: catalogue size; inferred from the largest id when None.

    Returns:
        ``{"recall@k", "precision@k", "ndcg@k", "hit@k", "mrr@k"}`` for each k, float64
        ``[n_users]``.

    Raises:
        MMKGRecError: shapes disagree, an id is negative (other than -1 padding), a ranked list
            repeats an item, or an evaluated user has no relevant item (filter them out first,
            as RecBole does: recall is undefined for them).
        ConfigError: a cut-off is not positive or exceeds ``max_k``.
    """
    topk = _to_numpy(topk_items).astype(np.int64)  # [n_users, max_k]
    indptr = _to_numpy(truth_indptr).astype(np.int64).reshape(-1)  # [n_users + 1]
    truth = _to_numpy(truth_items).astype(np.int64).reshape(-1)  # [nnz]
    if topk.ndim != 2:
        raise MMKGRecError(f"topk_items must be [n_users, max_k], got shape {list(topk.shape)}")
    n_users, max_k = topk.shape
    if n_users == 0:
        raise MMKGRecError("top-k metrics: no evaluated user")
    if len(indptr) != n_users + 1 or indptr[0] != 0 or indptr[-1] != len(truth) or (
            np.diff(indptr) < 0).any():
        raise MMKGRecError(
            f"truth CSR does not fit {n_users} users: indptr must be non-decreasing, of length "
            f"{n_users + 1}, from 0 to len(truth_items)={len(truth)}"
        )
    if (topk < -1).any() or (truth < 0).any():
        raise MMKGRecError("item ids must be >= 0 (-1 only pads ranked lists)")
    ks = _check_ks(ks, max_k)
    sorted_topk = np.sort(topk, axis=1)  # [n_users, max_k]
    if ((sorted_topk[:, 1:] == sorted_topk[:, :-1]) & (sorted_topk[:, 1:] >= 0)).any():
        raise MMKGRecError("a ranked list repeats an item")
    largest = int(max(topk.max(initial=-1), truth.max(initial=-1)))
    if n_items is None:
        n_items = largest + 1
    elif largest >= n_items:
        raise MMKGRecError(f"item id {largest} out of range for n_items={n_items}")

    # Membership on keys row * n_items + item (sorted, unique: a binary search per entry).
    truth_rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))  # [nnz]
    truth_keys = np.unique(truth_rows * n_items + truth)  # [nnz_unique]
    n_truth = np.bincount(truth_keys // n_items, minlength=n_users)  # [n_users]
    if (n_truth == 0).any():
        raise MMKGRecError(
            f"{int((n_truth == 0).sum())} evaluated users have no relevant item; evaluate only "
            f"users with at least one (as RecBole does)"
        )
    topk_keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + topk  # [n_users, max_k]
    found = np.searchsorted(truth_keys, topk_keys).clip(max=len(truth_keys) - 1)
    hits = (truth_keys[found] == topk_keys) & (topk >= 0)  # [n_users, max_k] bool

    discount = 1.0 / np.log2(np.arange(max_k) + 2.0)  # [max_k]
    hits_at = np.cumsum(hits, axis=1)  # [n_users, max_k]: hits in the top (i + 1)
    dcg_at = np.cumsum(hits * discount, axis=1)  # [n_users, max_k]
    ideal_at = np.cumsum(discount)  # [max_k]: IDCG with (i + 1) relevant items
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), max_k)  # [n_users]

    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit_count = hits_at[:, k - 1].astype(np.float64)  # [n_users]
        out[f"recall@{k}"] = hit_count / n_truth
        out[f"precision@{k}"] = hit_count / k
        out[f"ndcg@{k}"] = dcg_at[:, k - 1] / ideal_at[np.minimum(n_truth, k) - 1]
        out[f"hit@{k}"] = (hit_count > 0).astype(np.float64)
        out[f"mrr@{k}"] = np.where(first_hit < k, 1.0 / (first_hit + 1.0), 0.0)
    return out


def topk_metrics(
    topk_items,
    truth_indptr,
    truth_items,
    ks: int | Iterable[int] = (5, 10, 20, 50),
    n_items: int | None = None,
) -> dict[str, float]:
    """Top-K metrics averaged over ALL evaluated users. Arguments as :func:`per_user_topk_metrics`.

    Returns:
        ``{"recall@k", "precision@k", "ndcg@k", "hit@k", "mrr@k"}`` for each k, as floats.
    """
    per_user = per_user_topk_metrics(topk_items, truth_indptr, truth_items, ks, n_items)
    return {name: float(values.mean()) for name, values in per_user.items()}


# ---- full ranking -------------------------------------------------------------------------------
def rank_topk(
    scores: torch.Tensor,
    exclude_indptr,
    exclude_items,
    k: int,
    users=None,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items of a block of users after masking the items they must not be recommended.

    The shared full-ranking step of every model: the already-seen (e.g. training) items of each
    user are set to ``-inf`` with one vectorised scatter, then ``torch.topk``.

    Args:
        scores: ``[n_block, n_items]`` float scores; row ``b`` belongs to user ``users[b]``.
        exclude_indptr: ``[n_users + 1]`` CSR row pointer (numpy or torch) of the excluded items.
        exclude_items: ``[nnz]`` excluded item ids.
        k: list length. Clipped to ``n_items``, so the result may have fewer than ``k`` columns.
        users: ``[n_block]`` user ids indexing the CSR; None means ``0..n_block-1``.
        inplace: write the mask into ``scores`` instead of a copy (saves memory).

    Returns:
        ``(top_scores, top_items)``, each ``[n_block, min(k, n_items)]``, best first. Where a user
        has fewer allowed items than that, the tail holds item ``-1`` and score ``-inf`` (an item
        a model itself scores ``-inf`` is treated the same way). Ties are broken as
        ``torch.topk`` breaks them (unspecified order among equal scores).

    Raises:
        MMKGRecError: NaN among the scores ranked (not excluded), a user or excluded item id out
            of range, or a bad shape.
        ConfigError: ``k < 1``.
    """
    if scores.ndim != 2:
        raise MMKGRecError(f"scores must be [n_block, n_items], got shape {list(scores.shape)}")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    n_block, n_items = scores.shape
    indptr = torch.as_tensor(exclude_indptr, dtype=torch.int64)  # [n_users + 1]
    items = torch.as_tensor(exclude_items, dtype=torch.int64, device=indptr.device)  # [nnz]
    users = (torch.arange(n_block, device=indptr.device) if users is None
             else torch.as_tensor(users, dtype=torch.int64, device=indptr.device))  # [n_block]
    if users.shape != (n_block,):
        raise MMKGRecError(f"users must be [{n_block}], one per score row, got {list(users.shape)}")
    if n_block and (users.min() < 0 or users.max() >= len(indptr) - 1):
        raise MMKGRecError(f"user id out of range of the exclusion CSR ({len(indptr) - 1} users)")

    rows, cols = csr_rows(indptr, items, users)  # [m] each: the block's excluded cells (one gather)
    if len(cols) and (cols.min() < 0 or cols.max() >= n_items):
        raise MMKGRecError(f"excluded item id out of range [0, {n_items})")

    masked = scores if inplace else scores.clone()
    masked[rows.to(scores.device), cols.to(scores.device)] = float("-inf")
    top_scores, top_items = torch.topk(masked, min(k, n_items), dim=1)  # [n_block, k']
    # topk ranks NaN above every number: a row with a NaN among its rankable scores has one
    # first, so checking the top is checking the row (excluded cells are never ranked)
    if n_items and torch.isnan(top_scores[:, 0]).any():
        raise MMKGRecError("rank_topk: scores contain NaN")
    top_items = top_items.masked_fill(torch.isneginf(top_scores), -1)
    return top_scores, top_items
