"""MKGCN (Cui et al., "MKGCN: Multi-Modal Knowledge Graph Convolutional Network for Music
Recommender Systems", Electronics 2023, 12(12):2688), without the public code's defects.

- Multi-modal aggregator (:class:`~mmkgrec.models.layers.MultiModalFusion`): every item's ID
  embedding is fused with ITS OWN modality vectors (z-scored with train-item statistics, then a
  learned projection or a PCA basis fitted on train items); absent modalities are skipped. The
  fused vector replaces the item's embedding everywhere (candidate and neighbour).
- User aggregator (:class:`~mmkgrec.models.layers.UserAggregator`): no user ID embedding; a user
  is a sample of their TRAIN positives (resampled each epoch), so a new listener with a few
  liked items is scored without retraining (:meth:`MKGCN.score_histories`). While training on a
  pair (u, i), item i is masked out of u's history sample, so the model cannot learn the
  shortcut "the target is in the history" (negatives never are).
- Item aggregator: KGCN's (:class:`~mmkgrec.models.kgcn.KGBackbone`).
- score = <u, v_u(i)>, trained by the shared Trainer (BCE or BPR; uniform or ratio negatives).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.models.base import Recommender
from mmkgrec.models.fused import RankingPlan, rank_all_items
from mmkgrec.models.kgcn import (
    HistoryKGCatalogue,
    KGBackbone,
    KGCatalogue,
    KGConfig,
    KGServing,
    all_parameters_l2,
)
from mmkgrec.models.layers import (
    Fusion,
    MultiModalFusion,
    UserAggregator,
    UserPooling,
    register_modalities,
)


class MKGCNConfig(KGConfig):
    n_hops: int = Field(2, ge=0)
    modalities: list[str] | None = None  # None: every modality of the dataset; [] = KG only
    projection: Literal["linear", "pca"] = "linear"
    fusion: Fusion = "residual"
    user_pooling: UserPooling = "multi-head"
    n_heads: int = Field(8, ge=1)
    history_size: int = Field(8, ge=1)  # items sampled per user per epoch
    eval_history_size: int = Field(64, ge=1)  # items per user when ranking (seeded sample)
    mask_target_in_history: bool = True
    feature_dtype: Literal["float32", "float16"] = "float32"  # storage of the feature buffers

    @model_validator(mode="after")
    def _heads_divide_dim(self):
        if self.user_pooling == "multi-head" and self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        return self


def sample_history(indptr: np.ndarray, items: np.ndarray, users: np.ndarray, size: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``size`` distinct history items per user, uniformly, padded.

    Args:
        indptr [n_users + 1], items [nnz]: the train-positive CSR; users [B].
    Returns:
        (table [B, size] int64 item ids (0 where padded), valid [B, size] bool).
    """
    starts, degree = indptr[users], indptr[users + 1] - indptr[users]  # [B]
    owner = np.repeat(np.arange(len(users)), degree)  # [n] row of each candidate
    position = np.arange(degree.sum()) - np.repeat(np.cumsum(degree) - degree, degree)  # [n]
    order = np.lexsort((rng.random(len(owner)), owner))  # random order within each row
    rank = np.empty_like(order)
    rank[order] = position  # rank of each candidate in its row's random order
    keep = rank < size
    table = np.zeros((len(users), size), dtype=np.int64)
    valid = np.zeros((len(users), size), dtype=bool)
    source = np.repeat(starts, degree) + position  # [n] index into ``items``
    table[owner[keep], rank[keep]] = items[source[keep]]
    valid[owner[keep], rank[keep]] = True
    return table, valid


