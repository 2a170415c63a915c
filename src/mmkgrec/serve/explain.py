"""Why an item is recommended: KG paths from the user's history items to it, weighted by the
model's user-relation attention, and each modality's share in the item's fused vector.

Paths are found in the UNDIRECTED graph of the dataset's triples (plus the links of registered
items), all 1-hop paths ``h -r- i`` and 2-hop paths ``h -r1- e -r2- i`` from a history item ``h``
to the target ``i``, by vectorised CSR gathers and one join on the middle entity ``e``:
the history side is gathered (history items are few) rather than the target's possibly huge
second hop. A path's weight is the product of the user's attention on its relations
(:meth:`~mmkgrec.models.layers.KGItemAggregator.relation_attention`); without attention
(models other than KGCN / MKGCN) weights are None and shorter paths come first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmkgrec.graph.kg import KnowledgeGraph


def _gather_edges(graph: KnowledgeGraph, sources: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every edge leaving ``sources`` [n]: (source [m], relation [m], target [m])."""
    starts, ends = graph.indptr[sources], graph.indptr[sources + 1]
    degree = ends - starts  # [n]
    owner = np.repeat(sources, degree)  # [m]
    offset = np.arange(degree.sum()) - np.repeat(np.cumsum(degree) - degree, degree)
    edge = np.repeat(starts, degree) + offset  # [m] CSR positions
    return owner, graph.relations[edge], graph.neighbors[edge]


def find_paths(graph: KnowledgeGraph, history: np.ndarray, target: int) -> pd.DataFrame:
    """All 1- and 2-hop paths from ``history`` entities to ``target`` (undirected graph).

    Returns:
        columns ``hops`` (1 or 2), ``source`` (history entity), ``r1``, ``middle`` (-1 for
        1 hop), ``r2`` (-1 for 1 hop), one row per distinct path; the hop entities are
        ``source -r1- target`` or ``source -r1- middle -r2- target``.
    """
    history = np.unique(np.asarray(history, dtype=np.int64))
    history = history[history != target]
    columns = ["hops", "source", "r1", "middle", "r2"]
    if not len(history):
        return pd.DataFrame({c: np.zeros(0, np.int64) for c in columns})
    owner, rel, nb = _gather_edges(graph, history)  # edges of the history items
    one = nb == target
    direct = pd.DataFrame({"hops": 1, "source": owner[one], "r1": rel[one], "middle": -1, "r2": -1})
    _, t_rel, t_nb = _gather_edges(graph, np.array([target]))  # target's edges
    keep = (nb != target) & (nb != owner)
    left = pd.DataFrame({"source": owner[keep], "r1": rel[keep], "middle": nb[keep]})
    right = pd.DataFrame({"middle": t_nb, "r2": t_rel})
    right = right[right["middle"] != target]
    two = left.merge(right, on="middle", how="inner")
    two = two[two["middle"] != two["source"]]
    two.insert(0, "hops", 2)
    paths = pd.concat([direct, two[columns]], ignore_index=True).astype(np.int64)
    return paths.drop_duplicates().reset_index(drop=True)


def weigh_paths(paths: pd.DataFrame, relation_weight: np.ndarray | None, limit: int) -> pd.DataFrame:
    """Add ``w1``, ``w2``, ``weight`` (product) and keep the ``limit`` best paths."""
    paths = paths.copy()
    if relation_weight is None:
        paths["w1"] = paths["w2"] = paths["weight"] = np.nan
        return paths.sort_values(["hops", "source", "r1", "middle"], kind="stable").head(limit)
    paths["w1"] = relation_weight[paths["r1"].to_numpy()]
    w2 = np.where(paths["hops"].to_numpy() == 2,
                  relation_weight[np.maximum(paths["r2"].to_numpy(), 0)], 1.0)
    paths["w2"] = np.where(paths["hops"].to_numpy() == 2, w2, np.nan)
    paths["weight"] = paths["w1"].to_numpy() * w2
    return paths.sort_values(["weight", "hops", "source"], ascending=[False, True, True],
                             kind="stable").head(limit)


def describe_path(row, name_of, relation_name) -> str:
    """One sentence, e.g. "you played A; A and B share the genre 'shoegaze'; relation weight 0.41"."""
    a, b = name_of(int(row.source)), name_of(int(row.target))
    r1 = relation_name(int(row.r1))
    def weight(w) -> str:
        return "" if w is None or np.isnan(w) else f"{w:.2f}"

    if row.hops == 1:
        text = f"you played {a}; {a} and {b} are linked by '{r1}'"
        w = weight(row.w1)
        return text + (f"; relation weight {w}" if w else "")
    middle, r2 = name_of(int(row.middle)), relation_name(int(row.r2))
    if row.r1 == row.r2:
        kind, sep, _ = middle.partition(":")
        what = f"the {kind} '{middle}'" if sep and kind.isalpha() else f"'{middle}'"
        text = f"you played {a}; {a} and {b} share {what} ({r1})"
        w = weight(row.w1)
        return text + (f"; relation weight {w}" if w else "")
    text = f"you played {a}; {a} -[{r1}]- '{middle}' -[{r2}]- {b}"
    w1, w2 = weight(row.w1), weight(row.w2)
    return text + (f"; relation weights {w1}, {w2}" if w1 else "")
