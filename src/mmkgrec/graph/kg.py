"""The knowledge graph in CSR form, KGCN-style fixed-size neighbour sampling, and the bipartite
user-item graph.

The edges of entity ``e`` are ``neighbors[indptr[e]:indptr[e + 1]]`` with relations
``relations[indptr[e]:indptr[e + 1]]``, sorted by (source, relation, target), without duplicates,
so every lookup is a vectorised gather. Three ways to read the stored (head, relation, tail)
triples:

- ``undirected`` (KGCN): each triple both ways with the same relation id. A self-loop
  ``(e, r, e)`` is one edge, not two (KGCN's own adjacency lists would hold it twice);
- ``inverse`` (RecBole's ``kg_reverse_r``): the reverse edge gets relation ``r + n_relations``,
  so the graph has ``2 * n_relations`` relations;
- ``directed``: head -> tail only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mmkgrec.errors import ConfigError, MMKGRecError

Mode = Literal["undirected", "inverse", "directed"]
MODES = ("undirected", "inverse", "directed")


def _segment_ids(indptr: np.ndarray) -> np.ndarray:
    """[nnz] the row of each CSR entry."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


@dataclass(frozen=True)
class KnowledgeGraph:
    """A knowledge graph as CSR adjacency; build it with :meth:`from_triples`."""

    indptr: np.ndarray  # [n_entities + 1] int64
    neighbors: np.ndarray  # [nnz] int64 target entity of each edge
    relations: np.ndarray  # [nnz] int64 relation of each edge
    n_entities: int
    n_relations: int  # relation ids of the edges; doubled in "inverse" mode
    mode: Mode

    @classmethod
    def from_triples(cls, triples, n_entities: int, n_relations: int,
                     mode: Mode = "undirected") -> KnowledgeGraph:
        """Build the CSR adjacency of ``triples``.

        Args:
            triples: ``[n, 3]`` int (head entity, relation, tail entity), e.g. ``MMKG.triples``.
            n_entities: number of entities (isolated ones included, e.g. items without triples).
            n_relations: number of relations of the stored triples (without inverses).
            mode: ``"undirected"``, ``"inverse"`` or ``"directed"`` (see the module docstring).

        Raises:
            ConfigError: unknown ``mode``.
            MMKGRecError: ``triples`` is not ``[n, 3]`` or holds an id out of range.
        """
        if mode not in MODES:
            raise ConfigError(f"unknown graph mode {mode!r}; choose one of {', '.join(MODES)}")
        triples = np.asarray(triples)
        if triples.ndim != 2 or triples.shape[1] != 3:
            raise MMKGRecError(f"triples must be [n, 3], got shape {list(triples.shape)}")
        if len(triples) and not np.issubdtype(triples.dtype, np.integer):
            raise MMKGRecError(f"triples must hold integer ids, got {triples.dtype}")
        triples = triples.astype(np.int64)
        heads, rels, tails = triples.T  # each [n]
        if len(triples):
            if min(heads.min(), tails.min()) < 0 or max(heads.max(), tails.max()) >= n_entities:
                raise MMKGRecError(f"triple entity id out of range [0, {n_entities})")
            if rels.min() < 0 or rels.max() >= n_relations:
                raise MMKGRecError(f"triple relation id out of range [0, {n_relations})")

        if mode == "directed":
            src, rel, dst = heads, rels, tails
        else:
            reverse_rels = rels + n_relations if mode == "inverse" else rels
            src = np.concatenate([heads, tails])  # [2n]
            rel = np.concatenate([rels, reverse_rels])
            dst = np.concatenate([tails, heads])
            n_relations = 2 * n_relations if mode == "inverse" else n_relations

        order = np.lexsort((dst, rel, src))  # by source, then relation, then target
        src, rel, dst = src[order], rel[order], dst[order]
        keep = np.ones(len(src), dtype=bool)  # drop repeats of the previous edge
        keep[1:] = (src[1:] != src[:-1]) | (rel[1:] != rel[:-1]) | (dst[1:] != dst[:-1])
        src, rel, dst = src[keep], rel[keep], dst[keep]
        indptr = np.zeros(n_entities + 1, dtype=np.int64)
        np.cumsum(np.bincount(src, minlength=n_entities), out=indptr[1:])
        return cls(indptr=indptr, neighbors=dst, relations=rel, n_entities=int(n_entities),
                   n_relations=int(n_relations), mode=mode)

    @property
    def n_edges(self) -> int:
        return len(self.neighbors)

    @property
    def padding_relation(self) -> int:
        """The relation id :func:`sample_neighbors` gives isolated entities' self-edges."""
        return self.n_relations

    def degree(self) -> np.ndarray:
        """[n_entities] int64 out-degree (number of distinct (relation, target) edges)."""
        return np.diff(self.indptr)

    def edges(self) -> np.ndarray:
        """[nnz, 3] int64 (source, relation, target), in CSR order."""
        return np.column_stack([_segment_ids(self.indptr), self.relations, self.neighbors])


