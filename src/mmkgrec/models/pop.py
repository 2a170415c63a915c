"""Popularity: every user gets the items with the most TRAIN positives. The floor to beat."""

from __future__ import annotations

import torch
from torch import Tensor

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.models.base import ModelConfig, Recommender


class PopConfig(ModelConfig):
    """No hyper-parameters."""


TIE_JITTER = 1e-4  # below the smallest gap between log1p of two counts up to ~10^4


class Pop(Recommender):
    """score(u, i) = log(1 + train positives of i) + a seeded jitter below any count gap.

    The jitter breaks ties (items with equal counts, e.g. every held-out item of the cold-start
    protocol) at random instead of by item id, whose order can carry popularity.
    """

    name = "pop"
    Config = PopConfig
    config: PopConfig
    trainable = False

    # registered buffers
    logits: Tensor

    def __init__(self, dataset: MMKG, split: Split, config: PopConfig | None = None, seed: int = 0):
        super().__init__(dataset, split, config or PopConfig())
        counts = torch.as_tensor(split.item_popularity(), dtype=torch.float64)  # [I], train only
        jitter = torch.rand(len(counts), generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64) * TIE_JITTER  # [I]
        self.register_buffer("logits", (torch.log1p(counts) + jitter).float())

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.logits[items]

    def score_users(self, users: Tensor) -> Tensor:
        return self.logits.expand(len(users), -1)
