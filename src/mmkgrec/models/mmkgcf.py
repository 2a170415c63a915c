"""MMKG-CF: mmkgrec's own extension of MKGCN that keeps the collaborative signal (not a
published model; docs/models.md says why it looks like this).

MKGCN builds a user from a sample of their items and an item from its KG neighbours, so the
user-item graph only enters through that sample; tuned LightGCN, which propagates over the whole
user-item graph, beats it on every dataset here. MMKG-CF keeps LightGCN's propagation and lets
the KG and the content in where validation says they help:

- **Collaborative KG propagation.** Nodes: users, then entities (item ``i`` is entity ``i``, so
  items are entity nodes). Edges: the TRAIN positives (user-item, weight 1) and the KG triples as
  undirected, relation-agnostic entity-entity edges (weight ``kg_weight``; 0 = no KG). ``Â =
  D^-1/2 A D^-1/2`` with weighted degrees; ``E_{k+1} = Â E_k``; final = layer mean (LightGCN).
  Items sharing an artist / genre entity are two hops apart, so the KG adds item-item paths.
- **KG item-item graph** (``kg_item_knn`` > 0; 0, the default: none): items that share KG
  entities joined directly, FREEDOM-style. Each item is its TF-IDF-weighted set of KG
  neighbours (IDF ``log(I / items linked to e)``, so a hub genre counts little); its
  ``kg_item_knn`` most cosine-similar items (similarity > 0) are its neighbours; the graph
  ``S_kg`` is symmetric-normalised and frozen, and its one-hop propagation of the item ego
  embeddings is added to the item vectors: ``v_i += (S_kg E^0_items)_i``.
  The **tag item-item graph** (``tag_item_knn`` > 0; 0, the default: none) is built the same
  way from the items' tag sets (``item_attrs["tags"]``, e.g. an artist's most given Last.FM
  tags, scoped like the content) and added the same way: ``v_i += (S_tag E^0_items)_i``.
  User-side KG facts (``MMKG.user_triples``, e.g. "u tagged artist a") are user-entity edges of
  weight ``user_kg_weight`` (0, the default: none); they shape the vectors, they are not
  positives (no loss term, not masked at ranking). User-user links (``MMKG.user_links``, e.g.
  friendships) are user-user edges of weight ``social_weight`` (0, the default: none), likewise
  context only: a user's vector then also mixes in their friends' (SocialLGN-like, on one graph).
- **Gated content.** Per modality ``m`` (z-scored with train-item statistics, masked where
  absent): a frozen cosine kNN item-item graph ``S_m`` (FREEDOM-style, ``knn`` neighbours among
  the items that have ``m``, symmetric-normalised) propagates the item ego embeddings, and a
  linear projection ``W_m x_m`` maps the features. Both enter the item vector through one learned
  scalar gate ``g_m`` initialised at ``gate_init`` (0: closed, so content starts with no effect
  and is only let in if training opens the gate):
  ``v_i = e_i + sum_m g_m ((S_m E^0_items)_i + W_m x_{m,i})``.
- **Latent content** (``content_route = "latent"``, in place of the gates): LATTICE's learned
  modality-aware item-item graph ``A`` (:class:`~mmkgrec.models.lattice.LatentItemGraph`: frozen
  kNN graphs mixed with kNN graphs of learned projections, ``lambda_coeff``), convolved
  ``item_layers`` times over the item ego embeddings and added normalised, as LATTICE does:
  ``v_i = e_i + h_i / ||h_i||``, ``h = A^L E^0_items``. Not gated: validation decides it by the
  route, and an ablation measures it (docs/results.md).
- **Users** are their propagated ID embedding. A new listener (no ID) is the mean of the final
  vectors of the items they like (:meth:`MMKGCF.score_histories`), as one propagation step would
  make them up to the degree normalisation.
- score(u, i) = <u, v_i>; BPR (or any Trainer loss) with L2 on the batch's ego embeddings.

Full ranking is user-independent: item vectors once per ranking pass, then one matmul per user
block (the LightGCN cost).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from scipy import sparse
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.models.base import ModelConfig, Recommender
from mmkgrec.models.bprmf import embedding_l2, xavier_embedding
from mmkgrec.models.lattice import LatentItemGraph
from mmkgrec.models.layers import modality_buffers, register_modalities

KNN_BLOCK = 1024  # rows of one [block, n_items] similarity block when building kNN graphs


class MMKGCFConfig(ModelConfig):
    dim: int = Field(64, ge=1)
    n_layers: int = Field(3, ge=0)  # propagation layers over the collaborative KG
    kg_weight: float = Field(1.0, ge=0.0)  # weight of a KG edge against a play (0: no KG)
    user_kg_weight: float = Field(0.0, ge=0.0)  # weight of a user-side KG fact (0: none)
    social_weight: float = Field(0.0, ge=0.0)  # weight of a user-user link (0: none)
    modalities: list[str] | None = None  # None: every modality of the dataset; []: none
    knn: int = Field(10, ge=0)  # neighbours of the modality item-item graphs (0: none)
    gate_init: float = 0.0  # initial value of each modality gate (0: closed)
    learn_gates: bool = True  # False: gates stay at gate_init (gate_init 0: content is off)
    content_route: Literal["gated", "latent"] = "gated"  # how content enters (module docstring)
    item_layers: int = Field(1, ge=1)  # latent route: convolutions on the item-item graph
    lambda_coeff: float = Field(0.9, ge=0, le=1)  # latent route: weight of the frozen kNN graph
    feat_dim: int = Field(64, ge=1)  # latent route: width of the learned modality projections
    kg_item_knn: int = Field(0, ge=0)  # neighbours in the KG item-item graph (0: none)
    tag_item_knn: int = Field(0, ge=0)  # neighbours in the tag item-item graph (0: none)


def symmetric_normalised(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, size: int
                         ) -> Tensor:
    """``D^-1/2 A D^-1/2`` of an undirected weighted graph given once per edge: float32 sparse
    CSR ``[size, size]`` with both directions; nodes without edges get no entries."""
    rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])  # [2 E]
    weights = np.concatenate([weights, weights]).astype(np.float64)
    degree = np.bincount(rows, weights=weights, minlength=size)  # [size]
    scale = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    values = weights * scale[rows] * scale[cols]
    adjacency = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, cols])),
                                        torch.from_numpy(values).float(), (size, size),
                                        check_invariants=False).coalesce()  # in range by construction
    with warnings.catch_warnings():  # torch's "sparse CSR is in beta" notice
        warnings.simplefilter("ignore", UserWarning)
        return adjacency.to_sparse_csr()


def knn_edges(features: Tensor, present: Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine kNN among the present rows: (rows [E], cols [E]) with exactly ``min(k, n-1)``
    neighbours per present row (self excluded), none for absent rows. Blocks of rows, no loop
    per item."""
    n = features.shape[0]
    unit = torch.nn.functional.normalize(features.float(), dim=1)  # [I, d]
    present_ids = torch.nonzero(present).squeeze(1)  # [P]
    k = min(k, len(present_ids) - 1)
    if k < 1:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    blocked = torch.zeros(n, dtype=torch.bool)
    blocked[~present] = True
    rows, cols = [], []
    for start in range(0, len(present_ids), KNN_BLOCK):  # blocks of items, not items
        block = present_ids[start:start + KNN_BLOCK]  # [b]
        sims = unit[block] @ unit.T  # [b, I]
        sims[:, blocked] = -float("inf")
        sims[torch.arange(len(block)), block] = -float("inf")  # no self loop
        top = sims.topk(k, dim=1).indices  # [b, k]
        rows.append(block.repeat_interleave(k))
        cols.append(top.reshape(-1))
    return torch.cat(rows).numpy(), torch.cat(cols).numpy()