def sample_neighbors(
    graph: KnowledgeGraph, n_neighbors: int, rng: np.random.Generator | int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """KGCN's fixed-size neighbourhood: ``n_neighbors`` (entity, relation) pairs per entity.

    - degree >= K: K distinct edges, uniformly without replacement;
    - 0 < degree < K: K edges uniformly with replacement;
    - degree 0 (e.g. an item without triples): the entity itself, with the padding relation
      ``graph.n_relations``; models must therefore allocate ``n_relations + 1`` relation
      embeddings.

    Args:
        graph: the CSR knowledge graph.
        n_neighbors: K, the sample size per entity.
        rng: a numpy Generator or a seed; the result is deterministic given it.

    Returns:
        ``(neighbor_ids, relation_ids)``, each int64 ``[n_entities, K]``.
    """
    if n_neighbors < 1:
        raise ConfigError(f"n_neighbors must be >= 1, got {n_neighbors}")
    rng = np.random.default_rng(rng)
    k = int(n_neighbors)
    degree = graph.degree()  # [n_entities]
    edge_ids = np.zeros((graph.n_entities, k), dtype=np.int64)  # [n_entities, K] index into CSR

    # Without replacement: shuffle each row's edges (random keys, sorted within rows), take K.
    big = np.flatnonzero(degree >= k)  # [n_big]
    shuffled = np.lexsort((rng.random(graph.n_edges), _segment_ids(graph.indptr)))  # [nnz]
    edge_ids[big] = shuffled[graph.indptr[big][:, None] + np.arange(k)]  # [n_big, K]

    # With replacement: K uniform offsets into each row.
    small = np.flatnonzero((degree > 0) & (degree < k))  # [n_small]
    offsets = rng.integers(0, degree[small][:, None], size=(len(small), k))  # [n_small, K]
    edge_ids[small] = graph.indptr[small][:, None] + offsets

    if graph.n_edges:
        neighbor_ids, relation_ids = graph.neighbors[edge_ids], graph.relations[edge_ids]
    else:
        neighbor_ids, relation_ids = edge_ids, edge_ids.copy()  # every entity is isolated
    isolated = degree == 0  # [n_entities]
    neighbor_ids[isolated] = np.flatnonzero(isolated)[:, None]
    relation_ids[isolated] = graph.padding_relation
    return neighbor_ids, relation_ids


def multi_hop(neighbor_table, seeds, n_hops: int) -> list:
    """Entity ids of each hop of the receptive field (KGCN's ``get_neighbors``), by gathers.

    Args:
        neighbor_table: ``[n_entities, K]`` from :func:`sample_neighbors` (numpy or torch).
        seeds: ``[n_seeds]`` entity ids, same array type as the table.
        n_hops: number of hops H.

    Returns:
        ``H + 1`` arrays; hop ``h`` is ``[n_seeds, K**h]`` (hop 0 holds the seeds). The relations
        on the edges into hop ``h + 1`` are ``relation_table[hops[h]].reshape(n_seeds, -1)``.
    """
    if n_hops < 0:
        raise ConfigError(f"n_hops must be >= 0, got {n_hops}")
    hops = [seeds.reshape(-1, 1)]  # [n_seeds, 1]
    for _ in range(n_hops):
        hops.append(neighbor_table[hops[-1]].reshape(len(seeds), -1))  # [n_seeds, K**h]
    return hops


# ---- user-item graph -------------------------------------------------------------------------
def to_torch_sparse_adjacency(indptr, item_ids, n_items: int,
                              layout: Literal["coo", "csr"] = "coo") -> torch.Tensor:
    """LightGCN's normalised bipartite adjacency ``D^-1/2 A D^-1/2``.

    Nodes are users ``0..n_users-1`` then items ``n_users + i``; ``A`` holds each user-item pair
    both ways. Nodes without edges get no entries (no division by zero).

    Args:
        indptr, item_ids: the user-item CSR of :func:`mmkgrec.data.csr.user_item_csr`
            (``n_users = len(indptr)-1``).
        n_items: number of items.
        layout: ``"coo"`` (coalesced) or ``"csr"``.

    Returns:
        float32 sparse tensor ``[n_users + n_items, n_users + n_items]``.
    """
    if layout not in ("coo", "csr"):
        raise ConfigError(f"layout must be 'coo' or 'csr', got {layout!r}")
    indptr = np.asarray(indptr, dtype=np.int64)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    n_users = len(indptr) - 1
    users = _segment_ids(indptr)  # [nnz]
    user_degree = np.diff(indptr).astype(np.float64)  # [n_users]
    item_degree = np.bincount(item_ids, minlength=n_items).astype(np.float64)  # [n_items]
    weight = 1.0 / np.sqrt(user_degree[users] * item_degree[item_ids])  # [nnz]
    rows = np.concatenate([users, n_users + item_ids])  # [2 nnz]
    cols = np.concatenate([n_users + item_ids, users])
    size = n_users + n_items
    adjacency = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(np.tile(weight, 2)).float(),
        (size, size), check_invariants=False,  # indices are in range by construction
    ).coalesce()
    if layout == "coo":
        return adjacency
    with warnings.catch_warnings():  # torch's "sparse CSR is in beta" notice
        warnings.simplefilter("ignore", UserWarning)
        return adjacency.to_sparse_csr()
