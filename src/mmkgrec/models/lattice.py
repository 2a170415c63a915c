"""LATTICE (Zhang et al., "Mining Latent Structures for Multimedia Recommendation", ACM MM 2021),
written from the paper; where the paper is silent, the choices of the public implementations
(the authors' and MMRec's) are followed, as noted.

Per modality ``m`` (every modality of the dataset, or ``modalities``; features z-scored with
train-item statistics):

- Initial graph (frozen, computed once): the kNN graph of cosine similarities of the modality's
  features: each item WITH the modality keeps its ``knn_k`` most similar OTHER items having it,
  weighted by the similarity (negative ones clamped to 0), normalised ``D^-1/2 S D^-1/2`` with
  ``D`` the row sums. Items without the modality (mask False) get no edge, in or out.
- Learned graph: the same kNN construction on learned projections ``W_m x + b_m`` (width
  ``feat_dim``); the neighbours are chosen without gradient, the kept similarities carry it.
- Combination: modality weights ``alpha = softmax(w)`` (learned); the item-item graph is
  ``A = lambda * sum_m alpha_m S^_m + (1 - lambda) * norm(sum_m alpha_m S~_m)`` (``lambda_coeff``,
  the skip connection to the initial structure; the public code's order: weights, then one
  normalisation of the learned part).
- Graph convolution: ``h = A^L e`` over the items' ID (ego) embeddings, ``L = item_layers``.
- CF backbone: LightGCN (:class:`~mmkgrec.models.lightgcn.LightGCN`) over the TRAIN user-item
  graph; final item vector ``e_i = lightgcn_i + h_i / ||h_i||``, ``score(u, i) = <e_u, e_i>``.
  Trained with BPR; :meth:`regularization` is LightGCN's (ego embeddings of the batch).

The learned graph is rebuilt, with gradient, at the first training step of every epoch and reused
(detached) for the epoch's other steps, as the public code does (``rebuild_every_step = true``
rebuilds it every step); ranking rebuilds it from the current parameters, so pair scores and
full-ranking scores come from the same graph and a checkpoint (parameters + the initial graphs as
buffers) gives identical scores.

With no modality (a dataset without any, e.g. lastfm-kgcn or music-d, or ``modalities = []``)
there is no item-item graph and LATTICE IS LightGCN.

Not implemented: fine-tuning the raw feature tables (the public code makes them trainable;
here they are fixed buffers), the NGCF / MF backbones. Unlike the public code, an item is not
its own neighbour (the k neighbours are other items; its own ID vector is in the LightGCN term).
Costs: the kNN search is ``O(I^2 d)`` per rebuild, done by blocks of rows with ``torch.topk``
(memory ``O(block * I)``); propagation is sparse.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.models.kgat import neighbor_sum
from mmkgrec.models.layers import modality_buffers, register_modalities
from mmkgrec.models.lightgcn import LightGCN, LightGCNConfig

SIMILARITY_CELLS = 1 << 24  # entries of one [block, P] similarity block of the kNN search


# ---- kNN item-item graphs (shared with FREEDOM, models/freedom.py) -------------------------------
@torch.no_grad()
def knn_neighbors(features: Tensor, present: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each present item's ``k`` nearest OTHER present items by cosine similarity.

    Args:
        features: [I, d] item vectors; present: [I] bool, items that have them.
        k: neighbours per item (fewer, ``P - 1``, when only ``P <= k`` items are present).
    Returns:
        (rows [P * k'], cols [P * k']) int64 item ids, rows ascending, ``k'`` per present row;
        no edge touches an absent item and no item is its own neighbour.
    """
    ids = present.nonzero().squeeze(1)  # [P]
    n, k = len(ids), min(k, len(ids) - 1)
    if k <= 0:
        empty = torch.zeros(0, dtype=torch.int64, device=features.device)
        return empty, empty
    x = F.normalize(features[ids].float(), dim=1)  # [P, d]
    block = max(1, SIMILARITY_CELLS // n)
    picked = []
    for start in range(0, n, block):  # blocks of rows: [b, P] similarities at a time
        sim = x[start:start + block] @ x.T  # [b, P]
        rows = torch.arange(len(sim), device=sim.device)
        sim[rows, start + rows] = float("-inf")  # not its own neighbour
        picked.append(sim.topk(k, dim=1).indices)  # [b, k] positions among the present
    cols = ids[torch.cat(picked)].reshape(-1)  # [P * k] item ids
    return ids.repeat_interleave(k), cols


def cosine_values(features: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Cosine similarity of the (rows, cols) pairs [M], negative ones clamped to 0; differentiable
    in ``features`` [I, d]."""
    x = F.normalize(features.float(), dim=1)
    return (x[rows] * x[cols]).sum(-1).clamp_min(0.0)  # [M]


def normalized_values(rows: Tensor, cols: Tensor, values: Tensor, n: int) -> Tensor:
    """``D^-1/2 S D^-1/2`` of the sparse [n, n] ``S`` (rows, cols, values [M]), ``D`` = row sums
    (LATTICE's / FREEDOM's normalisation); differentiable in ``values``."""
    degree = values.new_zeros(n).index_add(0, rows, values)  # [n]
    scale = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), 0.0)  # [n]; 0 without edges
    return values * scale[rows] * scale[cols]  # [M]


class LatentItemGraph(nn.Module):
    """LATTICE's modality-aware item-item graph as a layer (shared with MMKG-CF's ``latent``
    content route, models/mmkgcf.py).

    Built from the owner's modality tables (``features[m]`` [I, d_m] z-scored, ``present[m]`` [I]
    bool): the frozen initial kNN graphs ``S^_m`` (buffers ``initial_index_m`` [2, M_m],
    ``initial_value_m`` [M_m]), the projections ``W_m x + b_m`` (``projections[m]``, width
    ``feat_dim``) and the modality weights ``w`` (``modal_weight`` [n_modalities]).

    :meth:`graph` gives ``A`` of the current parameters; :meth:`for_step` the one a forward uses
    (rebuilt with gradient at an epoch's first training step, then reused detached, see
    :meth:`start_epoch`); :meth:`convolve` gives ``h / ||h||`` with ``h = A^L e`` [I, d].
    """

    def __init__(self, features: list[Tensor], present: list[Tensor], n_items: int, knn_k: int,
                 lambda_coeff: float, feat_dim: int, generator: torch.Generator,
                 rebuild_every_step: bool = False):
        super().__init__()
        self.n_items, self.knn_k, self.lambda_coeff = n_items, knn_k, lambda_coeff
        self.rebuild_every_step = rebuild_every_step
        self.projections = nn.ModuleList()
        for k, (table, mask) in enumerate(zip(features, present)):
            linear = nn.Linear(table.shape[1], feat_dim)  # W_m, b_m
            nn.init.xavier_uniform_(linear.weight, generator=generator)
            nn.init.zeros_(linear.bias)
            self.projections.append(linear)
            rows, cols = knn_neighbors(table, mask, knn_k)  # [M_m] each
            values = normalized_values(rows, cols, cosine_values(table, rows, cols), n_items)
            # Buffers (checkpointed): the frozen initial graph S^_m, exactly as trained with.
            self.register_buffer(f"initial_index_{k}", torch.stack([rows, cols]))  # [2, M_m]
            self.register_buffer(f"initial_value_{k}", values)  # [M_m]
        self.modal_weight = nn.Parameter(torch.zeros(len(features)))  # w [n_modalities]
        self._epoch_graph: tuple[Tensor, Tensor, Tensor] | None = None  # detached (rows, cols, A)
        self._rebuild = True  # build the graph (with gradient) at the next training step

    def graph(self, features: list[Tensor], present: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``A`` of the current parameters as edge lists: (rows [M], cols [M], weights [M]);
        repeated (row, col) pairs are summed by the convolution."""
        alpha = torch.softmax(self.modal_weight, dim=0)  # [n_modalities]
        lam, parts, learned = self.lambda_coeff, [], []
        for k, projection in enumerate(self.projections):
            index, value = getattr(self, f"initial_index_{k}"), getattr(self, f"initial_value_{k}")
            parts.append((index[0], index[1], lam * alpha[k] * value))  # lambda alpha_m S^_m
            projected = projection(features[k].float())  # [I, feat_dim]
            rows, cols = knn_neighbors(projected, present[k], self.knn_k)  # no gradient here
            learned.append((rows, cols, alpha[k] * cosine_values(projected, rows, cols)))
        rows, cols, values = (torch.cat(t) for t in zip(*learned))  # sum_m alpha_m S~_m
        values = (1 - lam) * normalized_values(rows, cols, values, self.n_items)
        parts.append((rows, cols, values))
        return cast(tuple[Tensor, Tensor, Tensor], tuple(torch.cat(t) for t in zip(*parts)))

    def for_step(self, features: list[Tensor], present: list[Tensor], training_step: bool
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """The graph this forward uses: in a training step, the epoch's (rebuilt with gradient
        at its first step, then detached); otherwise rebuilt from the current parameters."""
        if not training_step:
            return self.graph(features, present)
        if self._rebuild or self.rebuild_every_step or self._epoch_graph is None:
            graph = self.graph(features, present)
            self._epoch_graph = cast(tuple[Tensor, Tensor, Tensor], tuple(t.detach() for t in graph))
            self._rebuild = False
            return graph
        return self._epoch_graph

    def start_epoch(self) -> None:
        self._rebuild = True

    def convolve(self, graph: tuple[Tensor, Tensor, Tensor], ego: Tensor, layers: int) -> Tensor:
        """[I, d] item ego embeddings -> ``h / ||h||``, ``h = A^layers ego`` (rows without edges
        stay 0)."""
        rows, cols, weights = graph
        h = ego
        for _ in range(layers):
            h = neighbor_sum(rows, cols, weights, h, self.n_items)  # [I, d]
        return F.normalize(h, dim=1)


class LATTICEConfig(LightGCNConfig):
    dim: int = Field(64, ge=1)
    n_layers: int = Field(2, ge=0)  # LightGCN layers on the user-item graph
    item_layers: int = Field(1, ge=1)  # convolutions on the item-item graph
    knn_k: int = Field(10, ge=1)
    lambda_coeff: float = Field(0.9, ge=0, le=1)  # weight of the initial (frozen) graph
    feat_dim: int = Field(64, ge=1)  # width of the learned modality projections
    modalities: list[str] | None = None  # None: every modality of the dataset; [] = LightGCN
    rebuild_every_step: bool = False  # False: the learned graph is rebuilt once per epoch


class LATTICE(LightGCN):
    """LATTICE: LightGCN plus convolution over learned modality-aware item-item graphs."""

    name = "lattice"
    Config = LATTICEConfig
    config: LATTICEConfig

    def __init__(self, dataset: MMKG, split: Split, config: LATTICEConfig, seed: int = 0):
        super().__init__(dataset, split, config, seed)  # user_emb, item_emb, adjacency
        register_modalities(self, dataset, split, config.modalities)  # features_k, present_k
        self.latent = LatentItemGraph(
            *modality_buffers(self), self.n_items, config.knn_k,
            config.lambda_coeff, config.feat_dim, torch.Generator().manual_seed(seed + 1),
            config.rebuild_every_step) if self.modality_names else None

    def learned_graph(self) -> tuple[Tensor, Tensor, Tensor]:
        """``A`` of the current parameters (see :meth:`LatentItemGraph.graph`)."""
        assert self.latent is not None  # only with modalities
        return self.latent.graph(*modality_buffers(self))

    def start_epoch(self, epoch, rng) -> None:
        if self.latent is not None:
            self.latent.start_epoch()

    # ---- representations -----------------------------------------------------------------------
    def propagate(self) -> tuple[Tensor, Tensor]:
        """(users [U, d], items [I, d]): LightGCN's layer means, items + normalised h."""
        users, items = super().propagate()
        if self.latent is None:
            return users, items
        graph = self.latent.for_step(*modality_buffers(self),
                                     self.training and torch.is_grad_enabled())
        h = self.latent.convolve(graph, self.item_emb.weight, self.config.item_layers)  # [I, d]
        return users, items + h  # items without edges: + 0

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        """Propagated afresh with autograd on; otherwise cached until a parameter changes."""
        if torch.is_grad_enabled():
            return self.propagate()
        key = (self.training, *((p._version, p.data_ptr(), p.device) for p in self.parameters()))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *self.propagate())
        return self._cache[1], self._cache[2]
