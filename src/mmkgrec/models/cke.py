"""CKE (Zhang et al., "Collaborative Knowledge Base Embedding for Recommender Systems", KDD 2016),
written from the paper.

An item's latent vector is the sum of an item offset and its knowledge-base embeddings,
``e_i = eta_i + v_i + sum_m X^m_i``, and ``score(u, i) = <u, e_i>``:

- ``eta_i``: the item's collaborative offset (an ID embedding), ``u`` the user's ID embedding.
- Structural embedding ``v_i`` (items are KG entities ``0..I-1``): TransR over the dataset's KG
  triples as given (no inverse relations, no user-item edges): ``f_r(h, t) = ||v_h W_r + r -
  v_t W_r||^2`` with one projection ``W_r`` [d, k] and one vector ``r`` [k] per relation, trained
  with the paper's pairwise ranking ``-ln sigmoid(f_r(h, t') - f_r(h, t))`` against a corrupted
  tail ``t'`` (a uniform entity; redrawn, vectorised, while ``(h, r, t')`` is a KG triple).
  ``kg_normalize`` (default) L2-normalises ``v W_r`` and ``r`` first, as RecBole's CKE does (the
  TransR paper bounds those norms by 1); ``kg_l2`` penalises the KG batch's vectors. An epoch's
  triples are every KG triple once, shuffled in :meth:`start_epoch` with the Trainer's generator,
  ``kg_batch_size`` per step, wrapping around.
- Textual / visual embeddings ``X^m_i``: the paper encodes an item's bag of words with a stacked
  denoising auto-encoder (SDAE) and its images with a stacked convolutional auto-encoder; an MMKG
  item carries feature VECTORS per modality instead, so every modality ``m`` of the dataset
  (``modalities``; None = all, [] = none) gets one denoising auto-encoder on its features
  (z-scored with train-item statistics): encoder ``X^m = tanh(A_m x~ + a)`` [d], linear decoder
  ``x^ = B_m X^m + b`` [d_m], masking noise ``ae_noise`` (a fraction of input entries zeroed),
  loss = mean squared reconstruction error of the clean features over the batch's items that HAVE
  the modality. Scores use the code of the CLEAN features (deterministic ranking). Items without
  modality ``m`` (mask False) get no ``X^m`` (zero) and no reconstruction loss. With no modality
  (lastfm-kgcn, music-d) CKE is the KG + CF model alone, which is also what RecBole's CKE runs.
- Loss: the Trainer's BPR on ``<u, e_i>`` plus :meth:`auxiliary_loss` = ``kg_loss_weight`` x
  TransR loss + ``ae_loss_weight`` x reconstruction loss (summed every step, not the paper's
  alternating / Bayesian MAP updates); :meth:`regularization` is half the batch mean of
  ``||u||^2 + ||eta_i||^2 + ||v_i||^2`` (the paper's Gaussian priors on these vectors).

Not implemented: the Bayesian treatment of the weights (point estimates instead), the stacked /
convolutional auto-encoders on raw text and pixels (one dense denoising AE per feature vector
instead), the paper's separate priors per layer.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.models.base import ModelConfig, Recommender
from mmkgrec.models.bprmf import xavier_embedding
from mmkgrec.models.kgat import transr_distance
from mmkgrec.models.layers import register_modalities

CORRUPTION_ROUNDS = 8  # redraws of corrupted tails that are true triples; the rest stay as drawn


class CKEConfig(ModelConfig):
    dim: int = Field(64, ge=1)  # users, item offsets, entities, auto-encoder codes
    kg_dim: int = Field(64, ge=1)  # TransR relation space k
    kg_loss_weight: float = Field(1.0, ge=0)  # 0: no structural loss
    kg_batch_size: int = Field(2048, ge=1)  # KG triples per step
    kg_l2: float = Field(1e-5, ge=0)  # on the KG batch's (projected) vectors
    kg_normalize: bool = True  # L2-normalise v W_r and r in the TransR distance (RecBole)
    modalities: list[str] | None = None  # None: every modality of the dataset; [] = KG only
    ae_loss_weight: float = Field(1.0, ge=0)  # 0: the auto-encoders learn from BPR alone
    ae_noise: float = Field(0.2, ge=0, lt=1)  # masking noise of the denoising auto-encoders
    ae_batch_size: int = Field(2048, ge=1)  # items per step for the reconstruction loss


class DenoisingAutoEncoder(nn.Module):
    """One modality's denoising AE: ``code = tanh(A x)`` [.., d], ``x^ = B code`` [.., d_m]."""

    def __init__(self, d_in: int, dim: int):
        super().__init__()
        self.encoder, self.decoder = nn.Linear(d_in, dim), nn.Linear(dim, d_in)
        for linear in (self.encoder, self.decoder):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def encode(self, x: Tensor) -> Tensor:
        return torch.tanh(self.encoder(x))  # [.., d]

    def reconstruction_loss(self, x: Tensor, present: Tensor, noise: float) -> Tensor:
        """Mean over present rows of the squared error of reconstructing clean x [B, d_m] from a
        masked copy (a ``noise`` fraction of entries zeroed); present [B] bool."""
        kept = (torch.rand_like(x) >= noise).to(x.dtype) if noise > 0 else 1.0
        error = (self.decoder(self.encode(x * kept)) - x).pow(2).mean(1)  # [B]
        weight = present.to(x.dtype)
        return (error * weight).sum() / weight.sum().clamp_min(1.0)


