"""Graph structures: the CSR knowledge graph, KGCN neighbour sampling, the user-item graph.

Typical use::

    from mmkgrec.graph import KnowledgeGraph, multi_hop, sample_neighbors
    kg = KnowledgeGraph.from_triples(ds.triples, ds.n_entities, ds.n_relations, "undirected")
    nbr, rel = sample_neighbors(kg, n_neighbors=8, rng=0)   # [n_entities, 8] each
    hops = multi_hop(nbr, item_ids, n_hops=2)                # [n, 1], [n, 8], [n, 64]
"""

from mmkgrec.graph.kg import (
    MODES,
    KnowledgeGraph,
    multi_hop,
    sample_neighbors,
    to_torch_sparse_adjacency,
)

__all__ = [
    "MODES",
    "KnowledgeGraph",
    "multi_hop",
    "sample_neighbors",
    "to_torch_sparse_adjacency",
]
