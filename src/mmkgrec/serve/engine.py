"""The served model behind the service, through the capabilities it declares
(:mod:`mmkgrec.models.base`: :class:`~mmkgrec.models.base.ItemsFromLinks`,
:class:`~mmkgrec.models.base.ItemVectors`, ...): nothing here reads a model's attributes or
checks its class.

:class:`Catalogue` is an immutable snapshot of what can be recommended: the trained items, then
the items registered while serving (ids ``I..I+N-1``); its ``scorer`` is the model itself, or
for a model that scores new items from their links and features (``ItemsFromLinks``) the
extended catalogue ``model.with_new_items(...)``, which ranks all ``I + N`` items in one tensor
program. Non-item entities follow the new items in "model space"
(:func:`~mmkgrec.models.base.model_space_ids`), so items stay entities ``0..I'-1``.

User-independent item vectors (similar items, the faiss index) are the model's own
(``ItemVectors``: for MKGCN / KGCN the aggregated item vectors for the mean training user);
a model without them gets its items' score profiles over a fixed sample of users, centred per
user (similar items only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mmkgrec.graph.kg import KnowledgeGraph
from mmkgrec.models.base import ItemsFromLinks, ItemVectors, Scorer, model_space_ids
from mmkgrec.train.run import Run

#: floats of the per-catalogue table of known users' query vectors (:meth:`Catalogue.known_queries`)
QUERY_CACHE_BUDGET = 1 << 26


@dataclass(frozen=True)
class NewItem:
    """An item registered while serving (storage entity id ``n_entities + j``)."""

    item_id: str
    name: str | None
    relations: np.ndarray  # [L] relation ids of its links
    entities: np.ndarray  # [L] storage entity ids of its links (>= n_entities: a new item)
    features: dict[str, np.ndarray]  # modality -> standardised float32 row [d_k] (present ones)


@dataclass(frozen=True)
class Catalogue:
    """An immutable snapshot of the servable catalogue (swapped whole when items are added)."""

    n_base: int  # trained items
    new: tuple[NewItem, ...]
    item_ids: np.ndarray  # [I'] original ids
    id_index: pd.Index  # original id -> item id
    scorer: Scorer  # ranks the I' items
    item_vectors: Tensor  # [I', d] user-independent
    item_unit: Tensor  # [I', d] the same, L2-normalised (cosine similarity)
    triples: np.ndarray  # [T', 3] model-space (head, relation, tail): the explanation graph
    n_entities: int  # E'
    n_relations: int  # relations of the dataset
    n_users: int  # users of the dataset (known users)
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def can(self, capability: type) -> bool:
        """Whether :attr:`scorer` has ``capability`` (a runtime-checkable protocol of
        :mod:`mmkgrec.models.base`), checked once per catalogue: the check walks the protocol's
        members, tens of microseconds a request otherwise."""
        key = ("can", capability)
        if key not in self._cache:
            self._cache[key] = isinstance(self.scorer, capability)
        return self._cache[key]

    def known_queries(self, users: slice) -> Tensor:
        """[B, d] query vectors of dataset users ``users`` (a slice of user indices) built from
        their training data (:class:`ItemVectors` scorers only). The table of all users is
        computed once per catalogue, in blocks, when it fits :data:`QUERY_CACHE_BUDGET`;
        otherwise each call computes its own rows."""
        scorer = cast(ItemVectors, self.scorer)
        table = self._cache.get("queries")
        if table is None and self.n_users * self.item_vectors.shape[1] <= QUERY_CACHE_BUDGET:
            with torch.inference_mode():  # a benign race: two threads may both build it once
                table = torch.cat([scorer.query_vectors(users=torch.arange(s, min(s + 4096, self.n_users)))
                                   for s in range(0, self.n_users, 4096)])  # [U, d]
            self._cache["queries"] = table
        if table is not None:
            return table[users]
        return scorer.query_vectors(users=torch.arange(self.n_users)[users])

    def graph(self) -> KnowledgeGraph:
        """The undirected KG of :attr:`triples`, built on first use."""
        if "graph" not in self._cache:  # a benign race: two threads may both build it once
            self._cache["graph"] = KnowledgeGraph.from_triples(
                self.triples, self.n_entities, max(1, self.n_relations), "undirected")
        return self._cache["graph"]


class Engine:
    """Builds catalogues of a run's model (see the module docstring)."""

    def __init__(self, run: Run, profile_users: int = 256):
        model = run.model
        ds = run.dataset
        self.n_items0, self.n_entities0, self.n_relations = ds.n_items, ds.n_entities, ds.n_relations
        self.n_users = ds.n_users
        self.triples0 = ds.triples
        self.new_items = isinstance(model, ItemsFromLinks)
        #: the model's new-item capability (None: it scores only the items it was trained on)
        self.links = cast(ItemsFromLinks, model) if self.new_items else None
        self.modality_names: list[str] = (list(self.links.modality_names)
                                          if self.links is not None else [])
        self.model = model
        with torch.inference_mode():
            model.prepare_ranking()
            self.root: Scorer = (self.links.with_new_items([], []) if self.links is not None
                                 else model)
            if isinstance(self.root, ItemVectors):
                self.vectors0 = self.root.item_vectors()  # [I, d]
            else:
                rng = np.random.default_rng(run.spec.seed)
                sample = np.sort(rng.choice(ds.n_users, size=min(profile_users, ds.n_users),
                                            replace=False))
                scores = model.score_users(torch.as_tensor(sample))  # [P, I]
                self.vectors0 = (scores - scores.mean(dim=1, keepdim=True)).T.contiguous()  # [I, P]

    def standardise(self, name: str, row: np.ndarray) -> tuple[np.ndarray, str | None]:
        """A raw modality row as the model computes with it, and what is wrong with it."""
        if self.links is None:
            return np.asarray(row, dtype=np.float32), "the model takes no features"
        return self.links.standardise_feature(name, row)

    def build(self, new: tuple[NewItem, ...], item_ids0: np.ndarray) -> Catalogue:
        """The catalogue of the trained items plus ``new`` (one rebuild per registration)."""
        n_new, i0, e0 = len(new), self.n_items0, self.n_entities0
        scorer, triples = self.root, self.triples0
        if n_new and self.links is not None:
            with torch.inference_mode():
                scorer = self.links.with_new_items(
                    [(x.relations, x.entities) for x in new], [x.features for x in new])
            t0 = self.triples0
            heads = np.concatenate([model_space_ids(t0[:, 0], i0, e0, n_new)]
                                   + [np.full(len(x.entities), i0 + j) for j, x in enumerate(new)])
            rels = np.concatenate([t0[:, 1]] + [x.relations for x in new])
            tails = np.concatenate([model_space_ids(t0[:, 2], i0, e0, n_new)]
                                   + [model_space_ids(x.entities, i0, e0, n_new) for x in new])
            triples = np.column_stack([heads, rels, tails]).astype(np.int64)
        vectors = scorer.item_vectors() if isinstance(scorer, ItemVectors) else self.vectors0
        with torch.inference_mode():
            unit = torch.nn.functional.normalize(vectors, dim=1)
        item_ids = np.concatenate([item_ids0, np.array([x.item_id for x in new], dtype=str)]).astype(str)
        catalogue = Catalogue(i0, new, item_ids, pd.Index(item_ids), scorer, vectors, unit,
                              triples, e0 + n_new, self.n_relations, self.n_users)
        if catalogue.can(ItemVectors):
            catalogue.known_queries(slice(0, 0))  # the table now, not in a request
        return catalogue
