"""KGCN (Wang et al., "Knowledge Graph Convolutional Networks for Recommender Systems", WWW 2019).

A user ID embedding scores items whose vectors are aggregated from their sampled KG
neighbourhood with user-relation attention (:class:`~mmkgrec.models.layers.KGItemAggregator`).
No user aggregator and no modalities: the baseline that MKGCN's additions are measured against.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.graph import KnowledgeGraph, sample_neighbors
from mmkgrec.models.base import ModelConfig, Recommender
from mmkgrec.models.layers import Activation, Aggregator, KGItemAggregator


class KGConfig(ModelConfig):
    """Hyper-parameters of the KG item aggregator, shared by KGCN and MKGCN."""

    dim: int = Field(16, ge=1)
    n_neighbors: int = Field(8, ge=1)
    n_hops: int = Field(1, ge=0)
    aggregator: Aggregator = "sum"
    inner_activation: Activation = "relu"
    kg_mode: Literal["undirected", "inverse", "directed"] = "undirected"
    resample_neighbors: bool = False  # False: sampled once, as KGCN does
    # "all": lambda/2 * ||all parameters||^2 each step (the KGCN paper's and code's regulariser);
    # "batch": only the embeddings the batch used (cheaper, weaker).
    l2_scope: Literal["all", "batch"] = "all"


class KGBackbone(nn.Module):
    """Entity / relation embeddings, the sampled neighbour tables and the item aggregator."""

    def __init__(self, dataset: MMKG, config: KGConfig, rng: np.random.Generator):
        super().__init__()
        self.config = config
        self.n_items = dataset.n_items
        self.graph = KnowledgeGraph.from_triples(dataset.triples, dataset.n_entities,
                                                 dataset.n_relations, config.kg_mode)
        self.entity_emb = nn.Embedding(dataset.n_entities, config.dim)
        self.relation_emb = nn.Embedding(self.graph.n_relations + 1, config.dim)  # + padding
        nn.init.xavier_uniform_(self.entity_emb.weight)
        nn.init.xavier_uniform_(self.relation_emb.weight)
        self.register_buffer("neighbors", torch.zeros(0, dtype=torch.int32))  # [E, K]
        self.register_buffer("neighbor_relations", torch.zeros(0, dtype=torch.int32))  # [E, K]
        self.resample(rng)
        self.aggregator = KGItemAggregator(config.dim, config.n_hops, config.aggregator,
                                           config.inner_activation)

    def resample(self, rng: np.random.Generator) -> None:
        neighbors, relations = sample_neighbors(self.graph, self.config.n_neighbors, rng)
        device = self.entity_emb.weight.device
        # int32 storage halves the [E, K] tables; torch indexes with int32 directly.
        self.neighbors = torch.as_tensor(neighbors, dtype=torch.int32, device=device)
        self.neighbor_relations = torch.as_tensor(relations, dtype=torch.int32, device=device)

    def item_vectors(self, users: Tensor, items: Tensor, base_vectors) -> Tensor:
        """users [B, d], items [B] -> [B, d] (receptive-field tree; training)."""
        return self.aggregator.forward_pairs(users, items, base_vectors, self.relation_emb.weight,
                                             self.neighbors, self.neighbor_relations)

    def all_item_vectors(self, users: Tensor, base: Tensor, slots: Tensor | None = None) -> Tensor:
        """users [B, d], base [E, d] -> [B, I, d] (all items at once; ranking). ``slots``: the
        cached :meth:`ranking_slots` of the same ``base``."""
        return self.aggregator.forward_all_items(users, base, self.relation_emb.weight,
                                                 self.neighbors, self.neighbor_relations,
                                                 self.n_items, slots)

    def ranking_slots(self, base: Tensor) -> Tensor | None:
        """The user-independent first aggregation round over ``base`` (None with 0 hops)."""
        if self.config.n_hops == 0:
            return None
        return self.aggregator.first_round_slots(base, self.neighbors, self.n_items)


def all_parameters_l2(module: nn.Module) -> Tensor:
    """0.5 * sum of squares of every parameter (TensorFlow's l2_loss, as KGCN uses)."""
    return 0.5 * sum(p.pow(2).sum() for p in module.parameters())


class KGCN(Recommender):
    """KGCN: score(u, i) = <e_u, v_i(u)>, v_i(u) aggregated over i's KG neighbourhood."""

    name = "kgcn"
    Config = KGConfig

    def __init__(self, dataset: MMKG, split: Split, config: KGConfig, seed: int = 0):
        super().__init__(dataset, split, config)
        self.backbone = KGBackbone(dataset, config, np.random.default_rng(seed))
        self.user_emb = nn.Embedding(dataset.n_users, config.dim)
        self._ranking_slots: Tensor | None = None  # [rows, K, d+1], see prepare_ranking
        nn.init.xavier_uniform_(self.user_emb.weight)

    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        if self.config.resample_neighbors and epoch > 0:
            self.backbone.resample(rng)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        u = self.user_emb(users)  # [B, d]
        v = self.backbone.item_vectors(u, items, self.backbone.entity_emb)  # [B, d]
        return (u * v).sum(-1)

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """``l2_scope`` all: half the squared norm of every parameter; batch: mean over the batch
        of ||e_u||^2 + ||e_i||^2, halved."""
        if self.config.l2_scope == "all":
            return all_parameters_l2(self)
        u, e = self.user_emb(users), self.backbone.entity_emb(items)
        return 0.5 * (u.pow(2).sum() + e.pow(2).sum()) / len(users)

    @torch.no_grad()
    def prepare_ranking(self) -> None:
        """Cache the user-independent first aggregation round for the ranking pass."""
        self._ranking_slots = self.backbone.ranking_slots(self.backbone.entity_emb.weight)

    def score_users(self, users: Tensor) -> Tensor:
        u = self.user_emb(users)  # [B, d]
        v = self.backbone.all_item_vectors(u, self.backbone.entity_emb.weight,
                                           self._ranking_slots)  # [B, I, d]
        return torch.einsum("bd,bid->bi", u, v)

    def train(self, mode: bool = True):
        self._ranking_slots = None  # parameters may change: recompute before ranking again
        return super().train(mode)