def kg_item_edges(triples: np.ndarray, n_items: int, n_entities: int, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Items' ``k`` nearest items by shared KG entities (:func:`shared_link_edges` over the
    item-entity links of the triples, either direction, relation-agnostic)."""
    if k < 1 or not len(triples):
        return (np.zeros(0, dtype=np.int64),) * 2
    ends = np.concatenate([triples[:, [0, 2]], triples[:, [2, 0]]])  # [2T, 2] (from, to)
    links = ends[(ends[:, 0] < n_items) & (ends[:, 0] != ends[:, 1])]  # [L, 2] (item, entity)
    return shared_link_edges(links, n_items, n_entities, k)


def shared_link_edges(links: np.ndarray, n_items: int, n_targets: int, k: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Items' ``k`` nearest items by shared link targets (KG entities, tags): (rows [E],
    cols [E]), at most ``k`` per item, only neighbours of cosine similarity > 0 (self
    excluded). An item is the TF-IDF vector of its distinct targets, IDF ``log(n_items / df)``;
    targets linked to a single item carry no similarity and are dropped. Blocks of rows through
    sparse products, no loop per item.

    Args:
        links: [L, 2] int (item < n_items, target < n_targets); duplicates count once.
    """
    empty = (np.zeros(0, dtype=np.int64),) * 2
    if k < 1 or not len(links):
        return empty
    links = np.unique(links, axis=0)  # [L, 2]
    df = np.bincount(links[:, 1], minlength=n_targets)  # [n_targets] items linked to each
    links = links[df[links[:, 1]] > 1]
    if not len(links):
        return empty
    idf = np.log(n_items / df[links[:, 1]])  # [L]
    incidence = sparse.csr_matrix((idf, (links[:, 0], links[:, 1])), shape=(n_items, n_targets))
    norms = np.sqrt(np.asarray(incidence.multiply(incidence).sum(1)).ravel())  # [I]
    unit = sparse.diags(np.where(norms > 0, 1 / np.maximum(norms, 1e-12), 0.0)) @ incidence
    k = min(k, n_items - 1)
    rows, cols = [], []
    for start in range(0, n_items, KNN_BLOCK):  # blocks of items, not items
        block = np.arange(start, min(start + KNN_BLOCK, n_items))  # [b]
        sims = torch.from_numpy((unit[block] @ unit.T).toarray())  # [b, I] cosine
        sims[torch.arange(len(block)), torch.from_numpy(block)] = 0.0  # no self loop
        values, top = sims.topk(k, dim=1)  # [b, k]
        keep = values > 0
        rows.append(torch.from_numpy(block).unsqueeze(1).expand(-1, k)[keep])
        cols.append(top[keep])
    return torch.cat(rows).numpy(), torch.cat(cols).numpy()


