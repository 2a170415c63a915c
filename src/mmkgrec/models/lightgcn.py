"""LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation", SIGIR 2020).

Ego embeddings E_0 of users and items are propagated linearly over the user-item graph of the
TRAIN positives, E_{k+1} = Â E_k with Â = D^-1/2 A D^-1/2 (no weights, no non-linearity); the
final embedding is the layer mean (E_0 + ... + E_K) / (K + 1) and score(u, i) = <e_u, e_i>.
Trained with BPR; the L2 penalty is on the batch's EGO embeddings, as in the paper.

Cost: each training step propagates the full graph (K sparse products of [U + I, d], forward and
backward), as the paper does: O(K * nnz * d) per step whatever the batch size. Inference (no
autograd) propagates once and caches the result until a parameter changes.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.graph import to_torch_sparse_adjacency
from mmkgrec.models.base import ModelConfig, Recommender
from mmkgrec.models.bprmf import embedding_l2, xavier_embedding


class LightGCNConfig(ModelConfig):
    dim: int = Field(64, ge=1)
    n_layers: int = Field(3, ge=0)  # 0: plain matrix factorisation


class LightGCN(Recommender):
    """LightGCN: layer-mean of linear propagations over the train user-item graph."""

    name = "lightgcn"
    Config = LightGCNConfig
    config: LightGCNConfig
    ranking_caches: ClassVar[tuple[str, ...]] = ("_cache",)  # reset by train()

    def __init__(self, dataset: MMKG, split: Split, config: LightGCNConfig, seed: int = 0):
        super().__init__(dataset, split, config)
        generator = torch.Generator().manual_seed(seed)
        self.user_emb = xavier_embedding(self.n_users, config.dim, generator)  # [U, d] ego
        self.item_emb = xavier_embedding(self.n_items, config.dim, generator)  # [I, d] ego
        indptr, items = split.user_history()  # TRAIN positives only
        # Not a buffer: derived from the split, and safetensors cannot store sparse tensors.
        self.adjacency = to_torch_sparse_adjacency(indptr, items, self.n_items, layout="csr")
        self._cache: tuple[tuple, Tensor, Tensor] | None = None  # (param versions, users, items)

    def propagate(self) -> tuple[Tensor, Tensor]:
        """Layer-mean embeddings: (users [U, d], items [I, d])."""
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])  # [U + I, d]
        if self.adjacency.device != ego.device:
            self.adjacency = self.adjacency.to(ego.device)
        layer, total = ego, ego
        for _ in range(self.config.n_layers):
            layer = torch.sparse.mm(self.adjacency, layer)  # [U + I, d]
            total = total + layer
        final = total / (self.config.n_layers + 1)  # [U + I, d]
        return final[:self.n_users], final[self.n_users:]

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        """(users [U, d], items [I, d]): propagated afresh when autograd is on (training), else
        from a cache that is dropped whenever a parameter changes (in place or by moving)."""
        if torch.is_grad_enabled():
            return self.propagate()
        weights = (self.user_emb.weight, self.item_emb.weight)
        key = tuple((w._version, w.data_ptr(), w.device) for w in weights)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *self.propagate())
        return self._cache[1], self._cache[2]

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        user_final, item_final = self.final_embeddings()
        return (user_final[users] * item_final[items]).sum(-1)  # [B]

    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor:
        user_final, item_final = self.final_embeddings()
        return user_final[users] @ item_final[items].T  # [B, M]

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """Mean over the batch of the squared EGO (layer-0) embeddings, halved."""
        return embedding_l2(self.user_emb(users), self.item_emb(items))

    @torch.no_grad()
    def prepare_ranking(self) -> None:
        self.final_embeddings()

    def score_users(self, users: Tensor) -> Tensor:
        user_final, item_final = self.final_embeddings()
        return user_final[users] @ item_final.T  # [B, I]

