"""Scoring engines behind the service: exact user-conditioned scores, user-independent item
vectors, cold-start users and items.

:class:`KGEngine` serves the models built on :class:`~mmkgrec.models.kgcn.KGBackbone` (MKGCN,
KGCN). It keeps an extendable catalogue (:class:`Catalogue`): items registered while serving
get ids ``I..I+N-1`` right after the trained items, non-item entities follow (the "model space";
so items stay entities ``0..n_items-1`` as the aggregator expects), and every request scores the
whole catalogue in one tensor program, new items included, without retraining:

- a new item's ID embedding is the mean of its linked entities' ID embeddings; MKGCN fuses it
  with the item's own (train-standardised) modality features like any item; its sampled
  neighbours are its links, so the same user-conditioned KG aggregation gives its vector;
- a user (MKGCN) is its history items' fused vectors through the model's user aggregator,
  so feedback changes the user vector at once and new listeners need no retraining;
- user-independent item vectors (similar items, the faiss index) are the aggregated item vectors
  for the mean user of the training set, ``v_i(u_mean)``.

:class:`ScoreEngine` serves every other model through the model contract (``score_users`` for
known users); it has no user-independent vectors of its own, so its similar-item vectors are
the items' score profiles over a fixed sample of users, centred per user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mmkgrec.graph.kg import KnowledgeGraph
from mmkgrec.models.kgcn import KGBackbone
from mmkgrec.models.layers import modality_statistics
from mmkgrec.models.mkgcn import MKGCN, sample_history
from mmkgrec.train.run import Run

#: elements of the largest temporary the all-items path may create; above it, item blocks
AGGREGATION_BUDGET = 1 << 23
#: how many train standard deviations a registered item's standardised modality value may lie
#: from the train mean (more where the dataset's own items go further); see KGEngine.standardise
MAX_FEATURE_Z = 1e4


def _feature_bound(features: np.ndarray, mask: np.ndarray, mean: np.ndarray, std: np.ndarray,
                   block: int = 1 << 16) -> float:
    """MAX_FEATURE_Z, or the largest |z-score| of the dataset's own rows where that is more."""
    rows = np.flatnonzero(mask)
    observed = 0.0
    for start in range(0, len(rows), block):
        z = np.abs((np.asarray(features[rows[start:start + block]], dtype=np.float64) - mean) / std)
        z = z[np.isfinite(z)]
        if z.size:
            observed = max(observed, float(z.max()))
    return max(MAX_FEATURE_Z, observed)


@dataclass(frozen=True)
class NewItem:
    """An item registered while serving (storage entity id ``n_entities + j``)."""

    item_id: str
    name: str | None
    relations: np.ndarray  # [L] relation ids of its links
    entities: np.ndarray  # [L] storage entity ids of its links (>= n_entities: a new item)
    id_emb: Tensor  # [d] mean of the linked entities' ID embeddings
    features: tuple[Tensor, ...]  # per modality [d_k] standardised (zeros when absent)
    present: tuple[bool, ...]  # per modality


@dataclass(frozen=True)
class Catalogue:
    """An immutable snapshot of the servable catalogue (swapped whole when items are added)."""

    n_base: int  # trained items
    new: tuple[NewItem, ...]
    item_ids: np.ndarray  # [I'] original ids
    id_index: pd.Index  # original id -> item id
    base: Tensor | None  # [E', d] base (fused) vectors in model space
    neighbors: Tensor | None  # [E', K] model-space ids
    relations: Tensor | None  # [E', K]
    item_vectors: Tensor  # [I', d] user-independent
    item_unit: Tensor  # [I', d] the same, L2-normalised (cosine similarity)
    triples: np.ndarray  # [T', 3] model-space (head, relation, tail): the explanation graph
    n_entities: int  # E'
    n_relations: int  # relations of the dataset
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def graph(self) -> KnowledgeGraph:
        """The undirected KG of :attr:`triples`, built on first use."""
        if "graph" not in self._cache:  # a benign race: two threads may both build it once
            self._cache["graph"] = KnowledgeGraph.from_triples(
                self.triples, self.n_entities, max(1, self.n_relations), "undirected")
        return self._cache["graph"]