class CKE(Recommender):
    """CKE: item = offset + TransR structural embedding (+ modality auto-encoder codes)."""

    name = "cke"
    Config = CKEConfig
    config: CKEConfig
    ranking_caches = ("_cache",)  # reset by train()

    def __init__(self, dataset: MMKG, split: Split, config: CKEConfig, seed: int = 0):
        super().__init__(dataset, split, config)
        generator = torch.Generator().manual_seed(seed)
        d = config.dim
        self.n_entities, self.n_relations = dataset.n_entities, dataset.n_relations
        self.user_emb = xavier_embedding(self.n_users, d, generator)  # [U, d] u
        self.item_offset = xavier_embedding(self.n_items, d, generator)  # [I, d] eta
        self.entity_emb = xavier_embedding(self.n_entities, d, generator)  # [E, d] v (items first)
        n_rel = max(self.n_relations, 1)
        self.relation_emb = xavier_embedding(n_rel, config.kg_dim, generator)  # [R, k] r
        self.relation_proj = nn.Parameter(torch.empty(n_rel, d, config.kg_dim))  # W_r [R, d, k]
        nn.init.xavier_uniform_(self.relation_proj, generator=generator)
        register_modalities(self, dataset, split, config.modalities)  # features_k, present_k
        self.autoencoders = nn.ModuleList(
            DenoisingAutoEncoder(getattr(self, f"features_{k}").shape[1], d)
            for k in range(len(self.modality_names)))
        triples = np.asarray(dataset.triples, dtype=np.int64).reshape(-1, 3)  # [T, 3] (h, r, t)
        self.triples = triples
        self.triple_keys = np.unique((triples[:, 0] * n_rel + triples[:, 1]) * self.n_entities
                                     + triples[:, 2])  # [T] sorted, for corrupted-tail checks
        self._kg_batches: Tensor | None = None  # [4, T] (head, relation, tail, corrupted tail)
        self._item_order: Tensor | None = None  # [I] this epoch's item order for the AE loss
        self._kg_cursor = self._ae_cursor = 0
        self._cache: tuple[tuple, Tensor] | None = None  # (parameter versions, item table)
        self.start_epoch(0, np.random.default_rng(seed))

    # ---- representations -----------------------------------------------------------------------
    def _autoencoders(self) -> list[DenoisingAutoEncoder]:
        return cast(list[DenoisingAutoEncoder], list(self.autoencoders))

    def item_vectors(self, items: Tensor) -> Tensor:
        """e_i = eta_i + v_i + sum_m [i has m] X^m_i: items [...] -> [..., d]."""
        vectors = self.item_offset(items) + self.entity_emb(items)
        for k, autoencoder in enumerate(self._autoencoders()):
            features = getattr(self, f"features_{k}")[items].float()  # [..., d_m]
            present = getattr(self, f"present_{k}")[items].unsqueeze(-1)  # [..., 1]
            vectors = vectors + autoencoder.encode(features) * present.to(vectors.dtype)
        return vectors

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return (self.user_emb(users) * self.item_vectors(items)).sum(-1)  # [B]

    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor:
        return self.user_emb(users) @ self.item_vectors(items).T  # [B, M]

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """Half the batch mean of ||u||^2 + ||eta_i||^2 + ||v_i||^2."""
        total = (self.user_emb(users).pow(2).sum() + self.item_offset(items).pow(2).sum()
                 + self.entity_emb(items).pow(2).sum())
        return 0.5 * total / len(users)

    # ---- auxiliary losses ----------------------------------------------------------------------
    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        """Shuffle the KG triples (with fresh corrupted tails) and the items of the AE loss."""
        device = self.user_emb.weight.device
        if self.config.kg_loss_weight > 0 and len(self.triples):
            order = rng.permutation(len(self.triples))  # [T]
            heads, relations, tails = self.triples[order].T
            corrupted = self.corrupt_tails(heads, relations, rng)  # [T]
            batches = np.stack([heads, relations, tails, corrupted])
            self._kg_batches = torch.as_tensor(batches, device=device)  # [4, T]
            self._kg_cursor = 0
        if self.config.ae_loss_weight > 0 and len(self.autoencoders):
            self._item_order = torch.as_tensor(rng.permutation(self.n_items), device=device)
            self._ae_cursor = 0

    def corrupt_tails(self, heads: np.ndarray, relations: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
        """A uniform entity per triple [T], redrawn (up to ``CORRUPTION_ROUNDS`` times, only the
        rejected entries) while ``(h, r, t')`` is a KG triple."""
        n_rel = max(self.n_relations, 1)
        base = (heads * n_rel + relations) * self.n_entities  # [T]
        corrupted = rng.integers(0, self.n_entities, len(heads))  # [T]
        for _ in range(CORRUPTION_ROUNDS):
            keys = base + corrupted
            where = np.searchsorted(self.triple_keys, keys).clip(max=len(self.triple_keys) - 1)
            pending = np.flatnonzero(self.triple_keys[where] == keys)
            if not pending.size:
                break
            corrupted[pending] = rng.integers(0, self.n_entities, pending.size)
        return corrupted

    @staticmethod
    def _take(order: Tensor, cursor: int, size: int) -> tuple[Tensor, int]:
        """The next ``size`` columns of a per-epoch order (wrapping) and the next cursor."""
        n = order.shape[-1]
        take = (cursor + torch.arange(size, device=order.device)) % n  # [size]
        return order[..., take], (cursor + size) % n

    def kg_loss(self) -> Tensor:
        """TransR pairwise loss of the next ``kg_batch_size`` KG triples (a scalar)."""
        cfg = self.config
        assert self._kg_batches is not None, "start_epoch() samples the KG batches first"
        self._kg_batches = self._kg_batches.to(self.entity_emb.weight.device)
        batch, self._kg_cursor = self._take(self._kg_batches, self._kg_cursor, cfg.kg_batch_size)
        heads, relations, tails, corrupted = batch  # [B] each
        h = self.entity_emb(heads)  # [B, d]
        t = self.entity_emb(torch.stack([tails, corrupted], dim=1))  # [B, 2, d]
        distance, norm = transr_distance(self.relation_proj, self.relation_emb(relations),
                                         relations, h, t, normalize=cfg.kg_normalize)  # [B, 2]
        loss = F.softplus(distance[:, 0] - distance[:, 1]).mean()  # -ln sigmoid(f' - f)
        return loss + cfg.kg_l2 * 0.5 * norm.mean()

    def reconstruction_loss(self) -> Tensor:
        """Sum over modalities of the denoising AEs' loss on the next ``ae_batch_size`` items."""
        assert self._item_order is not None, "start_epoch() orders the items first"
        self._item_order = self._item_order.to(self.user_emb.weight.device)
        items, self._ae_cursor = self._take(self._item_order, self._ae_cursor,
                                            self.config.ae_batch_size)  # [B]
        return cast(Tensor, sum(autoencoder.reconstruction_loss(getattr(self, f"features_{k}")[items].float(),
                                                   getattr(self, f"present_{k}")[items],
                                                   self.config.ae_noise)
                   for k, autoencoder in enumerate(self._autoencoders())))

    def auxiliary_loss(self) -> Tensor | None:
        """``kg_loss_weight`` x TransR loss + ``ae_loss_weight`` x reconstruction loss of this
        step's batches, or None when neither applies (no triples / modalities, weights 0)."""
        cfg, total = self.config, None
        if cfg.kg_loss_weight > 0 and self._kg_batches is not None:
            total = cfg.kg_loss_weight * self.kg_loss()
        if cfg.ae_loss_weight > 0 and self._item_order is not None:
            part = cfg.ae_loss_weight * self.reconstruction_loss()
            total = part if total is None else total + part
        return total

    # ---- ranking -------------------------------------------------------------------------------
    def item_table(self) -> Tensor:
        """e_i of every item [I, d]; cached without autograd until a parameter changes."""
        items = torch.arange(self.n_items, device=self.user_emb.weight.device)
        if torch.is_grad_enabled():
            return self.item_vectors(items)
        key = tuple((p._version, p.data_ptr(), p.device) for p in self.parameters())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.item_vectors(items))
        return self._cache[1]

    @torch.no_grad()
    def prepare_ranking(self) -> None:
        self.item_table()

    def score_users(self, users: Tensor) -> Tensor:
        return self.user_emb(users) @ self.item_table().T  # [B, I]

