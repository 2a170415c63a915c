"""KGAT (Wang et al., "KGAT: Knowledge Graph Attention Network for Recommendation", KDD 2019).

The collaborative knowledge graph (CKG, :class:`CollaborativeKG`) holds the KG triples both ways
(the reverse of relation ``r`` is relation ``r + R``) and the TRAIN positives as ``interact``
(user -> item) and ``interacted-by`` (item -> user) edges; valid / test pairs never enter it.
Nodes: entities ``0..E-1`` (items are entities ``0..I-1``), then users ``E..E+U-1``.

- Attention: ``pi(h, r, t) = (W_r e_t)^T tanh(W_r e_h + e_r)``, softmax over each head's edges,
  recomputed from the current embeddings under ``no_grad`` at the start of every epoch (as the
  paper does: constant within an epoch). The weights are a persistent buffer, so a checkpoint
  gives identical scores; ranking uses the weights the epoch was trained with.
- Layer ``l`` (``layers`` output widths, default 64 -> 32 -> 16): ``e_N = sum_t pi(h, r, t) e_t``
  (one sparse matmul), bi-interaction ``LeakyReLU(W1 (e_h + e_N)) + LeakyReLU(W2 (e_h * e_N))``
  (or ``gcn`` / ``graphsage``), message dropout; the final vector concatenates ``e^0`` and the
  L2-normalised outputs of every layer. ``score(u, i) = <e*_u, e*_i>``.
- KG loss: TransR ``g(h, r, t) = ||W_r e_h + e_r - W_r e_t||^2``,
  ``-ln sigmoid(g(h, r, t') - g(h, r, t))`` over CKG triples with a corrupted tail (an entity
  for an entity tail, a user for a user tail; not checked against true triples), plus ``kg_l2``
  times the batch's squared projected vectors. Returned by :meth:`auxiliary_loss`, which the
  Trainer adds to every recommendation step (summed per step, not the paper's alternating
  phases). An epoch's triples are every CKG edge once, shuffled in :meth:`start_epoch` with the
  Trainer's generator (so a resumed run draws the same), ``kg_batch_size`` per step, wrapping.
- :meth:`regularization`: half the batch mean of ``||e^0_u||^2 + ||e^0_i||^2`` (layer-0 vectors;
  the paper's code penalises the final ones).

:class:`CKGRecommender` holds what KGAT and MKGAT (``models/mkgat.py``) share.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.graph import KnowledgeGraph
from mmkgrec.models.base import ModelConfig, Recommender


# ---- the collaborative knowledge graph ----------------------------------------------------------
@dataclass(frozen=True)
class CollaborativeKG:
    """Edges (head, relation, tail) of the CKG, sorted by (head, relation, tail), no repeats."""

    heads: np.ndarray  # [M] int64 node ids
    relations: np.ndarray  # [M] int64
    tails: np.ndarray  # [M] int64
    n_entities: int  # E; users are nodes E..E+U-1
    n_users: int
    n_relations: int  # 2R + 2: KG relations, their inverses, interact, interacted-by

    @property
    def n_nodes(self) -> int:
        return self.n_entities + self.n_users

    @property
    def n_edges(self) -> int:
        return len(self.heads)

    @property
    def interact(self) -> int:
        """Relation id of user -> item edges (``interact + 1``: item -> user)."""
        return self.n_relations - 2

    @classmethod
    def build(cls, dataset: MMKG, split: Split) -> CollaborativeKG:
        """KG triples both ways plus the split's TRAIN positives both ways."""
        kg = KnowledgeGraph.from_triples(dataset.triples, dataset.n_entities,
                                         dataset.n_relations, "inverse")
        kg_edges = kg.edges()  # [m, 3] (source, relation, target)
        train = split.train_positives()
        users = dataset.n_entities + train["user"].to_numpy()  # [P] node ids
        items = train["item"].to_numpy()  # [P]
        interact = kg.n_relations
        ui = np.column_stack([users, np.full_like(users, interact), items])  # [P, 3]
        iu = np.column_stack([items, np.full_like(items, interact + 1), users])  # [P, 3]
        edges = np.unique(np.concatenate([kg_edges, ui, iu]), axis=0)  # sorted rows, no repeats
        return cls(heads=edges[:, 0], relations=edges[:, 1], tails=edges[:, 2],
                   n_entities=dataset.n_entities, n_users=dataset.n_users,
                   n_relations=kg.n_relations + 2)


def segment_softmax(scores: Tensor, segments: Tensor, n_segments: int) -> Tensor:
    """Softmax of ``scores`` [M] within each segment (``segments`` [M] ids) -> [M]."""
    peak = scores.new_full((n_segments,), float("-inf")).scatter_reduce(
        0, segments, scores.detach(), "amax")  # [n_segments]; a shift, no gradient needed
    exp = (scores - peak[segments]).exp()  # [M]
    total = scores.new_zeros(n_segments).index_add(0, segments, exp)  # [n_segments]
    return exp / total[segments]