class KGEngine:
    """Exact scoring and cold start for MKGCN / KGCN (see the module docstring)."""

    def __init__(self, run: Run):
        model = run.model
        backbone: KGBackbone = model.backbone
        self.model, self.backbone, self.aggregator = model, backbone, backbone.aggregator
        self.is_mkgcn = isinstance(model, MKGCN)
        ds = run.dataset
        self.n_items0, self.n_entities0, self.n_relations = ds.n_items, ds.n_entities, ds.n_relations
        self.dim = backbone.entity_emb.embedding_dim
        self.k = backbone.neighbors.shape[1]
        self.padding_relation = backbone.graph.padding_relation
        self.seed = run.spec.seed
        self.modality_names: list[str] = list(getattr(model, "modality_names", [])) if self.is_mkgcn else []
        train_items = np.zeros(ds.n_items, dtype=bool)
        train_items[run.split.train_positives()["item"].to_numpy()] = True
        self.modality_stats = [modality_statistics(ds, name, train_items) for name in self.modality_names]
        self.modality_dims = [ds.modalities[name].shape[1] for name in self.modality_names]
        self.feature_bounds = [_feature_bound(ds.modalities[name], ds.modality_masks[name], *stats)
                               for name, stats in zip(self.modality_names, self.modality_stats)]
        self.triples0 = ds.triples
        with torch.inference_mode():
            self.id_emb0 = backbone.entity_emb.weight.detach()  # [E, d]
            self.relation_emb = backbone.relation_emb.weight.detach()  # [R + 1, d]
            if self.is_mkgcn:
                self.base0 = model.base_vectors(torch.arange(self.n_entities0))  # [E, d]
                indptr, items = run.split.user_history()  # TRAIN positives, as in evaluation
                table, valid = sample_history(indptr, items, np.arange(ds.n_users),
                                              model.config.eval_history_size,
                                              np.random.default_rng(self.seed))
                self.eval_history, self.eval_valid = table, valid  # [U, S]
                users = torch.cat([model.user_vectors(torch.as_tensor(table[s:s + 4096]),
                                                      torch.as_tensor(valid[s:s + 4096]), self.base0)
                                   for s in range(0, ds.n_users, 4096)])  # [U, d]
            else:
                self.base0 = self.id_emb0
                users = model.user_emb.weight.detach()  # [U, d]
            self.mean_user = users.mean(dim=0, keepdim=True)  # [1, d]
        self.neighbors0 = backbone.neighbors
        self.relations0 = backbone.neighbor_relations
        self._item_vectors0: Tensor | None = None

    # ---- catalogue ---------------------------------------------------------------------------
    def _to_model_space(self, ids: np.ndarray, n_new: int) -> np.ndarray:
        """Storage ids (entities 0..E-1, new items E..E+N-1) -> model-space ids."""
        i0, e0 = self.n_items0, self.n_entities0
        return np.where(ids < i0, ids, np.where(ids < e0, ids + n_new, ids - e0 + i0))

    def _sample_links(self, item: NewItem, j: int) -> tuple[np.ndarray, np.ndarray]:
        """K (storage entity, relation) neighbours of new item j, like ``sample_neighbors``."""
        rng = np.random.default_rng([self.seed, 7919, j])
        n = len(item.entities)
        if n == 0:
            return (np.full(self.k, self.n_entities0 + j, dtype=np.int64),
                    np.full(self.k, self.padding_relation, dtype=np.int64))
        pick = rng.choice(n, size=self.k, replace=n < self.k)
        return item.entities[pick].astype(np.int64), item.relations[pick].astype(np.int64)

    def build(self, new: tuple[NewItem, ...], item_ids0: np.ndarray) -> Catalogue:
        """The catalogue of the trained items plus ``new`` (one rebuild per registration)."""
        n_new, i0 = len(new), self.n_items0
        if n_new:
            with torch.inference_mode():
                base_new = self.fuse(torch.stack([x.id_emb for x in new]),
                                     [torch.stack([x.features[k] for x in new])
                                      for k in range(len(self.modality_names))],
                                     [torch.tensor([x.present[k] for x in new])
                                      for k in range(len(self.modality_names))])  # [N, d]
            base = torch.cat([self.base0[:i0], base_new, self.base0[i0:]])
            sampled = [self._sample_links(x, j) for j, x in enumerate(new)]
            nb_new = np.stack([s[0] for s in sampled])  # [N, K] storage ids
            rel_new = np.stack([s[1] for s in sampled])
            nb0 = self.neighbors0.cpu().numpy()
            nb = np.concatenate([nb0[:i0], nb_new, nb0[i0:]])
            rel0 = self.relations0.cpu().numpy()
            rel = np.concatenate([rel0[:i0], rel_new, rel0[i0:]])
            neighbors = torch.as_tensor(self._to_model_space(nb, n_new))
            relations = torch.as_tensor(rel)
            t0 = self.triples0
            heads = np.concatenate([self._to_model_space(t0[:, 0], n_new)]
                                   + [np.full(len(x.entities), i0 + j) for j, x in enumerate(new)])
            rels = np.concatenate([t0[:, 1]] + [x.relations for x in new])
            tails = np.concatenate([self._to_model_space(t0[:, 2], n_new)]
                                   + [self._to_model_space(x.entities, n_new) for x in new])
            triples = np.column_stack([heads, rels, tails]).astype(np.int64)
        else:
            base, neighbors, relations, triples = self.base0, self.neighbors0, self.relations0, self.triples0
        item_ids = np.concatenate([item_ids0, np.array([x.item_id for x in new], dtype=str)]).astype(str)
        partial = Catalogue(i0, new, item_ids, pd.Index(item_ids), base, neighbors, relations,
                            torch.zeros(0), torch.zeros(0), triples, self.n_entities0 + n_new,
                            self.n_relations)
        with torch.inference_mode():
            if self._item_vectors0 is None:
                self._item_vectors0 = self.aggregate(partial, self.mean_user, None)[0]  # [I, d]
            vectors = self._item_vectors0
            if n_new:
                fresh = torch.arange(i0, i0 + n_new).unsqueeze(0)  # [1, N]
                vectors = torch.cat([vectors, self.aggregate(partial, self.mean_user, fresh)[0]])
            unit = torch.nn.functional.normalize(vectors, dim=1)
        return Catalogue(i0, new, item_ids, pd.Index(item_ids), base, neighbors, relations,
                         vectors, unit, triples, self.n_entities0 + n_new, self.n_relations)

    def fuse(self, id_emb: Tensor, features: list[Tensor], present: list[Tensor]) -> Tensor:
        """Base vectors of items: [N, d] (ID embedding fused with modalities for MKGCN)."""
        if not self.modality_names:
            return id_emb
        return self.model.fusion(id_emb, features, present)

    def standardise(self, name: str, row: np.ndarray) -> tuple[np.ndarray, str | None]:
        """A raw modality row [d_k] z-scored with the train statistics, as the float32 row the
        model computes with, and what is wrong with it (None when it is usable): every value
        must be finite in float32 and at most ``feature_bounds[k]`` train standard deviations
        from the train mean (so that no registered item can overflow the fusion)."""
        k = self.modality_names.index(name)
        mean, std = self.modality_stats[k]
        with np.errstate(over="ignore", invalid="ignore"):
            z = (np.asarray(row, dtype=np.float64) - mean) / std
            scaled = z.astype(np.float32)
        if not np.isfinite(scaled).all():
            return scaled, "standardised, some values are not finite in float32"
        bound = self.feature_bounds[k]
        worst = float(np.abs(z).max()) if z.size else 0.0
        if worst > bound:
            return scaled, (f"a value lies {worst:.3g} train standard deviations from the train "
                            f"mean (at most {bound:.3g})")
        return scaled, None

    def item_problem(self, catalogue: Catalogue, item: int) -> str | None:
        """What makes catalogue item ``item`` unservable (a non-finite fused vector, item
        vector or score for the mean user), or None: checked before a registration is stored."""
        with torch.inference_mode():
            if not bool(torch.isfinite(catalogue.base[item]).all()):
                return "its fused base vector is not finite"
            if not bool(torch.isfinite(catalogue.item_vectors[item]).all()):
                return "its aggregated item vector is not finite"
            score = self.score_items(catalogue, self.mean_user, np.array([item], dtype=np.int64))
            if not bool(torch.isfinite(score).all()):
                return "its score for the mean user is not finite"
        return None

    def new_item(self, item_id: str, name: str | None, relations: np.ndarray, entities: np.ndarray,
                 features: dict[str, np.ndarray], catalogue: Catalogue) -> NewItem:
        """A new item from its links (relation ids, storage entity ids) and modality rows
        already standardised (:meth:`standardise`; float32)."""
        new_ids = entities[entities >= self.n_entities0] - self.n_entities0
        old_ids = entities[entities < self.n_entities0]
        rows = [self.id_emb0[torch.as_tensor(old_ids)]] + [catalogue.new[j].id_emb[None] for j in new_ids]
        linked = torch.cat(rows) if len(entities) else torch.zeros(1, self.dim)
        scaled, present = [], []
        for name_, width in zip(self.modality_names, self.modality_dims):
            row = features.get(name_)
            present.append(row is not None)
            scaled.append(torch.as_tensor(row, dtype=torch.float32) if row is not None
                          else torch.zeros(width))
        return NewItem(item_id, name, relations.astype(np.int64), entities.astype(np.int64),
                       linked.mean(dim=0), tuple(scaled), tuple(present))

    # ---- users -------------------------------------------------------------------------------
    @property
    def builds_users(self) -> bool:
        """Whether a user can be built from items (new listeners, feedback in the vector)."""
        return self.is_mkgcn

    def user_vector(self, catalogue: Catalogue, user: int | None, extra: np.ndarray) -> Tensor:
        """[1, d]: MKGCN from the user's evaluation history sample (known users) plus ``extra``
        items (model-space ids); KGCN: the user's ID embedding (``extra`` cannot change it)."""
        if not self.is_mkgcn:
            return self.model.user_emb.weight[user].detach().unsqueeze(0)
        history = extra.astype(np.int64)
        if user is not None:
            own = self.eval_history[user][self.eval_valid[user]]
            history = np.concatenate([own, history[~np.isin(history, own)]])
        valid = np.ones(len(history), dtype=bool)
        if not len(history):  # the learned empty-user vector
            history, valid = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=bool)
        return self.model.user_vectors(torch.as_tensor(history).unsqueeze(0),
                                       torch.as_tensor(valid).unsqueeze(0), catalogue.base)

    # ---- scoring -----------------------------------------------------------------------------
    def _lookup(self, catalogue: Catalogue) -> Callable[[Tensor], Tensor]:
        base = catalogue.base
        return lambda ids: base[ids]

    def aggregate(self, catalogue: Catalogue, users: Tensor, items: Tensor | None) -> Tensor:
        """User-conditioned item vectors. users [B, d]; items [B, C] model-space item ids, or None
        for the whole catalogue -> [B, C or I', d]."""
        agg, n_items = self.aggregator, catalogue.n_items
        if items is None:
            rows = catalogue.base.shape[0] if agg.n_hops > 1 else n_items
            if len(users) * rows * self.k * (self.dim + 1) <= AGGREGATION_BUDGET:
                return agg.forward_all_items(users, catalogue.base, self.relation_emb,
                                             catalogue.neighbors, catalogue.relations, n_items)
            items = torch.arange(n_items).expand(len(users), -1)  # large catalogue: item blocks
        batch, count = items.shape
        per_pair = sum(self.k ** h for h in range(agg.n_hops + 1)) * self.dim
        block = max(1, AGGREGATION_BUDGET // per_pair)
        flat_users = users.repeat_interleave(count, dim=0) if batch > 1 else users.expand(count, -1)
        flat_items = items.reshape(-1)
        parts = [agg.forward_pairs(flat_users[s:s + block], flat_items[s:s + block],
                                   self._lookup(catalogue), self.relation_emb,
                                   catalogue.neighbors, catalogue.relations)
                 for s in range(0, len(flat_items), block)]
        return torch.cat(parts).reshape(batch, count, self.dim)

    def score_all(self, catalogue: Catalogue, user_vec: Tensor) -> Tensor:
        """Logits of every catalogue item: user_vec [1, d] -> [I']."""
        vectors = self.aggregate(catalogue, user_vec, None)  # [1, I', d]
        return torch.einsum("bd,bid->bi", user_vec, vectors)[0]

    def score_items(self, catalogue: Catalogue, user_vec: Tensor, items: np.ndarray) -> Tensor:
        """Exact logits of the given items only: user_vec [1, d], items [C] -> [C]."""
        if not len(items):
            return torch.zeros(0)
        vectors = self.aggregate(catalogue, user_vec, torch.as_tensor(items).unsqueeze(0))  # [1, C, d]
        return torch.einsum("bd,bid->bi", user_vec, vectors)[0]

    # ---- explanations ------------------------------------------------------------------------
    def relation_weights(self, user_vec: Tensor) -> np.ndarray:
        """[R] the user's attention over the dataset's relations (softmax over the model's
        relations, padding excluded; with inverse relations, the forward ones are reported)."""
        n_graph = self.padding_relation  # relations of the model's graph
        weights = self.aggregator.relation_attention(user_vec, self.relation_emb[:n_graph])[0]
        return weights[: self.n_relations].numpy()

    def neighbourhood(self, catalogue: Catalogue, user_vec: Tensor, item: int) -> pd.DataFrame:
        """The item's sampled neighbours with the user's attention on each: columns entity,
        relation, weight (duplicates of a sample with replacement summed)."""
        rel = catalogue.relations[item].unsqueeze(0)  # [1, K]
        weights = self.aggregator.attention(user_vec, self.relation_emb, rel)[0]  # [K]
        frame = pd.DataFrame({"entity": catalogue.neighbors[item].numpy(),
                              "relation": rel[0].numpy(), "weight": weights.numpy()})
        frame = frame.groupby(["entity", "relation"], as_index=False)["weight"].sum()
        return frame.sort_values("weight", ascending=False, kind="stable")

    def modality_shares(self, catalogue: Catalogue, item: int) -> list[dict]:
        """Each input's share in the item's fused vector: ||part|| / sum of the parts' norms,
        for the ID embedding and each modality (absent ones 0). Empty without modalities."""
        if not self.modality_names:
            return []
        if item < self.n_items0:
            model, idx = self.model, torch.tensor([item])
            id_emb = self.id_emb0[idx]
            features = [getattr(model, f"features_{k}")[idx] for k in range(len(self.modality_names))]
            present = [getattr(model, f"present_{k}")[idx] for k in range(len(self.modality_names))]
        else:
            new = catalogue.new[item - self.n_items0]
            id_emb = new.id_emb[None]
            features = [f[None] for f in new.features]
            present = [torch.tensor([p]) for p in new.present]
        parts = self.model.fusion.contributions(id_emb, features, present)[0]  # [1 + K, d]
        norms = parts.norm(dim=1)
        shares = (norms / norms.sum().clamp(min=1e-12)).numpy()
        flags = [True] + [bool(p[0]) for p in present]
        return [{"modality": name, "share": round(float(s), 6), "present": flag}
                for name, s, flag in zip(["id"] + self.modality_names, shares, flags)]


class ScoreEngine:
    """Known users only, through ``prepare_ranking`` + ``score_users`` (LightGCN, BPR-MF, KGAT,
    MKGAT, MMGCN, popularity)."""

    builds_users = False
    modality_names: ClassVar[list[str]] = []

    def __init__(self, run: Run, profile_users: int = 256):
        self.model = run.model
        self.n_items0 = run.dataset.n_items
        self.triples0 = run.dataset.triples
        self.n_entities0, self.n_relations = run.dataset.n_entities, run.dataset.n_relations
        with torch.inference_mode():
            self.model.prepare_ranking()
            rng = np.random.default_rng(run.spec.seed)
            sample = np.sort(rng.choice(run.dataset.n_users, size=min(profile_users, run.dataset.n_users),
                                        replace=False))
            scores = self.model.score_users(torch.as_tensor(sample))  # [P, I]
            profiles = (scores - scores.mean(dim=1, keepdim=True)).T.contiguous()  # [I, P]
        self.profiles = profiles

    def build(self, new: tuple, item_ids0: np.ndarray) -> Catalogue:
        item_ids = np.asarray(item_ids0, dtype=str)
        return Catalogue(self.n_items0, (), item_ids, pd.Index(item_ids), None, None, None,
                         self.profiles, torch.nn.functional.normalize(self.profiles, dim=1),
                         self.triples0, self.n_entities0, self.n_relations)

    def score_known(self, user: int) -> Tensor:
        """[I] logits of a known user."""
        return self.model.score_users(torch.tensor([user]))[0]