class MMKGCF(Recommender):
    """LightGCN over the collaborative KG plus gated modality graphs and projections."""

    name = "mmkgcf"
    Config = MMKGCFConfig
    config: MMKGCFConfig
    ranking_caches = ("_cache",)  # reset by train()

    def __init__(self, dataset: MMKG, split: Split, config: MMKGCFConfig, seed: int = 0):
        super().__init__(dataset, split, config)
        generator = torch.Generator().manual_seed(seed)
        self.n_entities = dataset.n_entities
        self.user_emb = xavier_embedding(self.n_users, config.dim, generator)  # [U, d] ego
        self.entity_emb = xavier_embedding(self.n_entities, config.dim, generator)  # [E, d] ego
        train = split.train_positives()
        users, items = train["user"].to_numpy(), train["item"].to_numpy()  # [nnz]
        rows, cols, weights = [users], [self.n_users + items], [np.ones(len(users))]
        if config.kg_weight > 0 and len(dataset.triples):
            pairs = np.unique(np.sort(dataset.triples[:, [0, 2]], axis=1), axis=0)  # [T, 2]
            pairs = pairs[pairs[:, 0] != pairs[:, 1]]  # relation-agnostic, no self loops
            rows.append(self.n_users + pairs[:, 0])
            cols.append(self.n_users + pairs[:, 1])
            weights.append(np.full(len(pairs), config.kg_weight))
        if config.user_kg_weight > 0 and len(dataset.user_triples):
            facts = np.unique(dataset.user_triples[:, [0, 2]], axis=0)  # [F, 2] (user, entity)
            rows.append(facts[:, 0])
            cols.append(self.n_users + facts[:, 1])
            weights.append(np.full(len(facts), config.user_kg_weight))
        if config.social_weight > 0 and len(dataset.user_links):
            rows.append(dataset.user_links[:, 0])  # [S] each link once; made undirected below
            cols.append(dataset.user_links[:, 1])
            weights.append(np.full(len(dataset.user_links), config.social_weight))
        # Not buffers: derived from the split and the KG; safetensors cannot store sparse tensors.
        self.adjacency = symmetric_normalised(np.concatenate(rows), np.concatenate(cols),
                                              np.concatenate(weights),
                                              self.n_users + self.n_entities)
        kg_rows, kg_cols = kg_item_edges(dataset.triples, self.n_items, self.n_entities,
                                         config.kg_item_knn)
        self.kg_item_graph = (symmetric_normalised(kg_rows, kg_cols, np.ones(len(kg_rows)),
                                                   self.n_items)
                              if config.kg_item_knn else None)  # [I, I] or None
        self.tag_item_graph: Tensor | None = None  # [I, I]
        if config.tag_item_knn:
            tag_links = dataset.item_tag_links  # [L, 2] (item, tag id), ids dense
            n_tags = int(tag_links[:, 1].max()) + 1 if len(tag_links) else 0
            tag_rows, tag_cols = shared_link_edges(tag_links, self.n_items, n_tags,
                                                   config.tag_item_knn)
            self.tag_item_graph = symmetric_normalised(tag_rows, tag_cols,
                                                       np.ones(len(tag_rows)), self.n_items)
        register_modalities(self, dataset, split, config.modalities)
        self.item_graphs: list[Tensor] = []
        self.projections = nn.ModuleList()
        self.gates: nn.Parameter | None = None
        self.latent: LatentItemGraph | None = None
        if config.content_route == "latent":
            if self.modality_names:
                self.latent = LatentItemGraph(
                    *modality_buffers(self), self.n_items, config.knn,
                    config.lambda_coeff, config.feat_dim, generator)
        else:
            for k, _ in enumerate(self.modality_names):
                features, present = getattr(self, f"features_{k}"), getattr(self, f"present_{k}")
                r, c = knn_edges(features, present, config.knn) if config.knn else (
                    np.zeros(0, dtype=np.int64),) * 2
                self.item_graphs.append(symmetric_normalised(r, c, np.ones(len(r)), self.n_items))
                projection = nn.Linear(features.shape[1], config.dim, bias=False)
                nn.init.xavier_uniform_(projection.weight, generator=generator)
                self.projections.append(projection)
            self.gates = nn.Parameter(torch.full((len(self.modality_names),), config.gate_init),
                                      requires_grad=config.learn_gates)  # [M]
        self._cache: tuple[tuple, Tensor, Tensor] | None = None

    # ---- vectors -------------------------------------------------------------------------------
    def propagate(self) -> tuple[Tensor, Tensor]:
        """(users [U, d], items [I, d]): layer means over the collaborative KG, plus the
        KG item-item term and the content term for items (:meth:`content`)."""
        ego = torch.cat([self.user_emb.weight, self.entity_emb.weight])  # [U + E, d]
        if self.adjacency.device != ego.device:
            self.adjacency = self.adjacency.to(ego.device)
            self.item_graphs = [g.to(ego.device) for g in self.item_graphs]
            if self.kg_item_graph is not None:
                self.kg_item_graph = self.kg_item_graph.to(ego.device)
            if self.tag_item_graph is not None:
                self.tag_item_graph = self.tag_item_graph.to(ego.device)
        layer, total = ego, ego
        for _ in range(self.config.n_layers):
            layer = torch.sparse.mm(self.adjacency, layer)  # [U + E, d]
            total = total + layer
        final = total / (self.config.n_layers + 1)
        users, items = final[:self.n_users], final[self.n_users:self.n_users + self.n_items]
        item_ego = self.entity_emb.weight[:self.n_items]  # [I, d]
        if self.kg_item_graph is not None:
            items = items + torch.sparse.mm(self.kg_item_graph, item_ego)  # [I, d]
        if self.tag_item_graph is not None:
            items = items + torch.sparse.mm(self.tag_item_graph, item_ego)  # [I, d]
        return users, items + self.content(item_ego)

    def start_epoch(self, epoch, rng) -> None:
        if self.latent is not None:
            self.latent.start_epoch()  # the latent graph is rebuilt at the epoch's first step

    def content(self, item_ego: Tensor) -> Tensor:
        """[I, d]: the content term of the item vectors; zeros without modalities. Gated:
        sum_m g_m ((S_m E^0)_i + W_m x_{m,i}); latent: h_i / ||h_i||."""
        if self.latent is not None:
            latent_graph = self.latent.for_step(*modality_buffers(self),
                                                self.training and torch.is_grad_enabled())
            return self.latent.convolve(latent_graph, item_ego, self.config.item_layers)
        total = torch.zeros_like(item_ego)
        if self.gates is None:
            return total
        for k, (graph, projection) in enumerate(zip(self.item_graphs, self.projections)):
            features = getattr(self, f"features_{k}").float()  # [I, d_k], absent rows zero
            term = torch.sparse.mm(graph, item_ego) + projection(features)  # [I, d]
            total = total + self.gates[k] * term
        return total

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        """Propagated afresh under autograd (training), else cached until a parameter changes."""
        if torch.is_grad_enabled():
            return self.propagate()
        key = (self.training, *((p._version, p.data_ptr(), p.device) for p in self.parameters()))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *self.propagate())
        return self._cache[1], self._cache[2]

    # ---- the contract --------------------------------------------------------------------------
    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        user_final, item_final = self.final_embeddings()
        return (user_final[users] * item_final[items]).sum(-1)  # [B]

    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor:
        user_final, item_final = self.final_embeddings()
        return user_final[users] @ item_final[items].T  # [B, M]

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """Mean over the batch of the squared EGO embeddings, halved (as LightGCN)."""
        return embedding_l2(self.user_emb(users), self.entity_emb(items))

    @torch.no_grad()
    def prepare_ranking(self) -> None:
        self.final_embeddings()

    def score_users(self, users: Tensor) -> Tensor:
        user_final, item_final = self.final_embeddings()
        return user_final[users] @ item_final.T  # [B, I]

    def score_histories(self, history: Tensor, valid: Tensor) -> Tensor:
        """New listeners given by liked items: history [B, S] item ids, valid [B, S] ->
        logits [B, I]; a listener is the mean final vector of their valid items."""
        _, item_final = self.final_embeddings()
        weights = valid.float() / valid.float().sum(1, keepdim=True).clamp(min=1)  # [B, S]
        users = torch.einsum("bs,bsd->bd", weights, item_final[history])  # [B, d]
        return users @ item_final.T