def neighbor_sum(rows: Tensor, cols: Tensor, weights: Tensor, x: Tensor,
                 n_rows: int | None = None) -> Tensor:
    """``out[r] = sum over edges (r, c) of weights * x[c]``: [M] x [n, d] -> [n_rows, d].

    Constant weights: one sparse matmul. Weights that need a gradient: gather + ``index_add``
    (torch's sparse-matmul backward for the values goes through a dense [n_rows, n] product).
    ``n_rows`` defaults to ``n``.
    """
    n_rows = x.shape[0] if n_rows is None else n_rows
    if weights.requires_grad:
        return x.new_zeros(n_rows, x.shape[1]).index_add(0, rows, weights.unsqueeze(1) * x[cols])
    adjacency = torch.sparse_coo_tensor(torch.stack([rows, cols]), weights, (n_rows, x.shape[0]),
                                        check_invariants=False).coalesce()  # repeats summed
    return torch.sparse.mm(adjacency, x)


# ---- shared configuration and machinery ----------------------------------------------------------
class CKGConfig(ModelConfig):
    """Hyper-parameters shared by KGAT and MKGAT."""

    dim: int = Field(64, ge=1)  # layer-0 node width
    layers: list[PositiveInt] = Field(default_factory=lambda: [64, 32, 16])  # width per layer
    message_dropout: float = Field(0.1, ge=0, lt=1)
    kg_loss_weight: float = Field(1.0, ge=0)  # 0: no KG loss (auxiliary_loss returns None)
    kg_batch_size: int = Field(2048, ge=1)  # CKG triples per step
    kg_l2: float = Field(1e-5, ge=0)  # on the KG batch's (projected) vectors


