"""Evaluation: CTR metrics, full-ranking top-K metrics and the shared masked top-k ranking.

Typical use::

    from mmkgrec.evaluate import rank_topk, topk_metrics
    _, top = rank_topk(scores, train_indptr, train_items, k=50, users=block_users)
    topk_metrics(top_all, test_indptr, test_items, ks=(10, 20))
"""

from mmkgrec.evaluate.metrics import (
    TOPK_METRICS,
    ctr_metrics,
    per_user_topk_metrics,
    rank_topk,
    topk_metrics,
)

__all__ = ["TOPK_METRICS", "ctr_metrics", "per_user_topk_metrics", "rank_topk", "topk_metrics"]

from mmkgrec.evaluate.ranking import evaluate_ctr, evaluate_topk, time_full_ranking

__all__ += ["evaluate_ctr", "evaluate_topk", "time_full_ranking"]
