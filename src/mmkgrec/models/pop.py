"""Popularity: every user gets the items with the most TRAIN positives. The floor to beat."""

from __future__ import annotations

import torch
from torch import Tensor

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.models.base import ModelConfig, Recommender


class PopConfig(ModelConfig):
    """No hyper-parameters."""


class Pop(Recommender):
    """score(u, i) = log(1 + train positives of i): a logit that ranks by popularity."""

    name = "pop"
    Config = PopConfig
    trainable = False

    def __init__(self, dataset: MMKG, split: Split, config: PopConfig | None = None, seed: int = 0):
        super().__init__(dataset, split, config or PopConfig())
        counts = torch.as_tensor(split.item_popularity(), dtype=torch.float32)  # [I], train only
        self.register_buffer("logits", torch.log1p(counts))

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.logits[items]

    def score_users(self, users: Tensor) -> Tensor:
        return self.logits.expand(len(users), -1)