class CKGRecommender(Recommender):
    """Shared by KGAT and MKGAT: CKG buffers, layer stacking, ranking cache, KG-loss batches.

    Subclasses fill ``self.layers`` and implement :meth:`ego_rows`,
    :meth:`propagate_layer` and :meth:`triple_distance`.
    """

    ranking_caches = ("_ranking_table",)  # reset by train()
    config: CKGConfig

    def __init__(self, dataset: MMKG, split: Split, config: CKGConfig, seed: int = 0):
        super().__init__(dataset, split, config)
        self.ckg = CollaborativeKG.build(dataset, split)
        self.user_offset = self.ckg.n_entities  # node id of user 0
        self.node_emb = nn.Embedding(self.ckg.n_nodes, config.dim)  # [N, d] entities, then users
        nn.init.xavier_uniform_(self.node_emb.weight)
        for name in ("heads", "relations", "tails"):  # derived from the data: not checkpointed
            self.register_buffer(f"edge_{name}", torch.as_tensor(getattr(self.ckg, name)),
                                 persistent=False)  # [M]
        self.edge_heads: Tensor
        self.edge_relations: Tensor
        self.edge_tails: Tensor
        self.dropout = nn.Dropout(config.message_dropout)
        self.layers = nn.ModuleList()
        self._kg_batches: Tensor | None = None  # [4, M] (head, relation, tail, corrupted tail)
        self._kg_cursor = 0
        self._ranking_table: Tensor | None = None
        if config.kg_loss_weight > 0:
            self.draw_kg_triples(np.random.default_rng(seed))

    @property
    def output_dim(self) -> int:
        return self.config.dim + sum(self.config.layers)

    # ---- to implement --------------------------------------------------------------------------
    def ego_rows(self, nodes: Tensor) -> Tensor:
        """Layer-0 vectors of node ids [...] -> [..., d]."""
        raise NotImplementedError

    def propagate_layer(self, layer: nn.Module, x: Tensor) -> Tensor:
        """One propagation layer over the CKG: [N, d_in] -> [N, d_out]."""
        raise NotImplementedError

    def triple_distance(self, relations: Tensor, heads: Tensor, tails: Tensor
                        ) -> tuple[Tensor, Tensor]:
        """KG distance (lower = more plausible) of triples sharing head and relation.

        Args:
            relations: [B] ids; heads: [B, d] layer-0 vectors; tails: [B, n, d] layer-0 vectors.
        Returns:
            (distance [B, n], squared norm of every vector the distances used [B]).
        """
        raise NotImplementedError

    # ---- representations -----------------------------------------------------------------------
    def node_table(self) -> Tensor:
        """Final vectors of every node: [N, dim + sum(layers)] (users at ``user_offset + u``)."""
        x = self.ego_rows(torch.arange(self.ckg.n_nodes, device=self.edge_heads.device))  # [N, d]
        outputs = [x]
        for layer in self.layers:
            x = self.dropout(self.propagate_layer(layer, x))  # [N, d_l]
            outputs.append(F.normalize(x, dim=1))
        return torch.cat(outputs, dim=1)  # [N, D]

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        table = self.node_table()  # [N, D], the whole graph: every pair sees its full context
        return (table[self.user_offset + users] * table[items]).sum(-1)

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """Half the batch mean of the squared layer-0 vectors of users and items."""
        u, i = self.ego_rows(self.user_offset + users), self.ego_rows(items)  # [B, d]
        return 0.5 * (u.pow(2).sum() + i.pow(2).sum()) / len(users)

    # ---- KG loss -------------------------------------------------------------------------------
    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        if self.config.kg_loss_weight > 0:
            self.draw_kg_triples(rng)

    def draw_kg_triples(self, rng: np.random.Generator) -> None:
        """This epoch's KG-loss triples: every CKG edge once, shuffled, with a corrupted tail."""
        ckg = self.ckg
        order = rng.permutation(ckg.n_edges)  # [M]
        tails = ckg.tails[order]
        corrupted = np.where(tails >= ckg.n_entities,
                             ckg.n_entities + rng.integers(0, max(ckg.n_users, 1), ckg.n_edges),
                             rng.integers(0, ckg.n_entities, ckg.n_edges))  # [M], same node kind
        batches = np.stack([ckg.heads[order], ckg.relations[order], tails, corrupted])
        self._kg_batches = torch.as_tensor(batches, device=self.edge_heads.device)  # [4, M]
        self._kg_cursor = 0

    def auxiliary_loss(self) -> Tensor | None:
        """``kg_loss_weight`` times the KG loss of the next ``kg_batch_size`` triples (a scalar),
        or None when ``kg_loss_weight`` is 0. The Trainer adds it to every training step."""
        cfg = self.config
        if cfg.kg_loss_weight == 0 or self.ckg.n_edges == 0:
            return None
        assert self._kg_batches is not None, "start_epoch() samples the KG batches first"
        batches = self._kg_batches = self._kg_batches.to(self.edge_heads.device)  # [4, M]
        take = (self._kg_cursor + torch.arange(cfg.kg_batch_size, device=batches.device)) \
            % batches.shape[1]  # [B], wraps around
        self._kg_cursor = (self._kg_cursor + cfg.kg_batch_size) % batches.shape[1]
        heads, relations, tails, corrupted = batches[:, take]  # [B] each
        ego = self.ego_rows(torch.stack([heads, tails, corrupted], dim=1))  # [B, 3, d]
        distance, norm = self.triple_distance(relations, ego[:, 0], ego[:, 1:])  # [B, 2], [B]
        loss = F.softplus(distance[:, 0] - distance[:, 1]).mean()  # = -ln sigmoid(g' - g)
        return cfg.kg_loss_weight * (loss + cfg.kg_l2 * 0.5 * norm.mean())

    # ---- ranking -------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_ranking(self) -> None:
        self._ranking_table = self.node_table()  # [N, D]

    def score_users(self, users: Tensor) -> Tensor:
        if self._ranking_table is None:
            self.prepare_ranking()
        table = self._ranking_table
        assert table is not None  # set by prepare_ranking
        return table[self.user_offset + users] @ table[:self.n_items].T  # [B, I]


# ---- KGAT ----------------------------------------------------------------------------------------
class KGATConfig(CKGConfig):
    kg_dim: int = Field(64, ge=1)  # TransR relation space
    aggregator: Literal["bi-interaction", "gcn", "graphsage"] = "bi-interaction"


class KGATLayer(nn.Module):
    """KGAT's aggregators of a node vector ``x`` [N, d_in] and its neighbourhood ``e_N`` [N, d_in]:
    ``bi-interaction`` LeakyReLU(W1 (x + e_N)) + LeakyReLU(W2 (x * e_N)); ``gcn``
    LeakyReLU(W1 (x + e_N)); ``graphsage`` LeakyReLU(W1 [x; e_N])."""

    def __init__(self, d_in: int, d_out: int, aggregator: str = "bi-interaction"):
        super().__init__()
        self.aggregator = aggregator
        self.linear = nn.Linear(2 * d_in if aggregator == "graphsage" else d_in, d_out)
        self.product = nn.Linear(d_in, d_out) if aggregator == "bi-interaction" else None
        for linear in (self.linear, self.product):
            if linear is not None:
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor, neighbors: Tensor) -> Tensor:
        if self.aggregator == "graphsage":
            return F.leaky_relu(self.linear(torch.cat([x, neighbors], dim=1)))
        out = F.leaky_relu(self.linear(x + neighbors))
        if self.product is not None:
            out = out + F.leaky_relu(self.product(x * neighbors))
        return out  # [N, d_out]


