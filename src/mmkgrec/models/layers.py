"""Layers shared by the KG models: the KGCN item aggregator and MKGCN's fusion / user aggregators.

Shapes: B users (or user-item pairs), K sampled neighbours per entity, d the embedding width,
E entities, I items (items are entities ``0..I-1``), R relation embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from mmkgrec.data.transforms import zscore_stats
from mmkgrec.errors import ConfigError
from mmkgrec.graph.kg import multi_hop

Aggregator = Literal["sum", "concat", "neighbor"]
Activation = Literal["relu", "sigmoid", "tanh", "leaky_relu"]
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "leaky_relu": nn.functional.leaky_relu,
}


class KGItemAggregator(nn.Module):
    """KGCN's item aggregator: ``n_hops`` rounds of user-specific neighbourhood aggregation.

    A neighbour's weight is ``softmax_k <u, r_k> / d`` over the K sampled neighbours (KGCN takes
    the mean over the width, hence ``/ d``). Round ``i`` combines an entity's vector ``h`` with the
    weighted neighbour vector ``n``: ``sum`` -> act(W(h + n) + b), ``concat`` -> act(W[h; n] + b),
    ``neighbor`` -> act(W n + b); a separate linear layer per round; ``inner_activation`` on every
    round but the last, which uses tanh.

    Two evaluation orders give identical results (tested):
    - :meth:`forward_pairs` walks each pair's receptive-field tree (training; cost per pair
      ``K + K^2 + ... + K^H``);
    - :meth:`forward_all_items` computes round by round for every entity at once, because with a
      fixed neighbour table an entity's vector after round ``i`` depends only on the entity and
      the user. That makes full ranking one tensor program per user block. It is the reference
      of the fused ranking path (:mod:`mmkgrec.models.fused`, selected by
      ``MMKGREC_KG_RANKING``), which the models use by default.
    """

    def __init__(self, dim: int, n_hops: int, aggregator: Aggregator = "sum",
                 inner_activation: Activation = "relu"):
        super().__init__()
        if aggregator not in ("sum", "concat", "neighbor"):
            raise ValueError(f"unknown aggregator {aggregator!r}")
        self.dim, self.n_hops, self.aggregator = dim, n_hops, aggregator
        width = 2 * dim if aggregator == "concat" else dim
        linears = [nn.Linear(width, dim) for _ in range(n_hops)]
        for layer in linears:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.linears = nn.ModuleList(linears)
        self.inner = ACTIVATIONS[inner_activation]

    def _combine(self, hop: int, self_vec: Tensor, neigh_vec: Tensor) -> Tensor:
        """[..., d] x [..., d] -> [..., d] for round ``hop``."""
        if self.aggregator == "sum":
            x = self_vec + neigh_vec
        elif self.aggregator == "concat":
            x = torch.cat([self_vec, neigh_vec], dim=-1)
        else:
            x = neigh_vec
        out = self.linears[hop](x)
        return torch.tanh(out) if hop == self.n_hops - 1 else self.inner(out)

    def attention(self, users: Tensor, relation_emb: Tensor, relations: Tensor) -> Tensor:
        """Neighbour weights. users [B, d]; relations [B, ..., K] ids -> [B, ..., K] softmax over K."""
        scores = users @ relation_emb.T / self.dim  # [B, R]
        flat = relations.reshape(len(users), -1)  # [B, M*K]
        picked = torch.gather(scores, 1, flat).reshape(relations.shape)  # [B, ..., K]
        return torch.softmax(picked, dim=-1)

    def relation_attention(self, users: Tensor, relation_emb: Tensor) -> Tensor:
        """Each user's attention over relations: softmax_r <u, r> / d. users [B, d],
        relation_emb [R, d] -> [B, R]. A neighbour's weight in :meth:`attention` is this
        distribution renormalised over the relations of the entity's K sampled neighbours."""
        return torch.softmax(users @ relation_emb.T / self.dim, dim=-1)

    def forward_pairs(self, users: Tensor, items: Tensor, entity_vectors: Callable[[Tensor], Tensor],
                      relation_emb: Tensor, neighbors: Tensor, relations: Tensor) -> Tensor:
        """Item vectors for B (user, item) pairs.

        Args:
            users: [B, d] user vectors.
            items: [B] item (= entity) ids.
            entity_vectors: maps an id tensor [...] to base vectors [..., d].
            relation_emb: [R, d].
            neighbors, relations: [E, K] sampled neighbour / relation tables.
        Returns:
            [B, d] user-specific item vectors.
        """
        batch, k = len(items), neighbors.shape[1]
        ids = multi_hop(neighbors, items, self.n_hops)  # hop h: [B, K^h]
        rels = [relations[hop].reshape(batch, -1) for hop in ids[:-1]]  # hop h: [B, K^(h+1)]
        vectors = [entity_vectors(x) for x in ids]  # hop h: [B, K^h, d]
        weights = [self.attention(users, relation_emb, r.reshape(batch, -1, k)) for r in rels]
        for round_ in range(self.n_hops):
            nxt = []
            for hop in range(self.n_hops - round_):
                neigh = vectors[hop + 1].reshape(batch, -1, k, self.dim)  # [B, K^hop, K, d]
                mixed = (weights[hop].unsqueeze(-1) * neigh).sum(dim=2)  # [B, K^hop, d]
                nxt.append(self._combine(round_, vectors[hop], mixed))
            vectors = nxt
        return vectors[0].reshape(batch, self.dim)

    def _linear(self, round_: int) -> nn.Linear:
        return cast(nn.Linear, self.linears[round_])

    def _split_linear(self, round_: int) -> tuple[Tensor | None, Tensor]:
        """Round ``round_``'s weight as (self part [d, d] or None, neighbour part [d, d]):
        W(h + n) = W h + W n; W[h; n] = W_h h + W_n n; neighbor: W n."""
        weight = self._linear(round_).weight
        if self.aggregator == "sum":
            return weight, weight
        if self.aggregator == "concat":
            return weight[:, : self.dim], weight[:, self.dim:]
        return None, weight

    def first_round_slots(self, base: Tensor, neighbors: Tensor, n_items: int) -> Tensor:
        """The user-independent part of round 0 for every row it covers: ``[rows, K, d + 1]``.

        Slot k of row e is W_self h_e + b + W_neigh h_{n_k(e)} (the weights sum to 1, so the self
        term and bias fold into every slot), plus a ones column that yields the softmax
        normaliser. Full ranking computes it once per ranking pass (``prepare_ranking``).
        """
        rows = n_items if self.n_hops == 1 else base.shape[0]
        nb = neighbors[:rows]  # [rows, K]
        w_self, w_neigh = self._split_linear(0)
        bias = self._linear(0).bias
        own = bias.expand(rows, -1) if w_self is None else base[:rows] @ w_self.T + bias  # [rows, d]
        slots = (base @ w_neigh.T)[nb] + own.unsqueeze(1)  # [rows, K, d]
        return torch.cat([slots, slots.new_ones(rows, nb.shape[1], 1)], dim=-1)

    def forward_all_items(self, users: Tensor, base: Tensor, relation_emb: Tensor,
                          neighbors: Tensor, relations: Tensor, n_items: int,
                          slots: Tensor | None = None) -> Tensor:
        """Item vectors of every item for a block of users.

        The linear map is applied to entity vectors BEFORE the weighted neighbour sum
        (W(h + sum_k w_k h_k) = W h + sum_k w_k (W h_k)), so in the first round the transformed
        table is user-independent and the per-(user, item) work is a K-term weighted gather.
        The last round is computed for items only.

        Args:
            users: [B, d].
            base: [E, d] base entity vectors (user-independent).
            relation_emb: [R, d]; neighbors, relations: [E, K].
            n_items: I; items are entities 0..I-1.
            slots: :meth:`first_round_slots` when already computed (it does not depend on users).
        Returns:
            [B, I, d].
        """
        if self.n_hops == 0:
            return base[:n_items].unsqueeze(0).expand(len(users), -1, -1)
        relation_scores = users @ relation_emb.T / self.dim  # [B, R]
        # softmax over a neighbourhood = exp(score of its relation) / their sum; exponentiate per
        # relation once ([B, R]) instead of per (user, entity, neighbour).
        exp_scores = torch.exp(relation_scores - relation_scores.amax(dim=1, keepdim=True))
        h = None  # previous round's vectors of all entities, [B, E, d]; round 0 uses ``base``
        for round_ in range(self.n_hops):
            rows = n_items if round_ == self.n_hops - 1 else base.shape[0]
            nb = neighbors[:rows]  # [rows, K]
            unnormalised = exp_scores[:, relations[:rows]]  # [B, rows, K]
            w_self, w_neigh = self._split_linear(round_)
            bias = self._linear(round_).bias
            if h is None:
                # User-independent slots: one batched matmul over rows gives the whole
                # pre-activation and its normaliser.
                if slots is None:
                    slots = self.first_round_slots(base, neighbors, n_items)  # [rows, K, d+1]
                out = torch.bmm(unnormalised.transpose(0, 1), slots).transpose(0, 1)  # [B, rows, d+1]
                pre = out[..., :-1] / out[..., -1:]
            else:  # user-specific table: gather one neighbour slot at a time
                weights = unnormalised / unnormalised.sum(dim=-1, keepdim=True)  # [B, rows, K]
                table = h @ w_neigh.T  # [B, E, d]
                pre = cast(Tensor, sum(weights[:, :, j, None] * table[:, nb[:, j]]
                                       for j in range(nb.shape[1])))
                pre = pre + bias
                if w_self is not None:
                    pre = pre + h[:, :rows] @ w_self.T
            h = torch.tanh(pre) if round_ == self.n_hops - 1 else self.inner(pre)
        assert h is not None  # n_hops >= 1 rounds ran
        return h  # [B, I, d]


