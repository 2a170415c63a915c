"""MKGAT (Sun et al., "Multi-modal Knowledge Graphs for Recommender Systems", CIKM 2020).

KGAT-style propagation over the collaborative KG (:class:`~mmkgrec.models.kgat.CollaborativeKG`,
TRAIN positives only), with multi-modal items and MKGAT's attention layer:

- Entity encoder: an item's layer-0 vector fuses its ID embedding with its own modality vectors
  (z-scored with train-item statistics, a learned projection each;
  :class:`~mmkgrec.models.layers.MultiModalFusion`); absent modalities are skipped, so a masked
  modality changes nothing for that item. Users and other entities: ID embeddings. (The paper
  makes images / texts KG entities of their item; fusing them into the item is the same
  neighbourhood with one hop less.)
- Attention layer (:class:`MKGATLayer`): message ``m(h, r, t) = W1 [e_h; e_r; e_t]``, weight
  ``pi = softmax over h's edges of LeakyReLU(w2 . m)``, ``e_agg = sum pi m``; ``add``
  aggregation ``W3 e_h + e_agg`` or ``concat`` ``W4 [e_h; e_agg]``, then LeakyReLU (as KGAT's
  aggregators; the paper leaves it linear). Unlike KGAT, the attention is learned end to end
  and recomputed in every forward pass.
- As KGAT: message dropout, final vector = ``e^0`` concatenated with the L2-normalised layer
  outputs, ``score(u, i) = <e*_u, e*_i>``.
- KG embedding: TransE ``||e_h + e_r - e_t||^2`` on the layer-0 vectors (so the modality
  projections also learn from the KG), ``-ln sigmoid(g' - g)`` with corrupted tails, added to
  every training step through :meth:`auxiliary_loss` (summed per step; the paper alternates).
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.models.kgat import CKGConfig, CKGRecommender, neighbor_sum, segment_softmax
from mmkgrec.models.layers import Fusion, MultiModalFusion, register_modalities


class MKGATConfig(CKGConfig):
    aggregation: Literal["add", "concat"] = "concat"
    modalities: list[str] | None = None  # None: every modality of the dataset; [] = KG only
    fusion: Fusion = "residual"


class MKGATLayer(nn.Module):
    """MKGAT's attention layer over the CKG edges (heads, relations, tails), each [M].

    ``W1 [e_h; e_r; e_t] = A_h e_h + A_r e_r + A_t e_t``, so the per-edge messages, their
    attention logits and their weighted sums are computed from per-node / per-relation
    projections with gathers and sparse products: O(M d) per layer instead of O(M d^2).
    """

    def __init__(self, d_in: int, d_relation: int, d_out: int, aggregation: str = "concat"):
        super().__init__()
        self.d_in, self.d_relation = d_in, d_relation
        self.message = nn.Linear(2 * d_in + d_relation, d_out)  # W1
        self.score = nn.Linear(d_out, 1, bias=False)  # w2
        self.combine = nn.Linear(d_in + d_out if aggregation == "concat" else d_in, d_out)  # W4/W3
        self.aggregation = aggregation
        for linear in (self.message, self.score, self.combine):
            nn.init.xavier_uniform_(linear.weight)

    def _projections(self, x: Tensor, relations_emb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(A_h x + b [N, d_out], A_r e_r [R', d_out], A_t x [N, d_out])."""
        a_head, a_rel, a_tail = self.message.weight.split(
            [self.d_in, self.d_relation, self.d_in], dim=1)  # [d_out, *] each
        return x @ a_head.T + self.message.bias, relations_emb @ a_rel.T, x @ a_tail.T

    @staticmethod
    def _attention(score: Tensor, projections, heads, relations, tails) -> Tensor:
        """softmax over each head's edges of LeakyReLU(w2 . m(h, r, t)) -> [M]."""
        p_head, p_rel, p_tail = projections
        logits = (p_head @ score)[heads] + (p_rel @ score)[relations] + (p_tail @ score)[tails]
        return segment_softmax(F.leaky_relu(logits), heads, p_head.shape[0])  # [M]

    def attention(self, x: Tensor, relations_emb: Tensor, heads: Tensor, relations: Tensor,
                  tails: Tensor) -> Tensor:
        """The edge weights pi [M] of this layer for node vectors x [N, d_in]."""
        return self._attention(self.score.weight[0], self._projections(x, relations_emb),
                               heads, relations, tails)

    def forward(self, x: Tensor, relations_emb: Tensor, heads: Tensor, relations: Tensor,
                tails: Tensor) -> Tensor:
        """x [N, d_in], relations_emb [R', d_r] -> [N, d_out]."""
        p_head, p_rel, p_tail = projections = self._projections(x, relations_emb)
        pi = self._attention(self.score.weight[0], projections, heads, relations, tails)  # [M]
        n, n_rel = x.shape[0], p_rel.shape[0]
        # e_agg[h] = sum pi m(h,r,t) = (sum pi) p_head[h] + sum pi p_rel[r] + sum pi p_tail[t]
        per_relation = x.new_zeros(n * n_rel).index_add(
            0, heads * n_rel + relations, pi).view(n, n_rel)  # [N, R'] attention mass per relation
        agg = (per_relation.sum(1, keepdim=True) * p_head  # the mass is 1, or 0 without edges
               + per_relation @ p_rel
               + neighbor_sum(heads, tails, pi, p_tail))  # [N, d_out]
        if self.aggregation == "concat":  # W4 [e_h; e_agg]
            return F.leaky_relu(self.combine(torch.cat([x, agg], dim=1)))
        return F.leaky_relu(self.combine(x) + agg)  # W3 e_h + e_agg


