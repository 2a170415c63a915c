"""KGCN (Wang et al., "Knowledge Graph Convolutional Networks for Recommender Systems", WWW 2019).

A user ID embedding scores items whose vectors are aggregated from their sampled KG
neighbourhood with user-relation attention (:class:`~mmkgrec.models.layers.KGItemAggregator`).
No user aggregator and no modalities: the baseline that MKGCN's additions are measured against.

:class:`KGCatalogue` serves both KGCN and MKGCN (:class:`KGServing`): an extendable catalogue
(items registered without retraining, :class:`~mmkgrec.models.base.ItemsFromLinks`), exact
scoring of the whole catalogue or of candidates, user-independent item vectors and the
attention explanations. A new item's ID embedding is the mean of its linked entities' ID
embeddings (fused with its own standardised modality rows by MKGCN); its sampled neighbours are
its links, so the same user-conditioned KG aggregation gives its vector. User-independent item
vectors are the aggregated item vectors for the mean user of the training set,
``v_i(u_mean)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, cast

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.graph import KnowledgeGraph, sample_neighbors
from mmkgrec.models.base import ModelConfig, Recommender, model_space_ids
from mmkgrec.models.fused import (
    RankingPlan,
    build_plan,
    rank_all_items,
    ranking_backend,
    score_all_items,
    score_items,
)
from mmkgrec.models.layers import Activation, Aggregator, KGItemAggregator


class KGConfig(ModelConfig):
    """Hyper-parameters of the KG item aggregator, shared by KGCN and MKGCN."""

    dim: int = Field(16, ge=1)
    n_neighbors: int = Field(8, ge=1)
    n_hops: int = Field(1, ge=0)
    aggregator: Aggregator = "sum"
    inner_activation: Activation = "relu"
    kg_mode: Literal["undirected", "inverse", "directed"] = "undirected"
    resample_neighbors: bool = False  # False: sampled once, as KGCN does
    # "all": lambda/2 * ||all parameters||^2 each step (the KGCN paper's and code's regulariser);
    # "batch": only the embeddings the batch used (cheaper, weaker).
    l2_scope: Literal["all", "batch"] = "all"


class KGBackbone(nn.Module):
    """Entity / relation embeddings, the sampled neighbour tables and the item aggregator."""

    # registered buffers
    neighbors: Tensor
    neighbor_relations: Tensor

    def __init__(self, dataset: MMKG, config: KGConfig, rng: np.random.Generator):
        super().__init__()
        self.config = config
        self.n_items = dataset.n_items
        self.n_kg_relations = dataset.n_relations  # of the stored triples (no inverses)
        self.graph = KnowledgeGraph.from_triples(dataset.triples, dataset.n_entities,
                                                 dataset.n_relations, config.kg_mode)
        self.entity_emb = nn.Embedding(dataset.n_entities, config.dim)
        self.relation_emb = nn.Embedding(self.graph.n_relations + 1, config.dim)  # + padding
        nn.init.xavier_uniform_(self.entity_emb.weight)
        nn.init.xavier_uniform_(self.relation_emb.weight)
        self.register_buffer("neighbors", torch.zeros(0, dtype=torch.int32))  # [E, K]
        self.register_buffer("neighbor_relations", torch.zeros(0, dtype=torch.int32))  # [E, K]
        self.resample(rng)
        self.aggregator = KGItemAggregator(config.dim, config.n_hops, config.aggregator,
                                           config.inner_activation)

    def resample(self, rng: np.random.Generator) -> None:
        neighbors, relations = sample_neighbors(self.graph, self.config.n_neighbors, rng)
        device = self.entity_emb.weight.device
        # int32 storage halves the [E, K] tables; torch indexes with int32 directly.
        self.neighbors = torch.as_tensor(neighbors, dtype=torch.int32, device=device)
        self.neighbor_relations = torch.as_tensor(relations, dtype=torch.int32, device=device)

    def item_vectors(self, users: Tensor, items: Tensor, base_vectors) -> Tensor:
        """users [B, d], items [B] -> [B, d] (receptive-field tree; training)."""
        return self.aggregator.forward_pairs(users, items, base_vectors, self.relation_emb.weight,
                                             self.neighbors, self.neighbor_relations)

    def all_item_vectors(self, users: Tensor, base: Tensor, slots: Tensor | None = None) -> Tensor:
        """users [B, d], base [E, d] -> [B, I, d] (all items at once; ranking). ``slots``: the
        cached :meth:`ranking_slots` of the same ``base``."""
        return self.aggregator.forward_all_items(users, base, self.relation_emb.weight,
                                                 self.neighbors, self.neighbor_relations,
                                                 self.n_items, slots)

    def ranking_slots(self, base: Tensor) -> RankingPlan | Tensor | None:
        """What a ranking pass over ``base`` computes once (None with 0 hops): the fused
        :class:`~mmkgrec.models.fused.RankingPlan`, or with ``MMKGREC_KG_RANKING=reference``
        the reference path's first aggregation round (``first_round_slots``)."""
        if self.config.n_hops == 0:
            return None
        if ranking_backend() == "reference":
            return self.aggregator.first_round_slots(base, self.neighbors, self.n_items)
        return build_plan(self.aggregator, base, self.relation_emb.weight.detach(),
                          self.neighbors, self.neighbor_relations, self.n_items)

    def score_all_items(self, users: Tensor, base: Tensor,
                        cache: RankingPlan | Tensor | None = None) -> Tensor:
        """Logits of every item: users [B, d], base [E, d] -> [B, I]. ``cache``: the
        :meth:`ranking_slots` of the same ``base`` (None: computed here)."""
        if cache is None and self.config.n_hops > 0:
            cache = self.ranking_slots(base)
        if isinstance(cache, RankingPlan):
            return score_all_items(cache, users)
        v = self.all_item_vectors(users, base, cache)  # [B, I, d] (reference)
        return torch.einsum("bd,bid->bi", users, v)