class KGAT(CKGRecommender):
    """KGAT: TransR-attentive propagation over the collaborative KG. See the module docstring."""

    name = "kgat"
    Config = KGATConfig
    config: KGATConfig

    # registered buffers
    edges_by_relation: Tensor
    attention: Tensor

    def __init__(self, dataset: MMKG, split: Split, config: KGATConfig, seed: int = 0):
        super().__init__(dataset, split, config, seed)
        self.relation_emb = nn.Embedding(self.ckg.n_relations, config.kg_dim)  # e_r, TransR space
        nn.init.xavier_uniform_(self.relation_emb.weight)
        self.relation_proj = nn.Parameter(torch.empty(self.ckg.n_relations, config.dim,
                                                      config.kg_dim))  # W_r [R', d, k]
        nn.init.xavier_uniform_(self.relation_proj)
        dims = [config.dim, *config.layers]
        self.layers = nn.ModuleList(KGATLayer(a, b, config.aggregator)
                                    for a, b in itertools.pairwise(dims))
        # Edges grouped by relation, for the per-relation attention products.
        order = np.argsort(self.ckg.relations, kind="stable")  # [M]
        self.relation_bounds = np.searchsorted(self.ckg.relations[order],
                                               np.arange(self.ckg.n_relations + 1))  # [R' + 1]
        self.register_buffer("edges_by_relation", torch.as_tensor(order), persistent=False)
        self.register_buffer("attention", torch.zeros(self.ckg.n_edges))  # [M] pi, checkpointed
        self.refresh_attention()

    def ego_rows(self, nodes: Tensor) -> Tensor:
        return self.node_emb(nodes)

    @torch.no_grad()
    def refresh_attention(self) -> None:
        """pi(h, r, t) of every CKG edge from the current embeddings, softmax per head."""
        e, heads, tails = self.node_emb.weight, self.edge_heads, self.edge_tails
        scores = torch.empty(self.ckg.n_edges, device=e.device)  # [M]
        for r in range(self.ckg.n_relations):  # one small matmul per relation
            edges = self.edges_by_relation[self.relation_bounds[r]:self.relation_bounds[r + 1]]
            if not len(edges):
                continue
            w = self.relation_proj[r]  # [d, k]
            head_r, tail_r = e[heads[edges]] @ w, e[tails[edges]] @ w  # [m_r, k]
            scores[edges] = (tail_r * torch.tanh(head_r + self.relation_emb.weight[r])).sum(1)
        self.attention = segment_softmax(scores, heads, self.ckg.n_nodes)

    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        self.refresh_attention()
        super().start_epoch(epoch, rng)

    def propagate_layer(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer(x, neighbor_sum(self.edge_heads, self.edge_tails, self.attention, x))

    def triple_distance(self, relations, heads, tails):
        """TransR: ||W_r e_h + e_r - W_r e_t||^2."""
        return transr_distance(self.relation_proj, self.relation_emb(relations), relations,
                               heads, tails)


def transr_distance(relation_proj: Tensor, relation_vectors: Tensor, relations: Tensor,
                    heads: Tensor, tails: Tensor, normalize: bool = False
                    ) -> tuple[Tensor, Tensor]:
    """TransR distance ``||W_r e_h + e_r - W_r e_t||^2`` of triples sharing head and relation
    (shared by KGAT and CKE, ``models/cke.py``).

    Args:
        relation_proj: W [R, d, k] (one projection per relation); relation_vectors: e_r [B, k]
            of the triples' relations; relations: [B] ids; heads: [B, d]; tails: [B, n, d].
        normalize: L2-normalise ``W_r e_h``, ``W_r e_t`` and ``e_r`` first (RecBole's CKE).
    Returns:
        (distance [B, n], squared norm of every vector the distances used [B]).
    """
    vectors = torch.cat([heads.unsqueeze(1), tails], dim=1)  # [B, 1 + n, d]
    if vectors.is_cuda:  # one batched matmul over a gathered [B, d, k] stack of W
        projected = torch.bmm(vectors, torch.index_select(relation_proj, 0, relations))
    else:  # one matmul per relation present: ~10x faster than the gathered stack on CPU
        order = torch.argsort(relations, stable=True)  # [B], grouped by relation
        counts = torch.bincount(relations, minlength=relation_proj.shape[0]).tolist()  # [R]
        pieces = [vectors[rows] @ relation_proj[r]  # [c_r, 1 + n, k]
                  for r, rows in enumerate(torch.split(order, counts)) if len(rows)]
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        projected = torch.cat(pieces)[inverse]  # [B, 1 + n, k], back in batch order
    r = relation_vectors  # [B, k]
    if normalize:
        projected, r = F.normalize(projected, dim=-1), F.normalize(r, dim=-1)
    distance = (projected[:, :1] + r.unsqueeze(1) - projected[:, 1:]).pow(2).sum(-1)  # [B, n]
    return distance, projected.pow(2).sum((1, 2)) + r.pow(2).sum(1)