class MKGAT(CKGRecommender):
    """MKGAT: multi-modal entity encoder + learned attention over the CKG + TransE."""

    name = "mkgat"
    Config = MKGATConfig
    config: MKGATConfig

    def __init__(self, dataset: MMKG, split: Split, config: MKGATConfig, seed: int = 0):
        super().__init__(dataset, split, config, seed)
        register_modalities(self, dataset, split, config.modalities)
        names = self.modality_names
        self.fusion = MultiModalFusion(
            config.dim, {n: dataset.modalities[n].shape[1] for n in names}, config.fusion)
        self.relation_emb = nn.Embedding(self.ckg.n_relations, config.dim)
        nn.init.xavier_uniform_(self.relation_emb.weight)
        dims = [config.dim, *config.layers]
        self.layers = nn.ModuleList(MKGATLayer(a, config.dim, b, config.aggregation)
                                    for a, b in itertools.pairwise(dims))

    def ego_rows(self, nodes: Tensor) -> Tensor:
        """Node ids [...] -> [..., d]: fused ID + modality vectors for items, ID otherwise."""
        flat = nodes.reshape(-1)  # [n]
        vectors = self.node_emb(flat)  # [n, d]
        if self.modality_names:
            is_item = flat < self.n_items
            items = flat[is_item]
            fused = self.fusion(
                vectors[is_item],
                [getattr(self, f"features_{k}")[items] for k in range(len(self.modality_names))],
                [getattr(self, f"present_{k}")[items] for k in range(len(self.modality_names))])
            vectors = vectors.index_put((is_item.nonzero().squeeze(1),), fused)
        return vectors.reshape(*nodes.shape, -1)

    def propagate_layer(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer(x, self.relation_emb.weight, self.edge_heads, self.edge_relations,
                     self.edge_tails)

    def triple_distance(self, relations, heads, tails):
        """TransE: ||e_h + e_r - e_t||^2."""
        r = self.relation_emb(relations)  # [B, d]
        distance = (heads + r).unsqueeze(1).sub(tails).pow(2).sum(-1)  # [B, n]
        return distance, heads.pow(2).sum(1) + r.pow(2).sum(1) + tails.pow(2).sum((1, 2))
