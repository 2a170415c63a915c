"""The CSR knowledge graph, neighbour sampling, multi-hop gathers and the user-item graph."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mmkgrec.data.csr import user_item_csr
from mmkgrec.errors import ConfigError, MMKGRecError
from mmkgrec.graph import (
    KnowledgeGraph,
    multi_hop,
    sample_neighbors,
    to_torch_sparse_adjacency,
)

# 5 entities, 2 relations. (0,0,1) is repeated, (1,0,0) is its reverse, (3,1,3) a self-loop,
# entity 4 is isolated.
TRIPLES = np.array([[0, 0, 1], [0, 1, 2], [1, 0, 2], [3, 1, 3], [1, 0, 0], [0, 0, 1]])


def rows(graph: KnowledgeGraph) -> list[list[tuple[int, int]]]:
    """Each entity's (relation, neighbour) edges, in CSR order."""
    return [list(zip(graph.relations[a:b].tolist(), graph.neighbors[a:b].tolist()))
            for a, b in zip(graph.indptr[:-1], graph.indptr[1:])]


def test_undirected_adjacency():
    kg = KnowledgeGraph.from_triples(TRIPLES, n_entities=5, n_relations=2)
    assert kg.mode == "undirected" and kg.n_relations == 2
    assert rows(kg) == [
        [(0, 1), (1, 2)],
        [(0, 0), (0, 2)],
        [(0, 1), (1, 0)],
        [(1, 3)],  # the self-loop once, not twice
        [],
    ]
    assert kg.indptr.tolist() == [0, 2, 4, 6, 7, 7]
    assert kg.degree().tolist() == [2, 2, 2, 1, 0]
    assert kg.indptr.dtype == kg.neighbors.dtype == kg.relations.dtype == np.int64


def test_inverse_adjacency():
    kg = KnowledgeGraph.from_triples(TRIPLES, 5, 2, mode="inverse")
    assert kg.n_relations == 4 and kg.padding_relation == 4
    assert rows(kg) == [
        [(0, 1), (1, 2), (2, 1)],  # 0->1 stored, and reverse of (1,0,0)
        [(0, 0), (0, 2), (2, 0)],
        [(2, 1), (3, 0)],
        [(1, 3), (3, 3)],  # self-loop and its inverse are different edges
        [],
    ]


def test_directed_adjacency_and_edges():
    kg = KnowledgeGraph.from_triples(TRIPLES, 5, 2, mode="directed")
    assert rows(kg) == [[(0, 1), (1, 2)], [(0, 0), (0, 2)], [], [(1, 3)], []]
    assert kg.edges().tolist() == [[0, 0, 1], [0, 1, 2], [1, 0, 0], [1, 0, 2], [3, 1, 3]]


def test_graph_bad_input():
    with pytest.raises(ConfigError, match="unknown graph mode"):
        KnowledgeGraph.from_triples(TRIPLES, 5, 2, mode="both")
    with pytest.raises(MMKGRecError, match="entity id out of range"):
        KnowledgeGraph.from_triples(TRIPLES, 3, 2)
    with pytest.raises(MMKGRecError, match="relation id out of range"):
        KnowledgeGraph.from_triples(TRIPLES, 5, 1)
    with pytest.raises(MMKGRecError, match=r"\[n, 3\]"):
        KnowledgeGraph.from_triples(TRIPLES[:, :2], 5, 2)


# ---- sampling -----------------------------------------------------------------------------------
def random_graph(seed: int = 0, n_entities: int = 300, n_triples: int = 1500, n_relations: int = 5):
    rng = np.random.default_rng(seed)
    triples = np.column_stack([rng.integers(0, n_entities - 20, n_triples),
                               rng.integers(0, n_relations, n_triples),
                               rng.integers(0, n_entities - 20, n_triples)])
    return KnowledgeGraph.from_triples(triples, n_entities, n_relations)  # last 20 isolated


def test_sampled_neighbors_are_true_edges():
    kg = random_graph()
    k = 6
    nbr, rel = sample_neighbors(kg, k, rng=0)
    assert nbr.shape == rel.shape == (kg.n_entities, k) and nbr.dtype == np.int64
    degree = kg.degree()
    sources = np.repeat(np.arange(kg.n_entities), k)
    edge_set = {tuple(e) for e in kg.edges().tolist()}
    sampled = np.column_stack([sources, rel.ravel(), nbr.ravel()])
    connected = np.repeat(degree > 0, k)
    assert all(tuple(e) in edge_set for e in sampled[connected].tolist())
    # No duplicate edge when degree >= K (an edge = (relation, neighbour) pair).
    big = np.flatnonzero(degree >= k)
    codes = rel[big] * kg.n_entities + nbr[big]  # [n_big, K]
    assert (np.diff(np.sort(codes, axis=1), axis=1) != 0).all()
    # Isolated entities: themselves with the padding relation.
    isolated = np.flatnonzero(degree == 0)
    assert len(isolated) >= 20
    assert (nbr[isolated] == isolated[:, None]).all()
    assert (rel[isolated] == kg.n_relations).all()


