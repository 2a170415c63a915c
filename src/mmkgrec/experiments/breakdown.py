"""Test metrics of one cell broken down by user activity and by item popularity."""

from __future__ import annotations

import numpy as np

from mmkgrec.data.split import Split
from mmkgrec.evaluate.metrics import per_user_topk_metrics
from mmkgrec.experiments.spec import TESTED, K

HEAD_SHARE = 0.2  # head = the top 20% of items by train positives
COLD_MAX = 3  # users with <= 3 train positives form their own activity group


def breakdown_groups(data_split: Split, top: np.ndarray, per_user: dict[str, np.ndarray],
                     train_items: np.ndarray) -> list[dict]:
    """Test metrics by user activity and by item popularity for one trained cell.

    Args:
        data_split: the split; activity and popularity come from its train positives only.
        top: ``[n_eval, K]`` ranked test lists of the users of ``split.ground_truth("test")``.
        per_user: per-user ``ndcg@20`` / ``recall@20`` of those users.
        train_items: ``[n_eval]`` train positives of each of those users.

    Returns:
        rows ``{breakdown, group, lo, hi, n_users, ndcg@20, recall@20}``: activity quartiles
        ``Q1``..``Q4`` of the train-history length (``lo``..``hi`` train items) plus ``<=3``;
        popularity ``head`` / ``tail`` (the top 20% of items by train positives / the rest),
        with the metrics restricted to each user's head / tail test items.
    """
    rows = []
    edges = np.quantile(train_items, [0.25, 0.5, 0.75])  # [3]
    quartile = np.searchsorted(np.unique(edges), train_items, side="left")  # [n_eval]
    masks = [(f"Q{q + 1}", quartile == q) for q in range(int(quartile.max()) + 1)]
    masks.append((f"<={COLD_MAX}", train_items <= COLD_MAX))
    for name, mask in masks:  # a handful of groups
        if mask.any():
            rows.append({"breakdown": "activity", "group": name, "lo": int(train_items[mask].min()),
                         "hi": int(train_items[mask].max()), "n_users": int(mask.sum()),
                         **{m: float(per_user[m][mask].mean()) for m in TESTED}})

    users, indptr, items = data_split.ground_truth("test")
    popularity = data_split.item_popularity()  # [n_items]
    n_head = max(1, round(HEAD_SHARE * data_split.n_items))
    is_head = np.zeros(data_split.n_items, dtype=bool)
    is_head[np.argsort(-popularity, kind="stable")[:n_head]] = True
    owner = np.repeat(np.arange(len(users)), np.diff(indptr))  # [nnz] row of each test item
    for name, keep in (("head", is_head[items]), ("tail", ~is_head[items])):
        counts = np.bincount(owner[keep], minlength=len(users))  # [n_eval]
        has = counts > 0
        if not has.any():
            continue
        sub_indptr = np.concatenate([[0], np.cumsum(counts[has])])
        metrics = per_user_topk_metrics(top[has], sub_indptr, items[keep], [K], data_split.n_items)
        pop = popularity[is_head if name == "head" else ~is_head]
        rows.append({"breakdown": "popularity", "group": name, "lo": int(pop.min()),
                     "hi": int(pop.max()), "n_users": int(has.sum()),
                     **{m: float(metrics[m].mean()) for m in TESTED}})
    return rows
