"""FREEDOM (Zhou & Shen, "A Tale of Two Graphs: Freezing and Denoising Graph Structures for
Multimodal Recommendation", ACM MM 2023), written from the paper (and checked against the
authors' reference implementation's choices).

- Frozen item-item graph (computed once, from the features z-scored with train-item statistics):
  per modality, the kNN graph of cosine similarity (each item WITH the modality links its
  ``knn_k`` most similar OTHER items having it, binary edges; items without it get no edge),
  normalised ``D^-1/2 A D^-1/2`` (``D`` = row sums); the graph is the weighted sum
  ``S = sum_m w_m S_m`` (``modality_weights``, normalised to sum 1; default equal weights; the
  reference code's two modalities use image 0.1, text 0.9). Stored as buffers (checkpointed).
- Denoised user-item graph: at the start of every epoch (:meth:`start_epoch`, the Trainer's
  generator) ``floor(M * (1 - edge_dropout))`` of the M TRAIN user-item edges are kept, drawn
  without replacement with probability proportional to ``1 / sqrt(d_u d_i)`` (degree-sensitive
  pruning: edges between popular nodes are dropped first), and re-normalised
  ``D^-1/2 A D^-1/2`` with the kept edges' degrees. Training propagates over the pruned graph;
  evaluation / ranking (``model.eval()``) over the FULL train graph.
- Representations: LightGCN (layer mean of ``n_layers`` linear propagations, users and item ID
  embeddings) plus ``h = S^L e`` over the item ID (ego) embeddings (``L = item_layers``):
  ``e_i = lightgcn_i + h_i``, ``score(u, i) = <e_u, e_i>``.
- Modality losses: each modality's features are projected to width ``dim`` (``W_m x + b_m``) and
  trained with a BPR loss against the (pruned-graph) user vectors,
  ``-ln sigmoid(<e_u, p_m(i+)> - <e_u, p_m(i-)>)``, weighted by ``modality_loss_weight``; it
  comes from :meth:`auxiliary_loss` on the model's own (user, positive, negative) batches (every
  train positive once per epoch, shuffled, a uniform negative that is not a train positive;
  ``modality_batch_size`` per step), over the pairs whose two items have the modality. The
  projections shape the user vectors only through this loss (the reference code's design); they
  do not enter the scores.
- The Trainer's BPR on ``<e_u, e_i>``; :meth:`regularization` is LightGCN's (ego embeddings of the
  batch); the paper's defaults train with no L2 (``configs/freedom.toml``: ``l2 = 0``).

With no modality (lastfm-kgcn, music-d, or ``modalities = []``) there is no item-item graph and
no modality loss: FREEDOM reduces to its CF backbone, LightGCN trained on the degree-pruned
graph (inference on the full one); with ``edge_dropout = 0`` as well, it is LightGCN.

Not implemented: fine-tuning the raw feature tables (the reference code makes them trainable;
here they are fixed buffers). Unlike the reference code, an item is not its own kNN neighbour.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmkgrec.data.csr import user_item_csr
from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.errors import ConfigError
from mmkgrec.graph import to_torch_sparse_adjacency
from mmkgrec.graph.negatives import NegativeSampler
from mmkgrec.models.lattice import knn_neighbors, normalized_values
from mmkgrec.models.layers import register_modalities
from mmkgrec.models.lightgcn import LightGCN, LightGCNConfig


class FREEDOMConfig(LightGCNConfig):
    dim: int = Field(64, ge=1)
    n_layers: int = Field(2, ge=0)  # LightGCN layers on the (pruned) user-item graph
    item_layers: int = Field(1, ge=1)  # convolutions on the frozen item-item graph
    knn_k: int = Field(10, ge=1)
    modality_weights: dict[str, float] | None = None  # name -> weight; None: equal weights
    edge_dropout: float = Field(0.8, ge=0, lt=1)  # fraction of train edges pruned per epoch
    modality_loss_weight: float = Field(1e-4, ge=0)  # lambda of the modality BPR losses
    modality_batch_size: int = Field(2048, ge=1)  # (user, pos, neg) triples per step
    modalities: list[str] | None = None  # None: every modality of the dataset; [] = none


def prune_edges(users: np.ndarray, items: np.ndarray, keep: int, rng: np.random.Generator
                ) -> np.ndarray:
    """Positions [keep] (ascending) of ``keep`` of the M edges (users, items [M]) drawn without
    replacement with P proportional to ``1 / sqrt(d_u d_i)`` (degrees in these edges).

    Sequential weighted draws without replacement equal keeping the ``keep`` smallest of
    ``Exp(1) / p`` (Efraimidis-Spirakis): one vectorised draw and one partition.
    """
    d_u = np.bincount(users)[users].astype(np.float64)  # [M]
    d_i = np.bincount(items)[items].astype(np.float64)  # [M]
    keys = rng.exponential(size=len(users)) * np.sqrt(d_u * d_i)  # Exp(1) / p
    if keep >= len(users):
        return np.arange(len(users))
    return np.sort(np.argpartition(keys, keep)[:keep]) if keep > 0 else np.zeros(0, np.int64)


class FREEDOM(LightGCN):
    """FREEDOM: LightGCN on a degree-pruned graph + a frozen modality kNN item-item graph."""

    name = "freedom"
    Config = FREEDOMConfig
    config: FREEDOMConfig
    ranking_caches: ClassVar[tuple[str, ...]] = ("_cache", "_step_users")  # reset by train()

    # registered buffers
    item_graph_index: Tensor
    item_graph_value: Tensor

    def __init__(self, dataset: MMKG, split: Split, config: FREEDOMConfig, seed: int = 0):
        super().__init__(dataset, split, config, seed)  # user_emb, item_emb, full adjacency
        register_modalities(self, dataset, split, config.modalities)  # features_k, present_k
        names = self.modality_names
        weights = self.modality_weights(names, config.modality_weights)
        generator = torch.Generator().manual_seed(seed + 1)
        self.projections = nn.ModuleList()
        rows, cols, values = [], [], []
        for k in range(len(names)):
            features, present = getattr(self, f"features_{k}"), getattr(self, f"present_{k}")
            linear = nn.Linear(features.shape[1], config.dim)  # p_m
            nn.init.xavier_uniform_(linear.weight, generator=generator)
            nn.init.zeros_(linear.bias)
            self.projections.append(linear)
            r, c = knn_neighbors(features, present, config.knn_k)  # [M_m] each, binary edges
            rows.append(r)
            cols.append(c)
            values.append(weights[k] * normalized_values(r, c, torch.ones(len(r)), self.n_items))
        if names:
            graph = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]),
                                            torch.cat(values), (self.n_items, self.n_items),
                                            check_invariants=False).coalesce()  # [I, I], summed
            index, value = graph.indices(), graph.values()
        else:
            index, value = torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0)
        # Buffers (checkpointed): the frozen graph S, exactly as trained with.
        self.register_buffer("item_graph_index", index)  # [2, M_S] coalesced
        self.register_buffer("item_graph_value", value)  # [M_S]
        train = split.train_positives()
        self.train_users = train["user"].to_numpy(np.int64)  # [M] TRAIN edges only
        self.train_items = train["item"].to_numpy(np.int64)  # [M]
        self.kept_edges: np.ndarray | None = None  # [M'] positions of this epoch's kept edges
        self.pruned_adjacency: Tensor | None = None  # sparse [U + I, U + I]
        self._graph_epoch = 0  # bumped at every pruning (a cache key)
        self._sampler = (NegativeSampler(split, "uniform", rng=seed)
                         if names and config.modality_loss_weight > 0 else None)
        self._triples: Tensor | None = None  # [3, M] (user, positive, negative) of this epoch
        self._cursor = 0
        self._step_users: Tensor | None = None  # this step's user vectors, for auxiliary_loss
        self.start_epoch(0, np.random.default_rng(seed))

    @staticmethod
    def modality_weights(names: list[str], weights: dict[str, float] | None) -> list[float]:
        """w_m per modality of ``names``, summing to 1 (equal when ``weights`` is None)."""
        if weights is None:
            return [1.0 / len(names)] * len(names) if names else []
        if set(weights) != set(names) or min(weights.values()) < 0 or not sum(weights.values()):
            raise ConfigError(f"modality_weights needs one non-negative weight (not all zero) "
                              f"per modality {names}, got {weights}")
        total = sum(weights.values())
        return [weights[name] / total for name in names]

    # ---- per-epoch state -----------------------------------------------------------------------
    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        """Prune the train graph anew; draw this epoch's modality-loss triples."""
        if self.config.edge_dropout > 0:
            keep = int(len(self.train_users) * (1.0 - self.config.edge_dropout))
            self.kept_edges = prune_edges(self.train_users, self.train_items, keep, rng)
            users, items = self.train_users[self.kept_edges], self.train_items[self.kept_edges]
            indptr, items = user_item_csr(users, items, self.n_users, self.n_items)
            self.pruned_adjacency = to_torch_sparse_adjacency(indptr, items, self.n_items,
                                                              layout="csr")
            self._graph_epoch += 1
        if self._sampler is not None:
            self._sampler.rng = rng
            triples = np.stack(self._sampler.epoch_triples())  # [3, M] shuffled
            self._triples = torch.as_tensor(triples, device=self.user_emb.weight.device)
            self._cursor = 0

    # ---- representations -----------------------------------------------------------------------
    def propagate(self) -> tuple[Tensor, Tensor]:
        """(users [U, d], items [I, d]): LightGCN over the pruned (training) or full graph,
        items + h with h = S^L e."""
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])  # [U + I, d]
        adjacency = self.adjacency
        if self.training and self.pruned_adjacency is not None:
            adjacency = self.pruned_adjacency = self.pruned_adjacency.to(ego.device)
        else:
            adjacency = self.adjacency = self.adjacency.to(ego.device)
        layer, total = ego, ego
        for _ in range(self.config.n_layers):
            layer = torch.sparse.mm(adjacency, layer)  # [U + I, d]
            total = total + layer
        final = total / (self.config.n_layers + 1)
        users, items = final[:self.n_users], final[self.n_users:]
        if self.modality_names:
            graph = torch.sparse_coo_tensor(self.item_graph_index, self.item_graph_value,
                                            (self.n_items, self.n_items), is_coalesced=True,
                                            check_invariants=False)  # [I, I]
            h = self.item_emb.weight  # [I, d] ego
            for _ in range(self.config.item_layers):
                h = torch.sparse.mm(graph, h)  # [I, d]
            items = items + h
        if self.training and torch.is_grad_enabled():
            self._step_users = users  # the same vectors for this step's modality losses
        return users, items

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        """Propagated afresh with autograd on; otherwise cached until a parameter or the graph
        (pruned in training mode, full in evaluation mode) changes."""
        if torch.is_grad_enabled():
            return self.propagate()
        key = (self.training, self._graph_epoch if self.training else 0,
               *((p._version, p.data_ptr(), p.device) for p in self.parameters()))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *self.propagate())
        return self._cache[1], self._cache[2]

    # ---- modality losses -----------------------------------------------------------------------
    def auxiliary_loss(self) -> Tensor | None:
        """``modality_loss_weight`` x sum over modalities of the BPR loss of the projected
        features on the next ``modality_batch_size`` triples; None without modalities or weight.

        The user vectors are the ones this step's forward propagated (the Trainer calls this
        right after it), else propagated afresh."""
        if self._triples is None:
            return None
        users_final = self._step_users if self._step_users is not None else self.propagate()[0]
        self._step_users = None
        self._triples = self._triples.to(users_final.device)  # [3, M]
        n = self._triples.shape[1]
        take = (self._cursor + torch.arange(self.config.modality_batch_size,
                                            device=self._triples.device)) % n
        self._cursor = (self._cursor + self.config.modality_batch_size) % n
        users, positives, negatives = self._triples[:, take]  # [B] each
        u = users_final[users]  # [B, d]
        total = u.new_zeros(())
        for k, projection in enumerate(self.projections):
            features, present = getattr(self, f"features_{k}"), getattr(self, f"present_{k}")
            both = (present[positives] & present[negatives]).to(u.dtype)  # [B]
            pos = projection(features[positives].float())  # [B, d]
            neg = projection(features[negatives].float())  # [B, d]
            loss = F.softplus(((neg - pos) * u).sum(-1))  # -ln sigmoid(<u,p+> - <u,p->), [B]
            total = total + (loss * both).sum() / both.sum().clamp_min(1.0)
        return self.config.modality_loss_weight * total

