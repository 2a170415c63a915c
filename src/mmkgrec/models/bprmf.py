"""BPR-MF (Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009).

One embedding per user and per item, score(u, i) = <p_u, q_i>, trained with the shared Trainer's
BPR loss on (user, train positive, sampled negative) triples. The collaborative-filtering floor
that every graph model should beat.
"""

from __future__ import annotations

from typing import cast

import torch
from pydantic import Field
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.models.base import ModelConfig, Recommender


class BPRMFConfig(ModelConfig):
    dim: int = Field(64, ge=1)


def xavier_embedding(n: int, dim: int, generator: torch.Generator) -> nn.Embedding:
    """An ``[n, dim]`` embedding table, xavier-uniform initialised from ``generator``."""
    table = nn.Embedding(n, dim)
    nn.init.xavier_uniform_(table.weight, generator=generator)
    return table


def embedding_l2(*embeddings: Tensor) -> Tensor:
    """Half the squared norm of the rows, averaged over the batch (rows of the first tensor)."""
    return cast(Tensor, 0.5 * sum(e.pow(2).sum() for e in embeddings) / len(embeddings[0]))


class BPRMF(Recommender):
    """Matrix factorisation: score(u, i) = <p_u, q_i>."""

    name = "bprmf"
    Config = BPRMFConfig
    config: BPRMFConfig

    def __init__(self, dataset: MMKG, split: Split, config: BPRMFConfig, seed: int = 0):
        super().__init__(dataset, split, config)
        generator = torch.Generator().manual_seed(seed)
        self.user_emb = xavier_embedding(self.n_users, config.dim, generator)  # [U, d]
        self.item_emb = xavier_embedding(self.n_items, config.dim, generator)  # [I, d]

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return (self.user_emb(users) * self.item_emb(items)).sum(-1)  # [B]

    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor:
        return self.user_emb(users) @ self.item_emb(items).T  # [B, M]

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """Mean over the batch of ||p_u||^2 + ||q_i||^2, halved."""
        return embedding_l2(self.user_emb(users), self.item_emb(items))

    def score_users(self, users: Tensor) -> Tensor:
        return self.user_emb(users) @ self.item_emb.weight.T  # [B, I]
