"""The contract every model keeps, so that one Trainer and one ranker serve them all.

A model is built from a dataset and a split, and may only read the split's TRAIN part (user
histories, popularity, feature statistics). The Trainer calls :meth:`Recommender.start_epoch`,
then :meth:`Recommender.forward` on batches of (user, item) pairs and adds
:meth:`Recommender.regularization`; full ranking calls :meth:`Recommender.prepare_ranking` once,
then :meth:`Recommender.score_users` per block of users.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split


class ModelConfig(BaseModel):
    """Base of the per-model hyper-parameter models; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Recommender(nn.Module):
    """Base class: scores (user, item) pairs as logits; sigmoid(logit) is the probability."""

    name: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]
    trainable: ClassVar[bool] = True  # False for models fitted in closed form (e.g. popularity)

    def __init__(self, dataset: MMKG, split: Split, config: ModelConfig):
        super().__init__()
        self.config = config
        self.n_users, self.n_items = dataset.n_users, dataset.n_items

    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        """Resample per-epoch state (user-history samples, neighbour tables). Default: nothing."""

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """users [B], items [B] (int64) -> logits [B]."""
        raise NotImplementedError

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """L2 penalty of the embeddings used for this batch (scalar). Default: zero."""
        return torch.zeros((), device=users.device)

    def auxiliary_loss(self) -> Tensor | None:
        """An extra, already weighted loss the Trainer adds to every training step (e.g. KGAT's
        KG-embedding loss). Default: None (nothing)."""
        return None

    @torch.no_grad()
    def prepare_ranking(self) -> None:
        """Precompute everything user-independent before :meth:`score_users`. Default: nothing."""

    def score_users(self, users: Tensor) -> Tensor:
        """users [B] -> logits for every item [B, n_items]."""
        raise NotImplementedError

    def extra_state_for_checkpoint(self) -> dict[str, Tensor]:
        """Non-parameter tensors a checkpoint must restore for identical scores (e.g. sampled
        neighbour tables). Registered buffers are saved already; this is for anything else."""
        return {}