def test_sampling_is_deterministic_given_the_seed():
    kg = random_graph()
    a = sample_neighbors(kg, 4, rng=np.random.default_rng(7))
    b = sample_neighbors(kg, 4, rng=7)
    c = sample_neighbors(kg, 4, rng=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def star_forest(n_stars: int, n_leaves: int) -> KnowledgeGraph:
    """n_stars disjoint stars; the centre of star s is entity s, its leaf j is relation j."""
    centres = np.repeat(np.arange(n_stars), n_leaves)
    leaves = n_stars + np.arange(n_stars * n_leaves)
    relation = np.tile(np.arange(n_leaves), n_stars)
    triples = np.column_stack([centres, relation, leaves])
    return KnowledgeGraph.from_triples(triples, n_stars * (n_leaves + 1), n_leaves, mode="directed")


@pytest.mark.parametrize("n_leaves, k", [(10, 4), (3, 8)])  # without / with replacement
def test_sampling_is_roughly_uniform(n_leaves, k):
    n_stars = 2000
    kg = star_forest(n_stars, n_leaves)
    _, rel = sample_neighbors(kg, k, rng=1)
    counts = np.bincount(rel[:n_stars].ravel(), minlength=n_leaves + 1)[:n_leaves]
    expected = n_stars * k / n_leaves
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 45  # df <= 9: p < 1e-5 under uniformity; a biased sampler scores far higher
    # The first sampled slot alone must be uniform too (no position bias).
    first = np.bincount(rel[:n_stars, 0], minlength=n_leaves)
    assert first.min() > 0.7 * n_stars / n_leaves


def test_sampling_graph_without_edges():
    kg = KnowledgeGraph.from_triples(np.zeros((0, 3), dtype=np.int64), 4, 3)
    nbr, rel = sample_neighbors(kg, 2, rng=0)
    assert nbr.tolist() == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert (rel == 3).all()
    with pytest.raises(ConfigError):
        sample_neighbors(kg, 0)


def test_multi_hop_shapes_and_values():
    kg = random_graph()
    nbr, rel = sample_neighbors(kg, 3, rng=0)
    seeds = np.array([0, 5, 299])
    hops = multi_hop(nbr, seeds, n_hops=2)
    assert [h.shape for h in hops] == [(3, 1), (3, 3), (3, 9)]
    assert (hops[1] == nbr[seeds]).all()
    assert (hops[2][1] == nbr[nbr[5]].ravel()).all()
    torch_hops = multi_hop(torch.from_numpy(nbr), torch.from_numpy(seeds), n_hops=2)
    assert all(np.array_equal(t.numpy(), h) for t, h in zip(torch_hops, hops))
    assert rel[hops[1]].reshape(3, -1).shape == (3, 9)  # relations into hop 2, as documented


# ---- user-item graph ----------------------------------------------------------------------------
def test_user_item_csr_sorts_and_deduplicates():
    indptr, items = user_item_csr([2, 0, 2, 0, 2], [1, 3, 0, 3, 1], n_users=4, n_items=5)
    assert indptr.tolist() == [0, 1, 1, 3, 3]
    assert items.tolist() == [3, 0, 1]
    with pytest.raises(MMKGRecError, match="out of range"):
        user_item_csr([0], [5], n_users=1, n_items=5)


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_normalised_adjacency_matches_dense_reference(layout):
    users = [0, 0, 1, 2, 2, 2, 0]  # (0, 1) repeated; item 3 and user 3 have no interaction
    items = [0, 1, 1, 0, 2, 4, 1]
    n_users, n_items = 4, 5
    indptr, item_ids = user_item_csr(users, items, n_users, n_items)
    adjacency = to_torch_sparse_adjacency(indptr, item_ids, n_items, layout=layout)
    assert adjacency.layout == (torch.sparse_coo if layout == "coo" else torch.sparse_csr)
    interactions = np.zeros((n_users, n_items))
    interactions[users, items] = 1.0
    a = np.block([[np.zeros((n_users, n_users)), interactions],
                  [interactions.T, np.zeros((n_items, n_items))]])
    degree = a.sum(1)
    inv_sqrt = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1)), 0.0)
    expected = inv_sqrt[:, None] * a * inv_sqrt[None, :]
    np.testing.assert_allclose(adjacency.to_dense().numpy(), expected, rtol=1e-6)
    assert adjacency.dtype == torch.float32


# ---- real data ----------------------------------------------------------------------------------
def test_lastfm_graph(lastfm):
    triples = lastfm.triples
    assert len(triples) == 15518 and lastfm.n_entities == 9366
    n_self_loops = int((triples[:, 0] == triples[:, 2]).sum())
    assert n_self_loops == 49
    kg = KnowledgeGraph.from_triples(triples, lastfm.n_entities, lastfm.n_relations)
    # Both directions of every triple, a self-loop counted once; no triple's reverse is stored.
    assert kg.n_edges == 2 * 15518 - n_self_loops == 30987
    inverse = KnowledgeGraph.from_triples(triples, lastfm.n_entities, lastfm.n_relations, "inverse")
    assert inverse.n_edges == 2 * 15518
    start = time.perf_counter()
    nbr, rel = sample_neighbors(kg, 8, rng=0)
    assert time.perf_counter() - start < 1.0
    assert nbr.shape == (9366, 8)
    isolated = kg.degree() == 0
    assert (rel[isolated] == lastfm.n_relations).all()
    assert (rel[~isolated] < lastfm.n_relations).all()
