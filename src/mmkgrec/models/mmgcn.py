"""MMGCN (Wei et al., "MMGCN: Multi-modal Graph Convolution Network for Personalized
Recommendation of Micro-video", ACM MM 2019), written from the paper.

One graph convolution network per channel over the TRAIN user-item graph (users are nodes
``0..U-1``, items ``U..U+I-1``):

- A modality channel ``m``: users start from a learned preference embedding ``u_m``; items from
  their own features, z-scored with train-item statistics and projected by a learned linear map
  to width ``dim``. Items without the modality (mask False) start from a learned "missing"
  vector of that channel (``missing = "learned"``) or from zeros (``"zeros"``).
- The ID channel (``id_channel``): users and items start from the shared ID embeddings. With no
  modalities (a dataset without any, or ``modalities = []``) MMGCN is this channel alone.
- Layer ``l`` of channel ``m`` (``n_layers`` of them, width ``dim``):
  aggregation ``h = mean over graph neighbours of LeakyReLU(W1 x)`` (a row-normalised sparse
  matmul); combination ``x_hat = LeakyReLU(W3 x) + e_id`` (the shared ID embedding bridges the
  channels), then ``concat``: ``LeakyReLU(W2 [h; x_hat])`` or ``element``:
  ``LeakyReLU(W2 h + x_hat)``.
- Score (late fusion): ``scores`` (default) ``sum_m <u_m, i_m>``; ``vectors`` (the paper's
  ``u* = sum_m u_m``, ``i* = sum_m i_m``) ``<u*, i*>``.
- :meth:`regularization`: half the batch mean of the squared ID embeddings of the users and
  items and the users' preference embeddings.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.errors import ConfigError
from mmkgrec.models.base import ModelConfig, Recommender
from mmkgrec.models.layers import register_modalities


class MMGCNConfig(ModelConfig):
    dim: int = Field(64, ge=1)
    n_layers: int = Field(2, ge=1)
    modalities: list[str] | None = None  # None: every modality of the dataset; [] = ID only
    id_channel: bool = True
    combination: Literal["concat", "element"] = "concat"
    fusion: Literal["scores", "vectors"] = "scores"
    missing: Literal["learned", "zeros"] = "learned"


def mean_adjacency(split: Split, n_users: int, n_items: int) -> tuple[Tensor, Tensor]:
    """Row-normalised ``D^-1 A`` of the TRAIN user-item graph, users first, both ways.

    Returns:
        (indices [2, nnz] int64, sorted by (row, column), values [nnz] float32) of a coalesced
        sparse [U+I, U+I] matrix.
    """
    train = split.train_positives()
    users = train["user"].to_numpy()
    items = n_users + train["item"].to_numpy()
    rows, cols = np.concatenate([users, items]), np.concatenate([items, users])  # [2P]
    keys = np.unique(rows * (n_users + n_items) + cols)  # sorted, no repeats
    rows, cols = np.divmod(keys, n_users + n_items)
    degree = np.bincount(rows, minlength=n_users + n_items).astype(np.float32)  # [U+I]
    return torch.as_tensor(np.stack([rows, cols])), torch.as_tensor(1.0 / degree[rows])


class ChannelGCN(nn.Module):
    """The aggregation + combination layers of one channel: x [N, d] -> [N, d]."""

    def __init__(self, dim: int, n_layers: int, combination: str):
        super().__init__()
        self.combination = combination
        self.aggregate = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))  # W1
        self.own = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))  # W3
        width = 2 * dim if combination == "concat" else dim
        self.combine = nn.ModuleList(nn.Linear(width, dim) for _ in range(n_layers))  # W2
        for linear in (*self.aggregate, *self.own, *self.combine):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor, ids: Tensor, adjacency: Tensor) -> Tensor:
        """x [N, d] channel input, ids [N, d] shared ID embeddings, adjacency sparse [N, N]."""
        for aggregate, own, combine in zip(self.aggregate, self.own, self.combine):
            h = torch.sparse.mm(adjacency, F.leaky_relu(aggregate(x)))  # [N, d] neighbour mean
            x_hat = F.leaky_relu(own(x)) + ids  # [N, d]
            if self.combination == "concat":
                x = F.leaky_relu(combine(torch.cat([h, x_hat], dim=1)))
            else:
                x = F.leaky_relu(combine(h) + x_hat)
        return x


class MMGCN(Recommender):
    """MMGCN: per-modality user-item GCNs (plus an ID channel), late-fused scores."""

    name = "mmgcn"
    Config = MMGCNConfig
    config: MMGCNConfig
    ranking_caches = ("_ranking_cache",)  # reset by train()

    # registered buffers
    adjacency_indices: Tensor
    adjacency_values: Tensor

    def __init__(self, dataset: MMKG, split: Split, config: MMGCNConfig, seed: int = 0):
        super().__init__(dataset, split, config)
        register_modalities(self, dataset, split, config.modalities)
        names = self.modality_names
        if not names and not config.id_channel:
            raise ConfigError("MMGCN needs a channel: the dataset has no modalities (or "
                              "modalities = []) and id_channel is false")
        d = config.dim
        self.id_emb = nn.Embedding(self.n_users + self.n_items, d)  # [U+I, d] users first
        nn.init.xavier_uniform_(self.id_emb.weight)
        self.projections, self.missing = nn.ModuleList(), nn.ParameterList()
        self.preferences = nn.ParameterList()  # per modality [U, d]
        for k in range(len(names)):
            self.projections.append(nn.Linear(getattr(self, f"features_{k}").shape[1], d))
            self.missing.append(nn.Parameter(torch.zeros(d),
                                             requires_grad=config.missing == "learned"))
            preference = nn.init.xavier_uniform_(torch.empty(self.n_users, d))  # [U, d]
            self.preferences.append(nn.Parameter(preference))
        n_channels = len(names) + int(config.id_channel)
        self.channels = nn.ModuleList(ChannelGCN(d, config.n_layers, config.combination)
                                      for _ in range(n_channels))  # modalities, then ID
        indices, values = mean_adjacency(split, self.n_users, self.n_items)
        self.register_buffer("adjacency_indices", indices, persistent=False)  # [2, nnz]
        self.register_buffer("adjacency_values", values, persistent=False)  # [nnz]
        self._ranking_cache: tuple[Tensor, Tensor] | None = None

    def channel_inputs(self) -> list[Tensor]:
        """Layer-0 node vectors [U+I, d] of every channel (modalities first, then ID)."""
        inputs = []
        for k in range(len(self.modality_names)):
            projected = self.projections[k](getattr(self, f"features_{k}"))  # [I, d]
            present = getattr(self, f"present_{k}").unsqueeze(1)  # [I, 1]
            items = torch.where(present, projected, self.missing[k].expand_as(projected))
            inputs.append(torch.cat([self.preferences[k], items]))  # [U+I, d]
        if self.config.id_channel:
            inputs.append(self.id_emb.weight)
        return inputs

    def node_vectors(self) -> Tensor:
        """Final vectors of every channel: [C, U+I, d] (users first)."""
        ids = self.id_emb.weight  # [U+I, d]
        adjacency = torch.sparse_coo_tensor(self.adjacency_indices, self.adjacency_values,
                                            (len(ids), len(ids)), is_coalesced=True,
                                            check_invariants=False)
        return torch.stack([gcn(x, ids, adjacency)
                            for gcn, x in zip(self.channels, self.channel_inputs())])

    @property
    def n_modality_channels(self) -> int:
        return len(self.modality_names)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        x = self.node_vectors()  # [C, U+I, d]
        u, i = x[:, users], x[:, self.n_users + items]  # [C, B, d]
        if self.config.fusion == "vectors":
            return (u.sum(0) * i.sum(0)).sum(-1)
        return (u * i).sum((0, 2))  # sum over channels of <u_m, i_m>

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """Half the batch mean of ||e_id(u)||^2 + ||e_id(i)||^2 + sum_m ||u_m||^2."""
        total = self.id_emb(users).pow(2).sum() + self.id_emb(self.n_users + items).pow(2).sum()
        for preference in self.preferences:
            total = total + preference[users].pow(2).sum()
        return 0.5 * total / len(users)

    @torch.no_grad()
    def prepare_ranking(self) -> None:
        x = self.node_vectors()  # [C, U+I, d]
        users, items = x[:, :self.n_users], x[:, self.n_users:]
        if self.config.fusion == "vectors":
            self._ranking_cache = (users.sum(0), items.sum(0))  # [U, d], [I, d]
        else:  # concatenating the channels turns the sum of inner products into one
            self._ranking_cache = (torch.cat(list(users), dim=1), torch.cat(list(items), dim=1))

    def score_users(self, users: Tensor) -> Tensor:
        if self._ranking_cache is None:
            self.prepare_ranking()
        assert self._ranking_cache is not None  # set by prepare_ranking
        user_table, item_table = self._ranking_cache  # [U, D], [I, D]
        return user_table[users] @ item_table.T  # [B, I]

