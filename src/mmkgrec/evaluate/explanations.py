"""Explanation quality of path-based recommenders: coverage, validity, diversity, LIR, SEP, ETD.

A model that explains its recommendations with walked paths (MKRLN / PGPR,
:mod:`mmkgrec.models.mkrln`) returns a :class:`PathRecommendations` (top-k items per user, each
with at most one path) over a :class:`PathGraph` (the graph it walks: TRAIN interactions plus KG
triples). :func:`explanation_metrics` scores the paths:

- ``coverage``: share of recommended items that come with a path;
- ``validity``: share of paths that start at their user, end at their item and whose every
  edge is an edge of the train graph (a self-loop step is valid only as ``(n, self_loop, n)``);
- ``pattern_diversity``: per list, distinct path patterns (relation sequences without self-loops)
  / paths; ``relation_diversity``: per list, distinct relation types on its paths /
  ``min(edges on its paths, relation types of the graph)``;
- the three path properties of Balloccu et al. (SIGIR 2022, "Post Processing Recommender
  Systems with Knowledge Graphs for Recency, Popularity, and Diversity of Explanations"):

  - **LIR** (linking interaction recency): a user's TRAIN interactions sorted by time
    ``t_1 <= ... <= t_n`` get an exponentially weighted moving average of their timestamps,
    min-max normalised per user (1 = most recent); a path's LIR is that of its linking
    interaction (the item of its first step ``user -played-> item``); a list's LIR is the mean
    over its paths. Needs timestamps: NaN without them, and for users with a single train
    interaction (the normalisation is undefined; the authors' code skips them too).
  - **SEP** (shared entity popularity): the nodes of each type (user, item, other entity),
    sorted by degree in the train graph ascending (ties by node id), get the moving average of
    their degrees, min-max normalised per type (1 = most popular); a path's SEP is that of its
    shared entity (the node before the recommended item); a list's SEP is the mean over paths.
  - **ETD** (explanation type diversity): distinct explanation types in a list /
    ``min(k, |types|)``, where a path's type is the relation of its last (non-self-loop) step,
    ``k`` the number of items in the list and ``|types|`` the number of relations of the graph
    that lead into an item. A list without any path has ETD 0.

  The moving average is the paper's ``y_1 = x_1, y_j = (1 - beta) y_{j-1} + beta x_j`` for a
  float ``beta``; ``beta=None`` (default) reproduces the authors' released code, pandas'
  ``Series.ewm(span=n).mean()`` (``alpha = 2 / (n + 1)``, bias-adjusted weights). As in that
  code, a sequence of equal values is replaced by its positions ``0..n-1`` first.

List-level values (diversities, LIR, SEP, ETD) are averaged over the users that have a defined
value (NaN-aware); coverage and validity are shares over all recommended items / all paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmkgrec.errors import MMKGRecError

NODE_USER, NODE_ITEM, NODE_ENTITY = 0, 1, 2
NODE_TYPE_NAMES = ("user", "item", "entity")


# ---- the graph paths walk on --------------------------------------------------------------------
@dataclass(frozen=True)
class PathGraph:
    """A directed graph over users, items and entities: nodes ``0..E-1`` are entities (items are
    entities ``0..I-1``), nodes ``E..E+U-1`` users. Edges sorted by (head, relation, tail)."""

    heads: np.ndarray  # [M] int64 node ids
    relations: np.ndarray  # [M] int64 relation ids
    tails: np.ndarray  # [M] int64 node ids
    n_items: int
    n_entities: int
    n_users: int
    relation_names: tuple[str, ...]  # [n_relations], self-loop included
    self_loop: int = -1  # relation id of a "stay" step; -1: the graph has none

    @property
    def n_nodes(self) -> int:
        return self.n_entities + self.n_users

    @property
    def n_relations(self) -> int:
        return len(self.relation_names)

    def user_node(self, users) -> np.ndarray:
        return self.n_entities + np.asarray(users, dtype=np.int64)

    def node_types(self, nodes) -> np.ndarray:
        """[...] node ids -> [...] int8: 0 user, 1 item, 2 entity, -1 padding (negative id)."""
        nodes = np.asarray(nodes)
        kind = np.where(nodes >= self.n_entities, NODE_USER,
                        np.where(nodes < self.n_items, NODE_ITEM, NODE_ENTITY)).astype(np.int8)
        return np.where(nodes < 0, -1, kind).astype(np.int8)

    def local_ids(self, nodes) -> np.ndarray:
        """[...] node ids -> ids within their type: user index, item index or entity index
        (items keep their entity id, which is their item id); -1 for padding."""
        nodes = np.asarray(nodes, dtype=np.int64)
        return np.where(nodes >= self.n_entities, nodes - self.n_entities, nodes)

    def _keys(self, heads, relations, tails) -> np.ndarray:
        heads, relations, tails = (np.asarray(a, dtype=np.int64) for a in (heads, relations, tails))
        return (heads * self.n_relations + relations) * self.n_nodes + tails

    def has_edges(self, heads, relations, tails) -> np.ndarray:
        """[n] bool: is (head, relation, tail) an edge of the graph (any shapes, broadcast)."""
        keys = self._keys(heads, relations, tails)
        known = self._keys(self.heads, self.relations, self.tails)  # sorted: heads, rels, tails
        at = np.minimum(np.searchsorted(known, keys), max(len(known) - 1, 0))
        return (known[at] == keys) if len(known) else np.zeros(keys.shape, dtype=bool)

    def degree(self) -> np.ndarray:
        """[n_nodes] edges a node takes part in (as head or tail; self-loop edges not counted)."""
        real = self.relations != self.self_loop
        return (np.bincount(self.heads[real], minlength=self.n_nodes)
                + np.bincount(self.tails[real], minlength=self.n_nodes))

    def explanation_types(self) -> np.ndarray:
        """Relation ids that lead into an item (the possible ETD types), ascending."""
        into_item = (self.tails < self.n_items) & (self.relations != self.self_loop)
        return np.unique(self.relations[into_item])


# ---- what a path-based model returns ------------------------------------------------------------
@dataclass
class PathRecommendations:
    """Top-k lists with at most one walked path per recommended item (numpy arrays).

    A path of item ``items[b, j]`` is ``nodes[b, j, 0] -relations[b, j, 0]-> nodes[b, j, 1] ...``
    with ``step_probs[b, j, t]`` the policy's probability of step ``t``; rows without a path
    (``has_path`` False, e.g. items ranked by embedding score because the search did not reach
    them) hold -1 / NaN. Padding beyond the catalogue: ``items`` -1.
    """

    users: np.ndarray  # [n] int64
    items: np.ndarray  # [n, k] int64, -1 = no item
    scores: np.ndarray  # [n, k] float32 ranking scores (logits)
    has_path: np.ndarray  # [n, k] bool
    nodes: np.ndarray  # [n, k, H + 1] int64 graph node ids, -1 without a path
    relations: np.ndarray  # [n, k, H] int64 relation ids, -1 without a path
    step_probs: np.ndarray  # [n, k, H] float32, NaN without a path

    @property
    def path_probs(self) -> np.ndarray:
        """[n, k] probability of each path (product of its steps), NaN without a path."""
        return np.prod(self.step_probs, axis=-1)

    def records(self, graph: PathGraph, item_names=None, entity_names=None,
                user_names=None) -> list[dict]:
        """One dict per recommended item: ``user``, ``rank`` (1-based), ``item``, ``score``,
        ``path`` (None, or a list of steps ``{"type", "id"[, "name"]}`` per node),
        ``relations`` (names) and ``probabilities`` (per step). Optional name arrays (e.g.
        ``dataset.items`` / ``dataset.entities`` / ``dataset.users``) label the nodes."""
        names = {NODE_USER: user_names, NODE_ITEM: item_names, NODE_ENTITY: entity_names}
        if entity_names is not None and item_names is None:
            names[NODE_ITEM] = entity_names
        types, local = graph.node_types(self.nodes), graph.local_ids(self.nodes)
        out = []
        for b, user in enumerate(self.users.tolist()):
            for j, item in enumerate(self.items[b].tolist()):
                if item < 0:
                    continue
                record = {"user": user, "rank": j + 1, "item": item,
                          "score": float(self.scores[b, j]), "path": None, "relations": None,
                          "probabilities": None}
                if self.has_path[b, j]:
                    steps = []
                    for kind, node in zip(types[b, j].tolist(), local[b, j].tolist()):
                        if kind < 0:  # padding after a shorter path
                            break
                        step = {"type": NODE_TYPE_NAMES[kind], "id": node}
                        if names[kind] is not None:
                            step["name"] = str(names[kind][node])
                        steps.append(step)
                    record.update(
                        path=steps,
                        relations=[graph.relation_names[r] for r in self.relations[b, j]
                                   if r >= 0],
                        probabilities=[float(p) for p, r in zip(self.step_probs[b, j],
                                                                self.relations[b, j]) if r >= 0])
                out.append(record)
        return out


# ---- moving averages ----------------------------------------------------------------------------
def normalized_ema(values: np.ndarray, lengths: np.ndarray, beta: float | None = None
                   ) -> np.ndarray:
    """Min-max normalised exponentially weighted moving average of each padded row.

    Args:
        values: [n, L] float, row ``i`` valid in ``[:lengths[i]]`` (sorted as the metric needs).
        lengths: [n] int.
        beta: the paper's decay (``y_1 = x_1``, ``y_j = (1 - beta) y_{j-1} + beta x_j``); None:
            the authors' code, pandas ``ewm(span=n).mean()`` (``alpha = 2 / (n + 1)``,
            ``y_j = sum_i (1 - alpha)^(j-i) x_i / sum_i (1 - alpha)^(j-i)``).

    Returns:
        [n, L] float64 in [0, 1] (NaN beyond a row's length, and on rows of length <= 1). A row
        of equal values is replaced by its positions ``0..n-1`` first (as the authors' code).
    """
    values = np.asarray(values, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    n, width = values.shape
    valid = np.arange(width)[None, :] < lengths[:, None]  # [n, L]
    low = np.where(valid, values, np.inf).min(axis=1, initial=np.inf)
    high = np.where(valid, values, -np.inf).max(axis=1, initial=-np.inf)
    flat = low == high  # every value equal: use positions
    values = np.where(flat[:, None], np.arange(width, dtype=np.float64)[None, :], values)
    if beta is None:
        decay = 1.0 - 2.0 / (lengths.astype(np.float64) + 1.0)  # [n]
    else:
        if not 0.0 < beta <= 1.0:
            raise MMKGRecError(f"beta must be in (0, 1], got {beta}")
        decay = np.full(n, 1.0 - beta)
    out = np.full((n, width), np.nan)
    numerator = np.zeros(n)
    denominator = np.zeros(n)
    for j in range(width):  # the fixed loop over positions, vectorised over rows
        x = values[:, j]
        if beta is None:  # bias-adjusted weights
            numerator = decay * numerator + x
            denominator = decay * denominator + 1.0
            y = numerator / denominator
        else:  # the recursion, y_1 = x_1
            y = x if j == 0 else decay * numerator + (1.0 - decay) * x
            numerator = y
        out[:, j] = y
    out[~valid] = np.nan
    low = np.nanmin(np.where(valid, out, np.nan), axis=1, initial=np.inf)
    high = np.nanmax(np.where(valid, out, np.nan), axis=1, initial=-np.inf)
    span = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (out - low[:, None]) / span[:, None]
    out[(lengths <= 1) | ~(span > 0)] = np.nan
    out[~valid] = np.nan
    return out


def _padded_groups(groups: np.ndarray, keys: tuple[np.ndarray, ...], values: np.ndarray,
                   n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by (group, *keys): (order [m], padded values [n_groups, L], lengths
    [n_groups], position of each sorted row within its group [m])."""
    order = np.lexsort((*reversed(keys), groups))  # by group, then keys
    lengths = np.bincount(groups, minlength=n_groups)
    width = int(lengths.max()) if len(lengths) and len(groups) else 0
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(order)) - starts[groups[order]]
    padded = np.zeros((n_groups, width))
    padded[groups[order], position] = values[order]
    return order, padded, lengths, position


def lir_table(users, items, timestamps, n_users: int, n_items: int, beta: float | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """LIR of every TRAIN interaction: (sorted keys ``user * n_items + item`` [m], LIR [m]).

    Each user's interactions are sorted by (timestamp, item); a (user, item) pair seen several
    times keeps its first timestamp.
    """
    frame = pd.DataFrame({"user": np.asarray(users, dtype=np.int64),
                          "item": np.asarray(items, dtype=np.int64),
                          "t": np.asarray(timestamps, dtype=np.float64)})
    frame = frame.sort_values("t", kind="stable").drop_duplicates(["user", "item"])
    u, i, t = (frame[c].to_numpy() for c in ("user", "item", "t"))
    order, padded, lengths, position = _padded_groups(u, (t, i), t, n_users)
    ema = normalized_ema(padded, lengths, beta)  # [n_users, L]
    keys = u[order] * n_items + i[order]
    values = ema[u[order], position]
    sort = np.argsort(keys)
    return keys[sort], values[sort]


def sep_table(graph: PathGraph, beta: float | None = None) -> np.ndarray:
    """[n_nodes] SEP of every node: per node type, degree-sorted moving average, min-max."""
    degree = graph.degree().astype(np.float64)
    kinds = graph.node_types(np.arange(graph.n_nodes)).astype(np.int64)
    nodes = np.arange(graph.n_nodes)
    order, padded, lengths, position = _padded_groups(kinds, (degree, nodes), degree, 3)
    ema = normalized_ema(padded, lengths, beta)  # [3, L]
    out = np.full(graph.n_nodes, np.nan)
    out[nodes[order]] = ema[kinds[order], position]
    return out


def train_timestamps(dataset, split) -> pd.DataFrame | None:
    """(user, item, timestamp) of the split's TRAIN positives, or None without timestamps."""
    if not getattr(dataset, "has_timestamps", False):
        return None
    stamped = dataset.positives()[["user", "item", "timestamp"]]
    frame = split.train_positives().merge(stamped, on=["user", "item"], how="left")
    return frame if frame["timestamp"].notna().all() else frame.dropna()


# ---- the metrics --------------------------------------------------------------------------------
def _path_summary(recs: PathRecommendations, graph: PathGraph) -> dict[str, np.ndarray]:
    """Per path (flattened over lists): list row, validity, pattern code, type, linking item,
    shared entity, number of non-self-loop steps, and the relation ids of those steps."""
    rows, cols = np.nonzero(recs.has_path & (recs.items >= 0))  # [P]
    nodes = recs.nodes[rows, cols].astype(np.int64)  # [P, H + 1]
    rels = recs.relations[rows, cols].astype(np.int64)  # [P, H]
    n_paths, hops = rels.shape
    users = recs.users[rows]
    heads, tails = nodes[:, :-1], nodes[:, 1:]
    pad = rels < 0
    stay = (rels == graph.self_loop) & ~pad
    real = ~pad & ~stay  # [P, H]
    edge_ok = np.where(real, graph.has_edges(np.maximum(heads, 0), np.maximum(rels, 0),
                                             np.maximum(tails, 0)), True)
    edge_ok &= ~stay | (heads == tails)
    # the last node before padding
    last = np.where(pad.any(1), pad.argmax(1), hops)  # [P] index of the end node
    end = nodes[np.arange(n_paths), last]
    valid = (edge_ok.all(1) & (nodes[:, 0] == graph.user_node(users))
             & (end == recs.items[rows, cols]) & real.any(1))
    base = graph.n_relations + 1
    code = np.zeros(n_paths, dtype=np.int64)
    kind = np.full(n_paths, -1, dtype=np.int64)
    shared = np.full(n_paths, -1, dtype=np.int64)
    linking = np.full(n_paths, -1, dtype=np.int64)
    first_head = np.full(n_paths, -1, dtype=np.int64)
    for t in range(hops):  # the fixed loop over hops
        step = real[:, t]
        code = np.where(step, code * base + rels[:, t] + 1, code)
        kind = np.where(step, rels[:, t], kind)
        shared = np.where(step, heads[:, t], shared)
        fresh = step & (linking < 0)
        linking = np.where(fresh, tails[:, t], linking)
        first_head = np.where(fresh, heads[:, t], first_head)
    # the linking interaction is an item the path's user played (its first real step)
    linking = np.where((first_head == graph.user_node(users)) & (linking >= 0)
                       & (linking < graph.n_items), linking, -1)
    return {"rows": rows, "valid": valid, "code": code, "type": kind, "shared": shared,
            "linking": linking, "n_steps": real.sum(1), "rels": np.where(real, rels, -1)}


def _distinct_per_row(rows: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """[n_rows] number of distinct ``values`` per row (entries with value < 0 ignored)."""
    keep = values >= 0
    if not keep.any():
        return np.zeros(n_rows, dtype=np.int64)
    pairs = np.unique(np.stack([rows[keep], values[keep]], axis=1), axis=0)
    return np.bincount(pairs[:, 0], minlength=n_rows)


def per_user_explanation_metrics(
    recs: PathRecommendations, graph: PathGraph, timestamps: pd.DataFrame | None = None,
    beta_lir: float | None = None, beta_sep: float | None = None,
) -> dict[str, np.ndarray]:
    """List-level values, ``[n]`` float64 each (NaN where undefined): ``coverage``,
    ``pattern_diversity``, ``relation_diversity``, ``lir``, ``sep``, ``etd``; plus ``n_paths``
    and ``n_valid`` per list. See the module docstring for the definitions."""
    n = len(recs.users)
    summary = _path_summary(recs, graph)
    rows = summary["rows"]
    n_items = (recs.items >= 0).sum(1)  # [n] list lengths
    n_paths = np.bincount(rows, minlength=n).astype(np.float64)
    n_valid = np.bincount(rows, weights=summary["valid"].astype(np.float64), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        coverage = n_paths / n_items
        patterns = _distinct_per_row(rows, summary["code"], n) / n_paths
        edges = np.bincount(rows, weights=summary["n_steps"].astype(np.float64), minlength=n)
        hops = summary["rels"].shape[1] if summary["rels"].ndim == 2 else 0
        relation_ids = summary["rels"].reshape(-1)
        relation_rows = np.repeat(rows, hops)
        graph_relations = len(np.unique(graph.relations[graph.relations != graph.self_loop]))
        relations = (_distinct_per_row(relation_rows, relation_ids, n)
                     / np.minimum(edges, graph_relations))
        n_types = len(graph.explanation_types())
        etd = _distinct_per_row(rows, summary["type"], n) / np.minimum(n_items, n_types)
    coverage[n_items == 0] = np.nan
    etd = np.where(n_items > 0, np.nan_to_num(etd, nan=0.0), np.nan)

    sep_values = sep_table(graph, beta_sep)
    sep_path = np.where(summary["shared"] >= 0, sep_values[np.maximum(summary["shared"], 0)],
                        np.nan)
    lir_path = np.full(len(rows), np.nan)
    if timestamps is not None and len(timestamps):
        keys, values = lir_table(timestamps["user"], timestamps["item"],
                                 timestamps["timestamp"], graph.n_users, graph.n_items, beta_lir)
        linking = summary["linking"]
        query = recs.users[rows] * graph.n_items + np.maximum(linking, 0)
        at = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
        found = (linking >= 0) & (keys[at] == query) if len(keys) else np.zeros(len(rows), bool)
        lir_path = np.where(found, values[at] if len(keys) else np.nan, np.nan)
    return {"coverage": coverage, "pattern_diversity": patterns, "relation_diversity": relations,
            "lir": _row_nanmean(rows, lir_path, n), "sep": _row_nanmean(rows, sep_path, n),
            "etd": etd, "n_paths": n_paths, "n_valid": n_valid}


def _row_nanmean(rows: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """[n_rows] mean of the non-NaN ``values`` of each row (NaN for a row without any)."""
    ok = ~np.isnan(values)
    total = np.bincount(rows[ok], weights=values[ok], minlength=n_rows)
    count = np.bincount(rows[ok], minlength=n_rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def explanation_metrics(
    recs: PathRecommendations, graph: PathGraph, timestamps: pd.DataFrame | None = None,
    beta_lir: float | None = None, beta_sep: float | None = None,
) -> dict[str, float]:
    """Explanation quality of top-k lists with paths (see the module docstring).

    Args:
        recs: the lists and their paths.
        graph: the train graph the paths walk on.
        timestamps: (user, item, timestamp) of the TRAIN interactions (:func:`train_timestamps`);
            None: LIR is NaN.
        beta_lir, beta_sep: moving-average decays (None: the authors' code, see the docstring).

    Returns:
        ``coverage`` and ``validity`` (shares over all recommended items / all paths),
        ``pattern_diversity``, ``relation_diversity``, ``lir``, ``sep``, ``etd`` (means of the
        list-level values over lists where they are defined), ``n_paths``, ``n_patterns``
        (distinct patterns over all lists) and ``n_lists``.
    """
    per_user = per_user_explanation_metrics(recs, graph, timestamps, beta_lir, beta_sep)
    summary = _path_summary(recs, graph)
    n_items = int((recs.items >= 0).sum())
    n_paths = int(per_user["n_paths"].sum())

    def mean(name: str) -> float:
        values = per_user[name]
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    return {
        "coverage": n_paths / n_items if n_items else float("nan"),
        "validity": float(per_user["n_valid"].sum()) / n_paths if n_paths else float("nan"),
        "pattern_diversity": mean("pattern_diversity"),
        "relation_diversity": mean("relation_diversity"),
        "lir": mean("lir"), "sep": mean("sep"), "etd": mean("etd"),
        "n_paths": n_paths, "n_patterns": len(np.unique(summary["code"])),
        "n_lists": len(recs.users),
    }


def evaluate_explanations(model, dataset, split, stage: str = "test", k: int = 20,
                          users: np.ndarray | None = None, beta_lir: float | None = None,
                          beta_sep: float | None = None) -> dict[str, float]:
    """:func:`explanation_metrics` of the top-``k`` lists of a model that returns paths
    (``model.recommend_paths`` and ``model.path_graph``), for the stage's evaluated users
    (default) with the stage's exclusions (valid: train positives; test: train + valid).

    Raises:
        MMKGRecError: the model does not return paths.
    """
    if not hasattr(model, "recommend_paths") or not hasattr(model, "path_graph"):
        raise MMKGRecError(f"{type(model).__name__} returns no paths: explanation metrics need "
                           "a path-based model (mkrln, pgpr)")
    if users is None:
        users = split.ground_truth(stage)[0]
    recs = model.recommend_paths(users, k, exclude=split.ranking_exclusions(stage))
    return explanation_metrics(recs, model.path_graph(), train_timestamps(dataset, split),
                               beta_lir, beta_sep)