def standardised_modality(dataset, name: str, train_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-score modality ``name`` with the mean / std of the TRAIN items that have it (leak-free).

    Args:
        dataset: the MMKG; train_items: [I] bool, items with a train positive.
    Returns:
        (features [I, d_k] float32 with absent rows zero, present mask [I]).
    """
    features, mask = dataset.modalities[name], dataset.modality_masks[name]
    mean, std = modality_statistics(dataset, name, train_items)
    scaled = np.where(mask[:, None], (features - mean) / std, 0.0).astype(np.float32)
    return scaled, mask


def modality_statistics(dataset, name: str, train_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [d_k], std [d_k]) that :func:`standardised_modality` z-scores modality ``name``
    with, so that features of a new item can be scaled identically."""
    features, mask = dataset.modalities[name], dataset.modality_masks[name]
    fit = features[mask & train_items]
    if len(fit) == 0:
        raise ConfigError(f"modality {name!r}: no train item has it")
    return zscore_stats(fit, 1e-6)


def register_modalities(module: nn.Module, dataset, split, names: list[str] | None,
                        dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Validate modality ``names`` (None = all of the dataset's), z-score each with train-item
    statistics and register it on ``module`` as buffers ``features_{k}`` [I, d_k] (``dtype``:
    float16 halves the largest MKGCN buffer; consumers cast to float32) and ``present_{k}``
    [I]; sets ``module.modality_names`` and ``module.modality_stats``. Returns the [I] bool
    train-item mask."""
    names = list(dataset.modalities) if names is None else list(names)
    unknown = sorted(set(names) - set(dataset.modalities))
    if unknown:
        raise ConfigError(f"unknown modalities {unknown}; the dataset has "
                          f"{sorted(dataset.modalities) or 'none'}")
    train_items = np.zeros(dataset.n_items, dtype=bool)
    train_items[split.train_positives()["item"].to_numpy()] = True
    stats = []  # (mean [d_k], std [d_k]) per modality: new items scale alike
    for k, name in enumerate(names):
        stats.append(modality_statistics(dataset, name, train_items))
        features, mask = standardised_modality(dataset, name, train_items)
        module.register_buffer(f"features_{k}", torch.as_tensor(features, dtype=dtype))  # [I, d_k]
        module.register_buffer(f"present_{k}", torch.as_tensor(mask))  # [I]
    setattr(module, "modality_names", names)  # noqa: B010 (nn.Module's typed __setattr__)
    setattr(module, "modality_stats", stats)  # noqa: B010
    return train_items



def modality_buffers(module: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """The buffers :func:`register_modalities` set on ``module``, in ``modality_names`` order:
    (features ``[I, d_k]`` per modality, present masks ``[I]`` per modality)."""
    names: list[str] = getattr(module, "modality_names")  # noqa: B009 (a plain attribute)
    count = range(len(names))
    return ([getattr(module, f"features_{k}") for k in count],
            [getattr(module, f"present_{k}") for k in count])


Fusion = Literal["sum", "mean", "max", "concat", "residual"]


class MultiModalFusion(nn.Module):
    """MKGCN's multi-modal aggregator: fuses an item's ID embedding with its modality vectors.

    Each modality ``k`` (raw width d_k) is brought to width d by a learned linear projection or
    by a fixed PCA basis fitted on train items (``pca`` buffers). Absent modalities (mask False)
    are excluded from the fusion of that item:
    ``sum`` e + sum_k m_k; ``mean`` mean(e, m_1..m_K); ``max`` elementwise max over them;
    ``concat`` W[e; m_1; ...; m_K] + b (absent -> zero block); ``residual`` (default)
    tanh(W(e + mean(e, m_1..m_K)) + b).
    """

    def __init__(self, dim: int, modality_dims: dict[str, int], fusion: Fusion = "residual",
                 pca_bases: dict[str, tuple[Tensor, Tensor]] | None = None):
        super().__init__()
        if fusion not in ("sum", "mean", "max", "concat", "residual"):
            raise ValueError(f"unknown fusion {fusion!r}")
        self.fusion, self.names = fusion, list(modality_dims)
        self.pca = pca_bases is not None
        if pca_bases is not None:  # fixed projections: (mean [d_k], basis [d_k, d]) per modality
            for i, name in enumerate(self.names):
                mean, basis = pca_bases[name]
                self.register_buffer(f"pca_mean_{i}", mean)
                self.register_buffer(f"pca_basis_{i}", basis)
        else:
            self.projections = nn.ModuleList(nn.Linear(modality_dims[n], dim) for n in self.names)
        n_inputs = 1 + len(self.names)
        self.out = (None if not self.names else nn.Linear(n_inputs * dim, dim) if fusion == "concat"
                    else nn.Linear(dim, dim) if fusion == "residual" else None)

    def project(self, k: int, features: Tensor) -> Tensor:
        """Modality k's raw features [..., d_k] -> [..., d]."""
        features = features.float()  # float16 feature buffers are stored, not computed in
        if self.pca:
            return (features - getattr(self, f"pca_mean_{k}")) @ getattr(self, f"pca_basis_{k}")
        return self.projections[k](features)

    def contributions(self, ids_emb: Tensor, features: list[Tensor], masks: list[Tensor]) -> Tensor:
        """The inputs the fusion combines, each at width d: the ID embedding, then each projected
        modality (zero where absent). ids_emb [N, d]; features[k] [N, d_k]; masks[k] [N] -> [N, 1+K, d]."""
        parts = [ids_emb] + [self.project(k, f) * m.unsqueeze(-1).to(ids_emb.dtype)
                             for k, (f, m) in enumerate(zip(features, masks))]
        return torch.stack(parts, dim=1)

    def forward(self, ids_emb: Tensor, features: list[Tensor], masks: list[Tensor]) -> Tensor:
        """ids_emb [N, d]; features[k] [N, d_k]; masks[k] [N] bool -> fused [N, d]."""
        if not self.names:
            return ids_emb
        parts = torch.stack([ids_emb] + [self.project(k, f) for k, f in enumerate(features)], dim=1)
        present = torch.stack([torch.ones_like(masks[0])] + list(masks), dim=1)  # [N, 1+K]
        keep = present.unsqueeze(-1).to(parts.dtype)  # [N, 1+K, 1]
        if self.fusion == "max":
            return parts.masked_fill(~present.unsqueeze(-1), float("-inf")).amax(dim=1)
        if self.fusion == "concat":
            assert self.out is not None  # built for concat and residual
            return self.out((parts * keep).flatten(1))
        total = (parts * keep).sum(dim=1)  # [N, d]
        if self.fusion == "sum":
            return total
        mean = total / keep.sum(dim=1)  # [N, d]
        if self.fusion == "mean":
            return mean
        assert self.out is not None  # built for concat and residual
        return torch.tanh(self.out(ids_emb + mean))


UserPooling = Literal["multi-head", "mean-pool", "max-pool"]


class UserAggregator(nn.Module):
    """MKGCN's user aggregator: a user is built from item vectors of their (train) history.

    ``multi-head``: multi-head self-attention over the history, then a masked mean;
    ``mean-pool`` / ``max-pool``: masked mean / max of the item vectors. Users with an empty
    history get a learned default vector. No user ID embedding: any set of liked items defines
    a user, so a new listener is served without retraining.
    """

    def __init__(self, dim: int, pooling: UserPooling = "multi-head", n_heads: int = 8):
        super().__init__()
        if pooling not in ("multi-head", "mean-pool", "max-pool"):
            raise ValueError(f"unknown user pooling {pooling!r}")
        self.pooling = pooling
        self.attention = (nn.MultiheadAttention(dim, n_heads, batch_first=True)
                          if pooling == "multi-head" else None)
        self.empty_user = nn.Parameter(torch.zeros(dim))

    def forward(self, history: Tensor, valid: Tensor) -> Tensor:
        """history [B, S, d] item vectors; valid [B, S] bool (False = padding) -> users [B, d]."""
        has_any = valid.any(dim=1)  # [B]
        safe_valid = valid | ~has_any.unsqueeze(1)  # avoid all-masked rows inside attention
        x = history
        if self.attention is not None:
            x, _ = self.attention(x, x, x, key_padding_mask=~safe_valid, need_weights=False)
        keep = valid.unsqueeze(-1)  # [B, S, 1]
        if self.pooling == "max-pool":
            pooled = x.masked_fill(~keep, float("-inf")).amax(dim=1)
        else:
            pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        return torch.where(has_any.unsqueeze(1), pooled, self.empty_user.expand_as(pooled))
