"""Model evaluation on a split: full-ranking top-K and CTR, the same code for every model.

Top-K: ``model.prepare_ranking()`` once, then per block of evaluated users (those with at least
one positive in the stage, :meth:`Split.ground_truth`) ``model.score_users`` -> mask the items
known before the stage (:meth:`Split.ranking_exclusions`) and every item outside the split's
candidate set (:meth:`Split.candidate_items`) -> ``torch.topk`` ->
metrics over all evaluated users. A model's own ``rank_users`` (same scores, one fused pass,
over the candidate items only) replaces the score / mask / top-k steps where it has one.
CTR: logits of every labelled row of the stage, metrics over the whole set (AUC is never
averaged over batches).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmkgrec.data.split import Split, Stage
from mmkgrec.errors import ConfigError, MMKGRecError
from mmkgrec.evaluate.metrics import ctr_metrics, per_user_topk_metrics, rank_topk


def evaluate_topk(
    model: Any,  # a Recommender (models/ sits above this layer)
    split: Split,
    stage: Stage,
    ks: Iterable[int] = (5, 10, 20, 50),
    batch_users: int = 256,
    device: str | torch.device | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Full-ranking top-K metrics of ``model`` on ``stage`` (``"valid"`` or ``"test"``).

    Args:
        model: a :class:`~mmkgrec.models.base.Recommender`.
        split: the split; valid excludes train positives from the ranking, test train + valid.
        ks: cut-offs. Lists are cut at the catalogue size and padded with "no item", so a cut-off
            above ``n_items`` is allowed (it then counts every allowed item).
        batch_users: users scored per block (memory: ``batch_users * n_items`` scores).
        device: where to score; default: the model's device.

    Returns:
        ``(metrics, per_user)``: ``{"recall@k", "precision@k", "ndcg@k", "hit@k", "mrr@k"}``
        averaged over evaluated users, and the same as float64 ``[n_eval]`` arrays for paired
        tests, users in the order of ``split.ground_truth(stage)[0]``.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"top-k cut-offs must be positive integers, got {ks}")
    users, truth_indptr, truth_items = split.ground_truth(stage)
    if not users.size:
        raise MMKGRecError(f"the split has no {stage} positives: nothing to rank")
    top = rank_stage(model, split, stage, users, ks[-1], batch_users, device)  # [n_eval, max_k]
    per_user = per_user_topk_metrics(top, truth_indptr, truth_items, ks, split.n_items)
    return {name: float(values.mean()) for name, values in per_user.items()}, per_user


def evaluate_ctr(
    model: Any,  # a Recommender (models/ sits above this layer)
    split: Split,
    stage: Stage,
    batch: int = 65536,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """AUC, F1, accuracy and log-loss of ``model`` on the labelled rows of ``stage`` (ctr split).

    Returns:
        :func:`~mmkgrec.evaluate.ctr_metrics` over the whole stage, with ``logloss``.
    """
    frame = split.part(stage)
    if "label" not in frame.columns:
        raise ConfigError(f"CTR evaluation needs a ctr split (labelled rows); this split's "
                          f"protocol is {split.protocol!r}: use evaluate_topk")
    device = _device_of(model, device)
    users = torch.tensor(frame["user"].to_numpy(), device=device)  # [n]
    items = torch.tensor(frame["item"].to_numpy(), device=device)  # [n]
    with _eval_mode(model):
        logits = torch.cat([model(users[s:s + batch], items[s:s + batch])
                            for s in range(0, len(users), batch)])  # [n]
    return ctr_metrics(frame["label"].to_numpy(), torch.sigmoid(logits.float()).cpu(),
                       logloss=True)


def time_full_ranking(
    model: Any,  # a Recommender (models/ sits above this layer)
    split: Split,
    stage: Stage = "test",
    k: int = 50,
    batch_users: int = 256,
    device: str | torch.device | None = None,
    users: np.ndarray | None = None,
) -> float:
    """Seconds of one full-ranking pass (prepare, score, mask, top-k) over ``users``.

    ``users`` defaults to every user of the split. CUDA work is synchronised before the clock
    stops.
    """
    users = np.arange(split.n_users, dtype=np.int64) if users is None else np.asarray(users)
    device = _device_of(model, device)
    _synchronize(device)
    start = time.perf_counter()
    rank_stage(model, split, stage, users, k, batch_users, device)
    _synchronize(device)
    return time.perf_counter() - start


def rank_stage(model: Any, split: Split, stage: Stage, users: np.ndarray, k: int,
               batch_users: int, device, prepare: bool = True) -> np.ndarray:
    """[len(users), k] top items (best first, -1 = no item) with the stage's exclusions.
    ``prepare=False``: the caller has run ``model.prepare_ranking()`` on the current weights
    (one pass in several calls keeps the plan's per-pass tables)."""
    if batch_users < 1:
        raise ConfigError(f"batch_users must be >= 1, got {batch_users}")
    device = _device_of(model, device)
    exclude_indptr, exclude_items = split.ranking_exclusions(stage)
    indptr = torch.as_tensor(exclude_indptr, device=device)  # [n_users + 1]
    items = torch.as_tensor(exclude_items, device=device)  # [nnz]
    users_t = torch.as_tensor(users, dtype=torch.int64, device=device)  # [n_eval]
    top = torch.full((len(users), k), -1, dtype=torch.int64)  # [n_eval, k]
    allowed = split.candidate_items(stage)  # the split's candidate set; None: every item
    columns = None  # [C] the candidate items, sorted: only their columns are ranked
    if allowed is not None and len(allowed) < split.n_items:
        columns = torch.as_tensor(allowed, dtype=torch.int64, device=device)
        indptr, items = _exclusions_in_columns(indptr, items, columns, split.n_items)
    rank_users = getattr(model, "rank_users", None)  # optional; other scorers lack it
    with _eval_mode(model):
        if prepare:
            model.prepare_ranking()
        # Masking writes into the scores unless they may alias model memory (views, buffers).
        owned = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        for start in range(0, len(users), batch_users):
            block = users_t[start:start + batch_users]  # [b]
            if rank_users is not None:  # a model's own exact full ranking, where it has one
                best = rank_users(block, k, indptr, items, columns)
                if best is not None:
                    if columns is not None:  # column -> item id (-1 stays -1)
                        best = torch.where(best >= 0, columns[best.clamp(min=0)], best)
                    top[start:start + len(block), :best.shape[1]] = best.cpu()
                    continue
            scores = model.score_users(block)  # [b, n_items]
            if scores.shape != (len(block), split.n_items):
                raise MMKGRecError(
                    f"{type(model).__name__}.score_users returned shape {list(scores.shape)}, "
                    f"expected [{len(block)}, {split.n_items}]")
            scores = scores.float()
            if columns is not None:
                scores = scores.index_select(1, columns)  # [b, C] a private copy
            private = scores._base is None and scores.untyped_storage().data_ptr() not in owned
            _, best = rank_topk(scores, indptr, items, k, users=block, inplace=private)
            if columns is not None:  # column -> item id (-1 stays -1)
                best = torch.where(best >= 0, columns[best.clamp(min=0)], best)
            top[start:start + len(block), :best.shape[1]] = best.cpu()
    return top.numpy()


# ---- internals ----------------------------------------------------------------------------------
def _exclusions_in_columns(indptr: Tensor, items: Tensor, columns: Tensor, n_items: int
                           ) -> tuple[Tensor, Tensor]:
    """An exclusion CSR over item ids (indptr [U + 1], items [nnz]) restated over the candidate
    columns [C]: excluded items outside the candidates are dropped (they are never ranked)."""
    column_of = torch.full((n_items,), -1, dtype=torch.int64, device=columns.device)  # [I]
    column_of[columns] = torch.arange(len(columns), device=columns.device)
    mapped = column_of[items.long()]  # [nnz]
    kept = mapped >= 0
    rows = torch.repeat_interleave(torch.arange(len(indptr) - 1, device=indptr.device),
                                   indptr.diff())  # [nnz] user of each excluded item
    counts = torch.bincount(rows[kept], minlength=len(indptr) - 1)  # [U]
    new_indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # [U + 1]
    return new_indptr, mapped[kept]


@contextmanager
def _eval_mode(model: nn.Module):
    """``torch.no_grad()`` and ``model.eval()``, restoring the training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device_of(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
