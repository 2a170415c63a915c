"""Fused all-items scoring of the KG item aggregator (KGCN, MKGCN; issue 13 §1).

``score[b, i] = <u_b, v_i(u_b)>`` for a block of users and every item, the same function as
``einsum(u, KGItemAggregator.forward_all_items(u, ...))`` (the reference, kept as is), computed
without a [users x items x dim] temporary per op:

- **User-independent rows.** A row whose K sampled neighbours all carry one relation gets the
  weight 1/K on each for every user; if its inputs are user-independent too, so is its output.
  Those rows (every item of music-d, ~64 % of lastfm-kgcn's) are computed once per ranking pass
  (:func:`build_plan`) and an item among them is scored by one matmul ``u @ V.T``.
- **Reach.** Round ``r`` computes only the user-dependent rows that a user-dependent row of
  round ``r + 1`` reads (items in the last round); user-independent inputs of a round come from
  a table shared by every user of the block.
- **Tiles.** The remaining rows are computed in item tiles small enough to stay in cache: the
  K-term mixture accumulates in place into one [users, tile, d] buffer, the activation runs in
  place, and in the last round the dot product with the user reduces it to [users, tile].

Backends (environment ``MMKGREC_KG_RANKING``, read when a plan is built): ``native`` (default:
1 and 2 hops through ``fused_kernel.c``, compiled on first use by :mod:`fused_native`: items
16 to a SIMD step, AVX-512 or AVX2 where the CPU has it, and for full ranking the scores,
exclusions and top-k of one user at a time without a [users x items] matrix, over the whole
catalogue or a candidate set (:func:`rank_all_items`, :func:`restricted`); deeper
plans, other inner activations, non-CPU tensors and machines without a C compiler take
``fused``), ``fused`` (the eager ATen path below), ``compiled`` (the 1-hop tile through
``torch.compile``, Inductor's C++ backend, one fixed tile shape padded; any compiler failure
warns once and falls back to ``fused``; deeper rounds run ``fused``), and ``reference``
(``forward_all_items`` + einsum). Every backend agrees with the reference to float32 rounding
(tests: rtol 1e-4, atol 1e-5; the native tanh is a rational approximation within 5e-7).

Shapes: B users, R relation embeddings, E entities, I items, K neighbours, d width.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from mmkgrec.data.csr import csr_rows
from mmkgrec.errors import ConfigError, MMKGRecError
from mmkgrec.models import fused_native

ENV = "MMKGREC_KG_RANKING"
BACKENDS = ("fused", "native", "compiled", "reference")
#: elements of one tile's [B, tile, d] buffer (1 MiB in float32: cache-resident)
TILE_ELEMENTS = 1 << 18
#: elements of the largest per-user table of a multi-hop round; above it, user sub-blocks
TABLE_ELEMENTS = 1 << 23
#: users per call of the compiled tile (blocks are padded to it: one compiled shape per plan)
COMPILED_USERS = 32


def ranking_backend() -> str:
    """The backend named by ``$MMKGREC_KG_RANKING`` (default ``native``)."""
    value = os.environ.get(ENV, "native").strip().lower() or "native"
    if value not in BACKENDS:
        raise ConfigError(f"{ENV}={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


@dataclass
class RoundPlan:
    """The user-dependent rows round ``r`` computes and where their inputs come from."""

    rows: Tensor  # [n] global entity ids of the rows computed per user (items: item ids)
    relations: Tensor  # [n, K] relation ids of their neighbours (attention)
    slots: Tensor | None  # round 0: [n, K, d] user-independent W_s h + b + W_n h_k per slot
    neighbors: Tensor | None  # rounds >= 1: [n, K] column of each neighbour in the input table
    own: Tensor | None  # rounds >= 1: [n] column of the row itself (None: ``neighbor`` agg.)
    shared: Tensor | None  # rounds >= 1: [n_c, w] transformed user-independent inputs
    weight: Tensor | None  # rounds >= 1: [w, d] maps the previous round's rows to table columns
    bias: Tensor | None  # rounds >= 1: [d]
    self_offset: int | None  # rounds >= 1: feature offset of W_s h in the table (None: no self)


@dataclass
class RankingPlan:
    """Everything user-independent of one ranking pass (see the module docstring)."""

    rounds: list[RoundPlan]
    n_items: int
    const_items: Tensor  # [I_c] items whose vector is user-independent
    const_vectors: Tensor  # [I_c, d] their vectors
    relation_emb: Tensor  # [R, d]
    dim: int
    inner: Callable[[Tensor], Tensor]
    backend: str
    inverse: Tensor  # [I] column of each item in the block's [const items | last.rows] scores
    compiled: Any = None  # the compiled 1-hop tile, once built
    native: Any = None  # the native backend's tables (fused_native.Tables), once built
    #: candidate-set views (:func:`restricted`), keyed by the candidate ids' bytes
    views: dict[bytes, RankingPlan] = field(default_factory=dict)


def restricted(plan: RankingPlan, columns: Tensor) -> RankingPlan:
    """The plan over the candidate items ``columns`` [C] (sorted item ids) only: its items are
    the columns 0..C-1 (item ``columns[c]`` is column c), every other item is dropped, so a
    pass scores C items instead of I. Built once per candidate set and plan (cached)."""
    key = columns.detach().cpu().numpy().tobytes()
    view = plan.views.get(key)
    if view is not None:
        return view
    columns = columns.long().to(plan.const_items.device)
    column_of = torch.full((plan.n_items,), -1, dtype=torch.long,
                           device=columns.device)  # [I] column of each item, -1: dropped
    column_of[columns] = torch.arange(len(columns), device=columns.device)
    const = column_of[plan.const_items] >= 0  # [I_c]
    last = plan.rounds[-1]
    kept = column_of[last.rows] >= 0  # [n_last] the last round's rows are items

    def rows_of(x: Tensor | None) -> Tensor | None:
        return None if x is None else x[kept]

    last = replace(last, rows=column_of[last.rows[kept]], relations=last.relations[kept],
                   slots=rows_of(last.slots), neighbors=rows_of(last.neighbors),
                   own=rows_of(last.own))
    const_items = column_of[plan.const_items[const]]  # [C_c] columns
    inverse = torch.empty(len(columns), dtype=torch.long, device=columns.device)  # [C]
    inverse[torch.cat([const_items, last.rows])] = torch.arange(len(columns),
                                                                device=columns.device)
    view = plan.views[key] = replace(
        plan, rounds=[*plan.rounds[:-1], last], n_items=len(columns), const_items=const_items,
        const_vectors=plan.const_vectors[const], inverse=inverse, compiled=None, native=None,
        views={})
    return view


@torch.no_grad()
def build_plan(agg: Any, base: Tensor, relation_emb: Tensor, neighbors: Tensor,
               relations: Tensor, n_items: int, backend: str | None = None) -> RankingPlan:
    """The plan of a :class:`~mmkgrec.models.layers.KGItemAggregator` (``n_hops >= 1``) over
    base vectors [E, d], relation embeddings [R, d] and neighbour / relation tables [E, K]."""
    hops, dim = agg.n_hops, agg.dim
    neighbors, relations = neighbors.long(), relations.long()
    n_entities, device = base.shape[0], base.device
    items = torch.arange(n_items, device=device)
    single = (relations == relations[:, :1]).all(1)  # [E] attention 1/K for every user
    # Rows each round must produce for the items: round H-1 = items, round r-1 = rows of round r
    # and their neighbours (an entity's own row is among them: self terms).
    reach = [items]
    for _ in range(hops - 1):
        reach.insert(0, torch.unique(torch.cat([reach[0], neighbors[reach[0]].reshape(-1)])))
    # Forward: which rows are user-independent, and their outputs ([E, d] tables, 0 elsewhere).
    const_prev = torch.ones(n_entities, dtype=torch.bool, device=device)  # round -1 = base
    table_prev = base
    consts, tables, slots0 = [], [], None
    for r in range(hops):
        ids = reach[r]
        w_self, w_neigh = agg._split_linear(r)
        bias = agg._linear(r).bias
        act = torch.tanh if r == hops - 1 else agg.inner
        const = single[ids] & const_prev[neighbors[ids]].all(1)  # [n]
        if w_self is not None:
            const &= const_prev[ids]
        own = bias.expand(len(ids), -1) if w_self is None else table_prev[ids] @ w_self.T + bias
        slots = (table_prev @ w_neigh.T)[neighbors[ids]] + own.unsqueeze(1)  # [n, K, d]
        if r == 0:
            slots0 = slots  # [n_0, K, d], rows in the order of reach[0]
        table = base.new_zeros(n_entities, dim)  # [E, d]
        table[ids[const]] = act(slots[const].mean(1))
        flag = torch.zeros(n_entities, dtype=torch.bool, device=device)
        flag[ids[const]] = True
        consts.append(flag)
        tables.append(table)
        const_prev, table_prev = flag, table
    # Backward: the user-dependent rows each round must compute for the rounds after it.
    need = items[~consts[-1][:n_items]]
    rounds: list[RoundPlan] = []
    for r in range(hops - 1, -1, -1):
        if r == 0:
            assert slots0 is not None
            position = torch.full((n_entities,), -1, dtype=torch.long, device=device)
            position[reach[0]] = torch.arange(len(reach[0]), device=device)
            rounds.insert(0, RoundPlan(need, relations[need], slots0[position[need]], None, None,
                                       None, None, None, None))
            break
        w_self, w_neigh = agg._split_linear(r)
        self_offset = None if w_self is None else 0 if agg.aggregator == "sum" else dim
        weight = w_neigh if self_offset in (None, 0) else torch.cat([w_neigh, w_self])  # [w, d]
        read = neighbors[need].reshape(-1) if w_self is None else torch.cat(
            [neighbors[need].reshape(-1), need])
        read = torch.unique(read)
        shared_ids, prev_need = read[consts[r - 1][read]], read[~consts[r - 1][read]]
        column = torch.full((n_entities,), -1, dtype=torch.long, device=device)
        column[torch.cat([shared_ids, prev_need])] = torch.arange(len(read), device=device)
        rounds.insert(0, RoundPlan(
            need, relations[need], None, column[neighbors[need]],
            None if w_self is None else column[need], tables[r - 1][shared_ids] @ weight.T,
            weight, agg._linear(r).bias, self_offset))
        need = prev_need
    const_items = items[consts[-1][:n_items]]
    inverse = torch.empty(n_items, dtype=torch.long, device=device)
    inverse[torch.cat([const_items, rounds[-1].rows])] = items
    return RankingPlan(rounds, n_items, const_items, tables[-1][const_items], relation_emb, dim,
                       agg.inner, ranking_backend() if backend is None else backend, inverse)


_IN_PLACE: dict[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] = {
    torch.relu: torch.relu_, torch.sigmoid: torch.sigmoid_, torch.tanh: torch.tanh_,
    torch.nn.functional.leaky_relu: torch.nn.functional.leaky_relu_,
}


def _activate_(act: Callable[[Tensor], Tensor], x: Tensor) -> None:
    """x = act(x) in place."""
    in_place = _IN_PLACE.get(act)
    if in_place is None:
        x.copy_(act(x))
    else:
        in_place(x)


def _tile(n_users: int, dim: int) -> int:
    return max(1, TILE_ELEMENTS // max(1, n_users * dim))


def _mix_first(weights: Tensor, slots: Tensor) -> Tensor:
    """weights [B, t, K], slots [t, K, d] -> sum_k w_k slot_k [B, t, d] (one buffer)."""
    pre = weights[:, :, 0, None] * slots[:, 0]
    for j in range(1, slots.shape[1]):
        pre.addcmul_(weights[:, :, j, None], slots[:, j])
    return pre


def _tile_scores(exp_scores: Tensor, relations: Tensor, slots: Tensor, users: Tensor) -> Tensor:
    """The 1-hop tile as one expression (what ``torch.compile`` fuses): exp_scores [B, R],
    relations [t, K], slots [t, K, d], users [B, d] -> [B, t]."""
    weights = exp_scores[:, relations]  # [B, t, K]
    weights = weights / weights.sum(-1, keepdim=True)
    pre = weights[:, :, 0, None] * slots[None, :, 0, :]  # [B, t, d]: K terms, one expression
    for j in range(1, slots.shape[1]):
        pre = pre + weights[:, :, j, None] * slots[None, :, j, :]
    return (torch.tanh(pre) * users[:, None, :]).sum(-1)


_COMPILE_FAILED: list[str] = []  # the first failure's message: warn once, then stay eager


def _compiled_scores(plan: RankingPlan, exp_scores: Tensor, users: Tensor) -> Tensor | None:
    """The 1-hop user-dependent items through torch.compile, in padded user tiles of
    COMPILED_USERS; None (after one warning per process) when compiling or running fails."""
    if _COMPILE_FAILED:
        return None
    first = plan.rounds[0]
    try:
        if plan.compiled is None:
            plan.compiled = torch.compile(_tile_scores, dynamic=False)
        n, parts = len(users), []
        for s in range(0, n, COMPILED_USERS):
            e, u = exp_scores[s:s + COMPILED_USERS], users[s:s + COMPILED_USERS]
            pad = COMPILED_USERS - len(u)
            if pad:  # fixed shape: one compilation per plan
                e = torch.cat([e, e.new_ones(pad, e.shape[1])])
                u = torch.cat([u, u.new_zeros(pad, u.shape[1])])
            assert first.slots is not None
            parts.append(plan.compiled(e, first.relations, first.slots, u)[:COMPILED_USERS - pad])
        return torch.cat(parts)
    except Exception as error:  # noqa: BLE001 (any compiler failure: fall back once)
        _COMPILE_FAILED.append(f"{type(error).__name__}: {error}")
        warnings.warn(f"torch.compile of the KG ranking tile failed ({_COMPILE_FAILED[0][:300]});"
                      f" using the eager fused path", RuntimeWarning, stacklevel=2)
        return None


@torch.no_grad()
def score_all_items(plan: RankingPlan, users: Tensor) -> Tensor:
    """users [B, d] -> logits [B, I] over every item."""
    if _native(plan, users):  # per-thread tables: no user blocks
        scores = _native_block(plan, users, _exp_relation_scores(plan, users))
        assert isinstance(scores, Tensor)
        return scores
    block = _table_block(plan, len(users))
    buffers: dict[tuple[int, int], Tensor] = {}  # (round, users) -> its input table
    if block >= len(users):
        return _score_block(plan, users, buffers)
    return torch.cat([_score_block(plan, users[s:s + block], buffers)  # bounded tables
                      for s in range(0, len(users), block)])


@torch.no_grad()
def score_items(plan: RankingPlan, users: Tensor, items: Tensor) -> Tensor:
    """users [B, d], items [B, C] item ids -> logits [B, C]: the columns :func:`score_all_items`
    gives those items, computed for them alone (two-stage serving re-ranks a few candidates).
    1-hop plans only (``len(plan.rounds) == 1``)."""
    if len(plan.rounds) != 1:
        raise ValueError("score_items needs a 1-hop plan")
    first, n_const = plan.rounds[0], len(plan.const_items)
    n_pairs, n_candidates = items.numel(), items.shape[1]
    # flat pair indices and index_select throughout: advanced indexing costs ~20 us a call
    position = plan.inverse.index_select(0, items.reshape(-1))  # [B*C] column in [const | rows]
    scores = users.new_empty(n_pairs)  # [B*C]
    pairs = torch.nonzero(position < n_const).squeeze(1)  # user-independent: one dot each
    if len(pairs):
        u = users.index_select(0, pairs // n_candidates)  # [n, d]
        v = plan.const_vectors.index_select(0, position.index_select(0, pairs))  # [n, d]
        scores.index_copy_(0, pairs, (u * v).sum(-1))
    pairs = torch.nonzero(position >= n_const).squeeze(1)  # user-dependent pairs
    if len(pairs):
        assert first.slots is not None
        row = position.index_select(0, pairs) - n_const  # [n]
        owner = pairs // n_candidates  # [n] user of each pair
        relation_scores = users @ plan.relation_emb.T / plan.dim  # [B, R]
        exp_scores = torch.exp(relation_scores - relation_scores.amax(dim=1, keepdim=True))
        picked = (owner * exp_scores.shape[1]).unsqueeze(1) + first.relations.index_select(0, row)
        weights = exp_scores.reshape(-1).index_select(0, picked.reshape(-1)).reshape(picked.shape)
        weights = weights / weights.sum(-1, keepdim=True)  # [n, K]
        mixed = torch.bmm(weights.unsqueeze(1), first.slots.index_select(0, row)).squeeze(1)
        scores.index_copy_(0, pairs, (mixed.tanh_() * users.index_select(0, owner)).sum(-1))
    return scores.reshape(items.shape)


@torch.no_grad()
def rank_all_items(plan: RankingPlan, users: Tensor, user_ids: Tensor, k: int,
                   exclude_indptr: Tensor, exclude_items: Tensor,
                   columns: Tensor | None = None) -> Tensor | None:
    """Full ranking in native passes (scores, exclusions and top-k per user; no [B, I]
    matrix): users [B, d] of the users user_ids [B], each user's excluded items the rows
    user_ids of the CSR exclude_indptr [U + 1] / exclude_items [nnz] -> top items
    [B, min(k, I)], best first, -1 = no item; ties: lower item id first (``torch.topk`` leaves
    their order unspecified). With ``columns`` [C] (sorted candidate item ids) only those
    items are scored and ranked: the exclusions and the result are then columns 0..C-1 (see
    :func:`restricted`). None where the native kernel does not take the plan (see
    :func:`_native`): the caller scores and ranks.

    Raises:
        MMKGRecError: NaN among a user's ranked scores (as :func:`~mmkgrec.evaluate.rank_topk`).
    """
    if not _native(plan, users) or not fused_native.usable(exclude_indptr):
        return None
    if columns is not None:
        plan = restricted(plan, columns)
        if plan.n_items == 0:
            return None
    user_ids = user_ids.long()
    starts = exclude_indptr[user_ids]
    lengths = exclude_indptr[user_ids + 1] - starts  # [B]
    _, excluded = csr_rows(exclude_indptr, exclude_items, user_ids)  # [m], grouped by user
    if len(excluded) and (excluded.min() < 0 or excluded.max() >= plan.n_items):
        raise MMKGRecError(f"excluded item id out of range [0, {plan.n_items})")
    indptr = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])  # [B + 1]
    ranked = _native_block(plan, users, _exp_relation_scores(plan, users),
                           (indptr, excluded, min(k, plan.n_items)))
    assert isinstance(ranked, tuple)
    if ranked[2]:
        raise MMKGRecError("rank_topk: scores contain NaN")
    return ranked[1]


def _exp_relation_scores(plan: RankingPlan, users: Tensor) -> Tensor:
    """users [B, d] -> exp(<u, r> / d - max_r) [B, R]: the attention numerators."""
    relation_scores = users @ plan.relation_emb.T / plan.dim  # [B, R]
    return torch.exp(relation_scores - relation_scores.amax(dim=1, keepdim=True))


def _table_block(plan: RankingPlan, n_users: int) -> int:
    """Users per block so that no round's per-user input table exceeds TABLE_ELEMENTS."""
    widest = max([0] + [(len(p.shared) + len(plan.rounds[r - 1].rows)) * p.shared.shape[1]
                        for r, p in enumerate(plan.rounds) if p.shared is not None])
    return n_users if widest == 0 else max(1, TABLE_ELEMENTS // widest)


def _native(plan: RankingPlan, users: Tensor) -> bool:
    """Whether the native kernel takes this plan: 1 hop, or 2 hops with an inner activation
    it has; float32 on the CPU, a compiler present."""
    if plan.backend != "native" or plan.n_items == 0 or users.dtype != torch.float32:
        return False
    if len(plan.rounds) == 2 and plan.inner not in fused_native.ACTIVATIONS:
        return False
    return len(plan.rounds) <= 2 and fused_native.usable(users)


def _table(p: RoundPlan, r: int, h: Tensor, buffers: dict[tuple[int, int], Tensor]) -> Tensor:
    """Round r's inputs [columns, B, w]: the shared rows (written once per call and block size),
    then the previous round's user-dependent rows h [n, B, d] transformed in place."""
    assert p.shared is not None and p.weight is not None
    n_shared, key = len(p.shared), (r, h.shape[1])
    table = buffers.get(key)
    if table is None:
        table = buffers[key] = h.new_empty(n_shared + h.shape[0], h.shape[1], p.shared.shape[1])
        table[:n_shared] = p.shared.unsqueeze(1)
    torch.matmul(h, p.weight.T, out=table[n_shared:])
    return table


def _score_block(plan: RankingPlan, users: Tensor, buffers: dict[tuple[int, int], Tensor]
                 ) -> Tensor:
    """users [B, d] -> [B, I]."""
    exp_scores = _exp_relation_scores(plan, users)  # [B, R]
    # Scores in the order [user-independent items | user-dependent items]: contiguous writes,
    # one column gather at the end.
    n_const = len(plan.const_items)
    ordered = users.new_empty(len(users), plan.n_items)  # [B, I]
    ordered[:, :n_const] = users @ plan.const_vectors.T
    scores = ordered[:, n_const:]  # [B, I - I_c] in the order of the last round's rows
    last = plan.rounds[-1]
    if len(last.rows) and plan.backend == "compiled" and len(plan.rounds) == 1:
        compiled = _compiled_scores(plan, exp_scores, users)
        if compiled is not None:
            scores.copy_(compiled)
            return ordered.index_select(1, plan.inverse)
    if len(last.rows):
        _user_rounds(plan, users, exp_scores, scores, buffers)
    return ordered.index_select(1, plan.inverse)


def _native_tables(plan: RankingPlan) -> fused_native.Tables:
    if plan.native is None:
        first = plan.rounds[0]
        assert first.slots is not None
        if len(plan.rounds) == 1:  # the user-dependent items' slots, grouped
            relations, slots, rows = first.relations, first.slots, first.rows
        else:  # deeper: only the user-independent items are grouped
            relations, slots, rows = first.relations[:0], first.slots[:0], first.rows[:0]
        plan.native = fused_native.tables(plan.const_items, plan.const_vectors, relations,
                                          slots, rows, plan.n_items)
    return plan.native


def _native_block(plan: RankingPlan, users: Tensor, exp_scores: Tensor,
                  exclusions: tuple[Tensor, Tensor, int] | None = None
                  ) -> Tensor | tuple[Tensor, Tensor, int]:
    """users [B, d] through the native kernel: the scores of every item [B, I], or with
    ``exclusions`` (indptr [B + 1], items [m], k) the top k (see fused_native)."""
    tables = _native_tables(plan)
    if len(plan.rounds) == 1:
        if exclusions is None:
            return fused_native.scores_1hop(tables, exp_scores, users)
        return fused_native.rank_1hop(tables, exp_scores, users, *exclusions)
    first, last = plan.rounds
    assert first.slots is not None and last.neighbors is not None and last.bias is not None
    assert last.shared is not None and last.weight is not None
    return fused_native.two_hops(tables, exp_scores, users, fused_native.ACTIVATIONS[plan.inner],
                                 first.relations, first.slots, last.shared, last.weight,
                                 last.neighbors, last.own, last.self_offset or 0, last.bias,
                                 last.relations, last.rows, exclusions)


def _user_rounds(plan: RankingPlan, users: Tensor, exp_scores: Tensor, scores: Tensor,
                 buffers: dict[tuple[int, int], Tensor]) -> None:
    """The user-dependent rounds: scores [B, n] of the last round's rows, written in place."""
    n_users, tile, dim = len(users), _tile(len(users), plan.dim), plan.dim
    # Multi-hop rounds keep rows first ([rows, B, d]): a neighbour gather copies whole rows.
    h = None  # [n_{r-1}, B, d] the previous round's user-dependent rows
    for r, p in enumerate(plan.rounds):
        is_last = r == len(plan.rounds) - 1
        table = None if p.shared is None else _table(p, r, h, buffers) if h is not None else None
        out = None if is_last else users.new_empty(len(p.rows), n_users, dim)
        for s in range(0, len(p.rows), tile):
            weights = exp_scores[:, p.relations[s:s + tile]]  # [B, t, K]
            weights = weights / weights.sum(-1, keepdim=True)
            if p.slots is not None and is_last:  # 1 hop: [B, t, d], tanh and dot in place
                pre = _mix_first(weights, p.slots[s:s + tile])
                scores[:, s:s + tile] = torch.bmm(pre.tanh_(), users.unsqueeze(-1)).squeeze(-1)
                continue
            w = weights.permute(1, 0, 2)  # [t, B, K]
            # the pre-activation accumulates in place: in this round's output, or (last) a buffer
            pre = (users.new_empty(min(tile, len(p.rows) - s), n_users, dim) if out is None
                   else out[s:s + tile])  # [t, B, d]
            if p.slots is not None:  # round 0 of several: user-independent slots
                sl = p.slots[s:s + tile]  # [t, K, d]
                torch.mul(w[:, :, 0, None], sl[:, None, 0], out=pre)
                for j in range(1, sl.shape[1]):
                    pre.addcmul_(w[:, :, j, None], sl[:, None, j])
            else:
                assert table is not None and p.neighbors is not None and p.bias is not None
                nb = p.neighbors[s:s + tile]  # [t, K]
                if p.own is None:
                    pre.copy_(p.bias.expand_as(pre))
                elif table.shape[2] == dim:  # sum: W h is the table itself
                    torch.index_select(table, 0, p.own[s:s + tile], out=pre).add_(p.bias)
                else:  # concat: W_s h at feature offset d
                    off = p.self_offset or 0
                    pre.copy_(table.index_select(0, p.own[s:s + tile])[..., off:off + dim])
                    pre.add_(p.bias)
                for j in range(nb.shape[1]):
                    pre.addcmul_(w[:, :, j, None], table.index_select(0, nb[:, j])[..., :dim])
            if is_last:  # [t, B] -> scores [B, t]
                scores[:, s:s + tile] = (pre.tanh_() * users).sum(-1).T
            else:
                _activate_(plan.inner, pre)
        h = out