def all_parameters_l2(module: nn.Module) -> Tensor:
    """0.5 * sum of squares of every parameter (TensorFlow's l2_loss, as KGCN uses)."""
    return cast(Tensor, 0.5 * sum(p.pow(2).sum() for p in module.parameters()))


#: elements of the largest temporary the all-items path may create; above it, item blocks
AGGREGATION_BUDGET = 1 << 23
#: elements of the cached first aggregation round a serving catalogue may hold (256 MiB of
#: float32); a larger catalogue recomputes it per request in item blocks
SLOT_CACHE_BUDGET = 1 << 26
#: how many train standard deviations a registered item's standardised modality value may lie
#: from the train mean (more where the dataset's own items go further)
MAX_FEATURE_Z = 1e4


class KGCatalogue:
    """Scoring of a KG model (:class:`KGServing`) over the trained items plus ``N`` new ones,
    in model space (:func:`~mmkgrec.models.base.model_space_ids`). Immutable; built by
    :meth:`KGServing.with_new_items`.

    Everything user-independent is computed when it is built and cached with it (one catalogue
    per catalogue version): the fused base table ``base``, the mean-user item vectors and what
    offline ranking caches in ``prepare_ranking``: the fused path's
    :class:`~mmkgrec.models.fused.RankingPlan` (``plan``), or with
    ``MMKGREC_KG_RANKING=reference`` the first aggregation round ``slots``
    (:meth:`~mmkgrec.models.layers.KGItemAggregator.first_round_slots`; a registration computes
    only the new rows of it). Neither above ``SLOT_CACHE_BUDGET``: item blocks then."""

    def __init__(self, model: KGServing, base: Tensor, neighbors: Tensor, relations: Tensor,
                 n_items: int, new_id_emb: Tensor, new_features: list[Tensor],
                 new_present: list[Tensor], mean_user: Tensor, item_vectors: Tensor | None,
                 slots: Tensor | None = None):
        self.model, self.backbone = model, model.backbone
        self.base, self.neighbors, self.relations = base, neighbors, relations  # [E', d], [E', K]
        self.n_items, self.n_base = n_items, model.n_items
        self.new_id_emb, self.new_features, self.new_present = new_id_emb, new_features, new_present
        self.mean_user = mean_user  # [1, d]
        self.modality_names = list(model.modality_names)
        self.dim = model.backbone.entity_emb.embedding_dim
        self.k = model.backbone.neighbors.shape[1]
        agg = self.backbone.aggregator
        rows = n_items if agg.n_hops == 1 else base.shape[0]
        fits = agg.n_hops > 0 and rows * self.k * (self.dim + 1) <= SLOT_CACHE_BUDGET
        self.plan: RankingPlan | None = None
        if fits and slots is None and ranking_backend() != "reference":
            # "fused" under every backend: the serving load figures were measured on it (one
            # user per request, one thread per worker); torch.compile per catalogue version
            # would cost more than it saves
            self.plan = build_plan(agg, base, self.backbone.relation_emb.weight.detach(),
                                   neighbors, relations, n_items, backend="fused")
        elif fits and slots is None:
            slots = agg.first_round_slots(base, neighbors, n_items)
        self.slots = slots  # [rows, K, d + 1] or None (fused plan, 0 hops, over the budget)
        self._item_vectors = (item_vectors if item_vectors is not None
                              else self.aggregate(mean_user, None)[0])  # [I', d]

    # ---- scoring -----------------------------------------------------------------------------
    def aggregate(self, users: Tensor, items: Tensor | None) -> Tensor:
        """User-conditioned item vectors. users [B, d]; items [B, C] model-space item ids, or None
        for the whole catalogue -> [B, C or I', d]."""
        agg, relation_emb = self.backbone.aggregator, self.backbone.relation_emb.weight
        if items is None:
            rows = self.base.shape[0] if agg.n_hops > 1 else self.n_items
            # temporaries per user: the slots themselves unless cached, else weights and outputs
            per_user = (rows * self.k * (self.dim + 1) if self.slots is None
                        else rows * (self.k + 2 * (self.dim + 1)))
            if len(users) * per_user <= AGGREGATION_BUDGET:
                return agg.forward_all_items(users, self.base, relation_emb, self.neighbors,
                                             self.relations, self.n_items, self.slots)
            items = torch.arange(self.n_items).expand(len(users), -1)  # large: item blocks
        batch, count = items.shape
        per_pair = sum(self.k ** h for h in range(agg.n_hops + 1)) * self.dim
        block = max(1, AGGREGATION_BUDGET // per_pair)
        flat_users = users.repeat_interleave(count, dim=0) if batch > 1 else users.expand(count, -1)
        flat_items = items.reshape(-1)
        base = self.base
        parts = [agg.forward_pairs(flat_users[s:s + block], flat_items[s:s + block],
                                   lambda ids: base[ids], relation_emb, self.neighbors,
                                   self.relations)
                 for s in range(0, len(flat_items), block)]
        return torch.cat(parts).reshape(batch, count, self.dim)

    def query_vectors(self, users: Tensor | None = None, history: Tensor | None = None,
                      valid: Tensor | None = None) -> Tensor:
        """[B, d]: known users [B] (KGCN: ID embedding; MKGCN: their ranking history), or users
        given by items (MKGCN), history / valid [B, S] model-space item ids."""
        if history is None:
            if users is None:
                raise ValueError("query_vectors needs users or a history")
            return self.model.known_queries(users, self.base)
        if valid is None:
            valid = torch.ones_like(history, dtype=torch.bool)
        return self.model.history_queries(history, valid, self.base)

    def score_queries(self, queries: Tensor, items: Tensor | None) -> Tensor:
        """Exact logits: queries [B, d], items [B, C] (None: every item) -> [B, C or I']."""
        if items is not None and items.shape[1] == 0:
            return queries.new_zeros(len(queries), 0)
        if items is None and self.plan is not None:
            return score_all_items(self.plan, queries)  # [B, I']
        if items is not None and self.plan is not None and len(self.plan.rounds) == 1:
            return score_items(self.plan, queries, items)  # [B, C]
        return torch.einsum("bd,bid->bi", queries, self.aggregate(queries, items))

    def prepare_ranking(self) -> None:
        """Nothing: the catalogue is built ready (its caches are computed on construction)."""

    def slot_rows(self, rows: Tensor) -> Tensor:
        """:attr:`slots` of the given model-space rows only, [len(rows), K, d + 1]: the rows
        and their neighbours as a small table, so a registration computes only its new rows."""
        n, nb = len(rows), self.neighbors[rows]  # [n, K]
        table = self.base[torch.cat([rows, nb.reshape(-1)])]  # [n + nK, d]
        local = torch.cat([torch.arange(n, n + n * self.k).reshape(n, self.k),
                           torch.zeros(n * self.k, self.k, dtype=torch.int64)])  # [n + nK, K]
        return self.backbone.aggregator.first_round_slots(table, local, n)[:n]

    def score_users(self, users: Tensor) -> Tensor:
        """users [B] -> logits [B, I'] (the model's score_users over the extended catalogue)."""
        return self.score_queries(self.query_vectors(users), None)

    def item_vectors(self) -> Tensor:
        return self._item_vectors

    # ---- new items ---------------------------------------------------------------------------
    def standardise_feature(self, name: str, row: np.ndarray) -> tuple[np.ndarray, str | None]:
        return self.model.standardise_feature(name, row)

    def with_new_items(self, links, features) -> KGCatalogue:
        return self.model.with_new_items(links, features)

    def item_problem(self, item: int) -> str | None:
        """What makes item ``item`` unservable (non-finite fused vector, item vector or score for
        the mean user), or None."""
        if not bool(torch.isfinite(self.base[item]).all()):
            return "its fused base vector is not finite"
        if not bool(torch.isfinite(self._item_vectors[item]).all()):
            return "its aggregated item vector is not finite"
        score = self.score_queries(self.mean_user, torch.tensor([[item]]))
        if not bool(torch.isfinite(score).all()):
            return "its score for the mean user is not finite"
        return None

    # ---- explanations ------------------------------------------------------------------------
    def relation_weights(self, queries: Tensor) -> np.ndarray:
        """[R] the user's attention over the dataset's relations (softmax over the model's
        relations, padding excluded; with inverse relations, the forward ones are reported)."""
        n_graph = self.backbone.graph.padding_relation  # relations of the model's graph
        relation_emb = self.backbone.relation_emb.weight
        weights = self.backbone.aggregator.relation_attention(queries, relation_emb[:n_graph])[0]
        return weights[: self.backbone.n_kg_relations].cpu().numpy()

    def neighbourhood(self, queries: Tensor, item: int) -> pd.DataFrame:
        """The item's sampled neighbours with the user's attention on each: columns entity,
        relation, weight (duplicates of a sample with replacement summed)."""
        rel = self.relations[item].unsqueeze(0).long()  # [1, K]
        weights = self.backbone.aggregator.attention(queries, self.backbone.relation_emb.weight,
                                                     rel)[0]  # [K]
        frame = pd.DataFrame({"entity": self.neighbors[item].cpu().numpy(),
                              "relation": rel[0].cpu().numpy(), "weight": weights.cpu().numpy()})
        frame = frame.groupby(["entity", "relation"], as_index=False)["weight"].sum()
        return frame.sort_values("weight", ascending=False, kind="stable")

    def modality_shares(self, item: int) -> list[dict]:
        """Each input's share in the item's fused vector: ||part|| / sum of the parts' norms,
        for the ID embedding and each modality (absent ones 0). Empty without modalities."""
        if not self.modality_names:
            return []
        if item < self.n_base:
            id_emb, features, present = self.model.item_inputs(torch.tensor([item]))
        else:
            j = item - self.n_base
            id_emb = self.new_id_emb[j:j + 1]
            features = [f[j:j + 1] for f in self.new_features]
            present = [p[j:j + 1] for p in self.new_present]
        fusion = cast(Any, self.model).fusion  # only models with modalities get here
        parts = fusion.contributions(id_emb, features, present)[0]  # [1 + K, d]
        norms = parts.norm(dim=1)
        shares = (norms / norms.sum().clamp(min=1e-12)).cpu().numpy()
        flags = [True] + [bool(p[0]) for p in present]
        return [{"modality": name, "share": round(float(s), 6), "present": flag}
                for name, s, flag in zip(["id", *self.modality_names], shares, flags)]


class HistoryKGCatalogue(KGCatalogue):
    """:class:`KGCatalogue` of a model whose users are built from items (MKGCN)."""

    def ranking_histories(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return cast(Any, self.model).ranking_histories(users)

    def score_histories(self, history: Tensor, valid: Tensor) -> Tensor:
        """history [B, S] model-space item ids, valid [B, S] -> logits [B, I']."""
        return self.score_queries(self.query_vectors(history=history, valid=valid), None)


class KGServing:
    """Serving capabilities of the models on :class:`KGBackbone` (mixed into KGCN and MKGCN):
    :class:`~mmkgrec.models.base.ItemVectors`, :class:`~mmkgrec.models.base.ItemsFromLinks`,
    :class:`~mmkgrec.models.base.AttentionExplanations`, through :class:`KGCatalogue`.

    Hooks a model overrides: :meth:`base_table` (the vectors aggregation starts from),
    :meth:`known_queries`, :meth:`history_queries`, :meth:`fuse_new`, :meth:`item_inputs`.
    """

    catalogue_type: ClassVar[type[KGCatalogue]] = KGCatalogue
    backbone: KGBackbone
    modality_names: list[str]
    modality_stats: list[tuple[np.ndarray, np.ndarray]]  # (mean, std) per modality
    _catalogue: KGCatalogue | None
    n_users: int
    n_items: int
    seed: int

    # ---- hooks -------------------------------------------------------------------------------
    def base_table(self) -> Tensor:
        """[E, d] the vectors aggregation starts from (KGCN: the ID embeddings)."""
        return self.backbone.entity_emb.weight.detach()

    def known_queries(self, users: Tensor, base: Tensor) -> Tensor:
        """[B, d] query vectors of known users [B]."""
        raise NotImplementedError

    def history_queries(self, history: Tensor, valid: Tensor, base: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} cannot build a user from items")

    def fuse_new(self, id_emb: Tensor, features: list[Tensor], present: list[Tensor]) -> Tensor:
        """Base vectors [N, d] of new items from ID embeddings [N, d] and modality rows."""
        return id_emb

    def item_inputs(self, items: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """(ID embeddings [N, d], modality rows [N, d_k], present [N]) of trained items."""
        return self.backbone.entity_emb.weight[items], [], []

    # ---- capabilities ------------------------------------------------------------------------
    @torch.no_grad()
    def base_catalogue(self) -> KGCatalogue:
        """The catalogue of the trained items (cached until ``train()``)."""
        catalogue = getattr(self, "_catalogue", None)
        if catalogue is None:
            base = self.base_table()  # [E, d]
            users = torch.arange(self.n_users, device=base.device)
            mean_user = torch.cat([self.known_queries(users[s:s + 4096], base)
                                   for s in range(0, self.n_users, 4096)]).mean(0, keepdim=True)
            catalogue = self._catalogue = self.catalogue_type(
                self, base, self.backbone.neighbors.long(), self.backbone.neighbor_relations.long(),
                self.n_items, base.new_zeros(0, base.shape[1]), *self._empty_features(),
                mean_user, None)
        return catalogue

    def _empty_features(self) -> tuple[list[Tensor], list[Tensor]]:
        widths = [getattr(self, f"features_{k}").shape[1] for k in range(len(self.modality_names))]
        return [torch.zeros(0, w) for w in widths], [torch.zeros(0, dtype=torch.bool) for _ in widths]

    def standardise_feature(self, name: str, row: np.ndarray) -> tuple[np.ndarray, str | None]:
        """A raw modality row [d_k] z-scored with the train statistics, as float32, and what is
        wrong with it: every value must be finite in float32 and at most ``MAX_FEATURE_Z`` (or
        the dataset's own largest |z|) train standard deviations from the train mean."""
        k = self.modality_names.index(name)
        mean, std = self.modality_stats[k]
        with np.errstate(over="ignore", invalid="ignore"):
            z = (np.asarray(row, dtype=np.float64) - mean) / std
            scaled = z.astype(np.float32)
        if not np.isfinite(scaled).all():
            return scaled, "standardised, some values are not finite in float32"
        bound = self._feature_bound(k)
        worst = float(np.abs(z).max()) if z.size else 0.0
        if worst > bound:
            return scaled, (f"a value lies {worst:.3g} train standard deviations from the train "
                            f"mean (at most {bound:.3g})")
        return scaled, None

    def _feature_bound(self, k: int) -> float:
        """MAX_FEATURE_Z, or the largest |z-score| of the dataset's own rows where that is more."""
        bounds = self.__dict__.setdefault("_feature_bounds", {})
        if k not in bounds:
            rows = getattr(self, f"features_{k}")[getattr(self, f"present_{k}")]  # [n, d_k] z
            observed = rows.float().abs().nan_to_num(0.0, 0.0, 0.0).max() if rows.numel() else 0.0
            bounds[k] = max(MAX_FEATURE_Z, float(observed))
        return bounds[k]

    @torch.no_grad()
    def with_new_items(self, links: Sequence[tuple[np.ndarray, np.ndarray]],
                       features: Sequence[dict[str, np.ndarray]]) -> KGCatalogue:
        """The trained items plus new ones (see :class:`~mmkgrec.models.base.ItemsFromLinks`)."""
        root = self.base_catalogue()
        n_new = len(links)
        if not n_new:
            return root
        i0, e0 = self.n_items, self.backbone.entity_emb.num_embeddings
        id_table = root.base.new_zeros(0, root.dim)
        id_emb0 = self.backbone.entity_emb.weight.detach()  # [E, d]
        rows: list[Tensor] = []
        for _, entities in links:  # each new item may link to the earlier new ones
            old, new = entities[entities < e0], entities[entities >= e0] - e0
            linked = torch.cat([id_emb0[torch.as_tensor(old, dtype=torch.int64)],
                                torch.stack(rows)[torch.as_tensor(new, dtype=torch.int64)]
                                if len(new) else id_table])
            rows.append(linked.mean(0) if len(linked) else id_emb0.new_zeros(root.dim))
        new_id = torch.stack(rows)  # [N, d]
        widths = [f.shape[1] for f in root.new_features]
        feats = [torch.stack([torch.as_tensor(x.get(name), dtype=torch.float32) if name in x
                              else torch.zeros(w) for x in features])
                 for name, w in zip(self.modality_names, widths)]  # [N, d_k] each
        present = [torch.tensor([name in x for x in features]) for name in self.modality_names]
        base_new = self.fuse_new(new_id, feats, present)  # [N, d]
        base = torch.cat([root.base[:i0], base_new, root.base[i0:]])  # model space
        sampled = [self._sample_links(relations, entities, j) for j, (relations, entities)
                   in enumerate(links)]
        nb = np.concatenate([self.backbone.neighbors[:i0].cpu().numpy(),
                             np.stack([x[0] for x in sampled]),
                             self.backbone.neighbors[i0:].cpu().numpy()])  # storage ids
        rel = np.concatenate([self.backbone.neighbor_relations[:i0].cpu().numpy(),
                              np.stack([x[1] for x in sampled]),
                              self.backbone.neighbor_relations[i0:].cpu().numpy()])
        neighbors = torch.as_tensor(model_space_ids(nb, i0, e0, n_new), dtype=torch.int64)
        slots = root.slots  # the first round of the trained rows is unchanged: new rows only
        if slots is not None:
            slots = torch.empty(0)  # placeholder until the new rows are computed below
        partial = self.catalogue_type(self, base, neighbors, torch.as_tensor(rel, dtype=torch.int64),
                                      i0 + n_new, new_id, feats, present, root.mean_user,
                                      root.item_vectors(), slots)  # placeholder item vectors
        if root.slots is not None:
            fresh_slots = partial.slot_rows(torch.arange(i0, i0 + n_new))  # [N, K, d+1]
            partial.slots = torch.cat([root.slots[:i0], fresh_slots, root.slots[i0:]])
        fresh = torch.arange(i0, i0 + n_new).unsqueeze(0)  # [1, N]
        vectors = torch.cat([root.item_vectors(), partial.aggregate(root.mean_user, fresh)[0]])
        partial._item_vectors = vectors  # [I + N, d]
        return partial

    def _sample_links(self, relations: np.ndarray, entities: np.ndarray, j: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        """K (storage entity, relation) neighbours of new item j, like ``sample_neighbors``."""
        k = self.backbone.neighbors.shape[1]
        rng = np.random.default_rng([self.seed, 7919, j])
        n = len(entities)
        if n == 0:
            return (np.full(k, self.backbone.entity_emb.num_embeddings + j, dtype=np.int64),
                    np.full(k, self.backbone.graph.padding_relation, dtype=np.int64))
        pick = rng.choice(n, size=k, replace=n < k)
        return entities[pick].astype(np.int64), relations[pick].astype(np.int64)

    def item_problem(self, item: int) -> str | None:
        return self.base_catalogue().item_problem(item)

    def item_vectors(self) -> Tensor:
        return self.base_catalogue().item_vectors()

    def query_vectors(self, users: Tensor | None = None, history: Tensor | None = None,
                      valid: Tensor | None = None) -> Tensor:
        return self.base_catalogue().query_vectors(users, history, valid)

    def score_queries(self, queries: Tensor, items: Tensor | None) -> Tensor:
        return self.base_catalogue().score_queries(queries, items)

    def relation_weights(self, queries: Tensor) -> np.ndarray:
        return self.base_catalogue().relation_weights(queries)

    def neighbourhood(self, queries: Tensor, item: int) -> pd.DataFrame:
        return self.base_catalogue().neighbourhood(queries, item)

    def modality_shares(self, item: int) -> list[dict]:
        return self.base_catalogue().modality_shares(item)


class KGCN(KGServing, Recommender):
    """KGCN: score(u, i) = <e_u, v_i(u)>, v_i(u) aggregated over i's KG neighbourhood."""

    name = "kgcn"
    Config = KGConfig
    config: KGConfig
    ranking_caches = ("_ranking_slots", "_catalogue")  # reset by train()

    def __init__(self, dataset: MMKG, split: Split, config: KGConfig, seed: int = 0):
        super().__init__(dataset, split, config)
        self.seed = seed
        self.modality_names: list[str] = []
        self._catalogue: KGCatalogue | None = None
        self.backbone = KGBackbone(dataset, config, np.random.default_rng(seed))
        self.user_emb = nn.Embedding(dataset.n_users, config.dim)
        self._ranking_slots: RankingPlan | Tensor | None = None  # see prepare_ranking
        nn.init.xavier_uniform_(self.user_emb.weight)

    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        if self.config.resample_neighbors and epoch > 0:
            self.backbone.resample(rng)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        u = self.user_emb(users)  # [B, d]
        v = self.backbone.item_vectors(u, items, self.backbone.entity_emb)  # [B, d]
        return (u * v).sum(-1)

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """``l2_scope`` all: half the squared norm of every parameter; batch: mean over the batch
        of ||e_u||^2 + ||e_i||^2, halved."""
        if self.config.l2_scope == "all":
            return all_parameters_l2(self)
        u, e = self.user_emb(users), self.backbone.entity_emb(items)
        return 0.5 * (u.pow(2).sum() + e.pow(2).sum()) / len(users)

    @torch.no_grad()
    def prepare_ranking(self) -> None:
        """Cache the user-independent first aggregation round for the ranking pass."""
        self._ranking_slots = self.backbone.ranking_slots(self.backbone.entity_emb.weight)

    def score_users(self, users: Tensor) -> Tensor:
        u = self.user_emb(users)  # [B, d]
        return self.backbone.score_all_items(u, self.backbone.entity_emb.weight,
                                             self._ranking_slots)  # [B, I]

    def rank_users(self, users: Tensor, k: int, exclude_indptr: Tensor, exclude_items: Tensor,
                   columns: Tensor | None = None) -> Tensor | None:
        if not isinstance(self._ranking_slots, RankingPlan):
            return None
        return rank_all_items(self._ranking_slots, self.user_emb(users), users, k,
                              exclude_indptr, exclude_items, columns)

    def known_queries(self, users: Tensor, base: Tensor) -> Tensor:
        return self.user_emb.weight[users].detach()  # [B, d]