class MKGCN(KGServing, Recommender):
    """MKGCN: multi-modal fusion + history-built users + KGCN item aggregation."""

    name = "mkgcn"
    Config = MKGCNConfig
    config: MKGCNConfig
    ranking_caches = ("_ranking_cache", "_ranking_slots", "_catalogue")  # reset by train()
    catalogue_type = HistoryKGCatalogue

    # registered buffers
    history: Tensor
    history_valid: Tensor

    def __init__(self, dataset: MMKG, split: Split, config: MKGCNConfig, seed: int = 0):
        super().__init__(dataset, split, config)
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.backbone = KGBackbone(dataset, config, rng)
        train_items = register_modalities(self, dataset, split, config.modalities,
                                          getattr(torch, config.feature_dtype))
        names = self.modality_names
        pca = None
        if config.projection == "pca":
            pca = {name: _pca_basis(train_rows(self, k, train_items), config.dim)
                   for k, name in enumerate(names)}
        self.fusion = MultiModalFusion(config.dim, {n: dataset.modalities[n].shape[1] for n in names},
                                       config.fusion, pca)
        self.users = UserAggregator(config.dim, config.user_pooling, config.n_heads)
        indptr, items = split.user_history()  # TRAIN positives only
        self.history_indptr, self.history_items = indptr, items
        self.register_buffer("history", torch.zeros(0, dtype=torch.int32))  # [U, S] this epoch
        self.register_buffer("history_valid", torch.zeros(0, dtype=torch.bool))  # [U, S]
        self._set_history(config.history_size, rng)
        self._ranking_cache: tuple[Tensor, Tensor, Tensor] | None = None
        self._ranking_slots: RankingPlan | Tensor | None = None  # see prepare_ranking
        self._eval_seed = seed
        self._eval_history: tuple[np.ndarray, np.ndarray] | None = None  # [U, S], [U, S]
        self._catalogue: KGCatalogue | None = None

    def _set_history(self, size: int, rng: np.random.Generator) -> None:
        table, valid = sample_history(self.history_indptr, self.history_items,
                                      np.arange(self.n_users), size, rng)
        device = self.backbone.entity_emb.weight.device
        self.history = torch.as_tensor(table, dtype=torch.int32, device=device)  # [U, S]
        self.history_valid = torch.as_tensor(valid, device=device)

    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        self._ranking_cache = None
        if epoch > 0:
            self._set_history(self.config.history_size, rng)
            if self.config.resample_neighbors:
                self.backbone.resample(rng)

    # ---- representations ---------------------------------------------------------------------
    def base_vectors(self, ids: Tensor) -> Tensor:
        """Entity ids [...] -> base vectors [..., d]: fused for items, ID embedding otherwise."""
        flat = ids.reshape(-1)  # [N]
        vectors = self.backbone.entity_emb(flat)  # [N, d]
        if self.modality_names:
            is_item = flat < self.n_items
            item_ids = flat[is_item]
            fused = self.fusion(
                vectors[is_item],
                [getattr(self, f"features_{k}")[item_ids] for k in range(len(self.modality_names))],
                [getattr(self, f"present_{k}")[item_ids] for k in range(len(self.modality_names))],
            )
            vectors = vectors.clone()
            vectors[is_item] = fused
        return vectors.reshape(*ids.shape, -1)

    def user_vectors(self, history: Tensor, valid: Tensor, base: Tensor | None = None) -> Tensor:
        """history [B, S] item ids, valid [B, S] -> users [B, d]."""
        vectors = base[history] if base is not None else self.base_vectors(history)  # [B, S, d]
        return self.users(vectors, valid)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        history, valid = self.history[users], self.history_valid[users]  # [B, S]
        if self.training and self.config.mask_target_in_history:
            valid = self._leave_one_out(history, valid, items)
        u = self.user_vectors(history, valid)  # [B, d]
        v = self.backbone.item_vectors(u, items, self.base_vectors)  # [B, d]
        return (u * v).sum(-1)

    @staticmethod
    def _leave_one_out(history: Tensor, valid: Tensor, items: Tensor) -> Tensor:
        """Drop one history item per row: the target when it is in the sample, else a random one.

        Positives and negatives are then scored against users built the same way (one item
        fewer than the sample), so "is the target missing from the history" tells nothing.
        history, valid [B, S]; items [B] -> valid [B, S].
        """
        is_target = valid & (history == items.unsqueeze(1))  # [B, S]
        random_slot = torch.rand(valid.shape, device=valid.device).masked_fill(~valid, -1.0)
        fallback = torch.zeros_like(valid).scatter_(1, random_slot.argmax(dim=1, keepdim=True), True)
        drop = torch.where(is_target.any(dim=1, keepdim=True), is_target, fallback & valid)
        return valid & ~drop

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """``l2_scope`` all: half the squared norm of every parameter; batch: mean over the batch
        of the squared ID embeddings of the items and history used, halved."""
        if self.config.l2_scope == "all":
            return all_parameters_l2(self)
        history, valid = self.history[users], self.history_valid[users]
        target = self.backbone.entity_emb(items).pow(2).sum()
        context = (self.backbone.entity_emb(history).pow(2).sum(-1) * valid).sum()
        return 0.5 * (target + context) / len(users)

    # ---- ranking -----------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_ranking(self) -> None:
        """Cache the fused entity table and a seeded evaluation history per user."""
        base = self.base_vectors(torch.arange(self.backbone.entity_emb.num_embeddings,
                                              device=self.history.device))  # [E, d]
        table, valid = self.ranking_histories(np.arange(self.n_users))
        self._ranking_cache = (base, torch.as_tensor(table, device=base.device),
                               torch.as_tensor(valid, device=base.device))
        self._ranking_slots = self.backbone.ranking_slots(base)

    def score_users(self, users: Tensor) -> Tensor:
        if self._ranking_cache is None:
            self.prepare_ranking()
        assert self._ranking_cache is not None  # set by prepare_ranking
        base, table, valid = self._ranking_cache
        return self.score_histories(table[users], valid[users], base, self._ranking_slots)

    def rank_users(self, users: Tensor, k: int, exclude_indptr: Tensor, exclude_items: Tensor,
                   columns: Tensor | None = None) -> Tensor | None:
        if self._ranking_cache is None or not isinstance(self._ranking_slots, RankingPlan):
            return None
        base, table, valid = self._ranking_cache
        u = self.user_vectors(table[users], valid[users], base)  # [B, d]
        return rank_all_items(self._ranking_slots, u, users, k, exclude_indptr, exclude_items,
                              columns)

    def score_histories(self, history: Tensor, valid: Tensor, base: Tensor | None = None,
                        slots: RankingPlan | Tensor | None = None) -> Tensor:
        """Users given only by their liked items (new listeners too): history [B, S] item ids,
        valid [B, S] -> logits for every item [B, I]. ``slots``: the backbone's ranking slots
        of this ``base``, when cached."""
        if base is None:
            base = self.base_vectors(torch.arange(self.backbone.entity_emb.num_embeddings,
                                                  device=history.device))
        u = self.user_vectors(history, valid, base)  # [B, d]
        return self.backbone.score_all_items(u, base, slots)  # [B, I]

    # ---- capabilities (UsersFromItems; serving hooks of KGServing) ---------------------------
    def ranking_histories(self, users: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The seeded sample of ``eval_history_size`` TRAIN positives a known user is built
        from when ranking: (history [B, S], valid [B, S])."""
        if self._eval_history is None:
            self._eval_history = sample_history(
                self.history_indptr, self.history_items, np.arange(self.n_users),
                self.config.eval_history_size, np.random.default_rng(self._eval_seed))
        users = np.asarray(users.cpu() if isinstance(users, Tensor) else users, dtype=np.int64)
        return self._eval_history[0][users], self._eval_history[1][users]

    def base_table(self) -> Tensor:
        return self.base_vectors(torch.arange(self.backbone.entity_emb.num_embeddings,
                                              device=self.history.device))  # [E, d]

    def known_queries(self, users: Tensor, base: Tensor) -> Tensor:
        table, valid = self.ranking_histories(users)
        return self.user_vectors(torch.as_tensor(table, device=base.device),
                                 torch.as_tensor(valid, device=base.device), base)  # [B, d]

    def history_queries(self, history: Tensor, valid: Tensor, base: Tensor) -> Tensor:
        return self.user_vectors(history, valid, base)  # [B, d]

    def fuse_new(self, id_emb: Tensor, features: list[Tensor], present: list[Tensor]) -> Tensor:
        return self.fusion(id_emb, features, present) if self.modality_names else id_emb

    def item_inputs(self, items: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        n = len(self.modality_names)
        return (self.backbone.entity_emb.weight[items],
                [getattr(self, f"features_{k}")[items] for k in range(n)],
                [getattr(self, f"present_{k}")[items] for k in range(n)])


def train_rows(module: nn.Module, k: int, train_items: np.ndarray) -> np.ndarray:
    """Standardised rows of modality k for the train items that have it: [n, d_k]."""
    present = getattr(module, f"present_{k}").numpy() & train_items
    return getattr(module, f"features_{k}").float().numpy()[present]


def _pca_basis(fit: np.ndarray, dim: int) -> tuple[Tensor, Tensor]:
    """PCA of already z-scored rows: (mean [d_k], basis [d_k, dim]); zero columns if d_k < dim."""
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)  # vt [min(n, d_k), d_k]
    basis = np.zeros((fit.shape[1], dim), dtype=np.float32)
    n = min(dim, vt.shape[0])
    basis[:, :n] = vt[:n].T
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(basis)
