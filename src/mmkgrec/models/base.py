"""The contract every model keeps, so that one Trainer and one ranker serve them all.

A model is built from a dataset and a split, and may only read the split's TRAIN part (user
histories, popularity, feature statistics). The Trainer calls :meth:`Recommender.start_epoch`,
then :meth:`Recommender.forward` on batches of (user, item) pairs and adds
:meth:`Recommender.regularization`; full ranking calls :meth:`Recommender.prepare_ranking` once,
then :meth:`Recommender.score_users` per block of users.

Beyond that contract a model may declare capabilities, as the typed protocols below; callers
(the CLI's ``recommend``, the service in :mod:`mmkgrec.serve`) test for them with
``isinstance(model, Protocol)`` and never look at a model's attributes or class:

- :class:`UsersFromItems`: a new listener is scored from a list of liked items;
  :class:`HistoryUsers`: known users too are built from items (liked feedback enters at once);
- :class:`ItemVectors`: user-independent item vectors and user query vectors in their space
  (similar items, an ANN index, exact re-ranking of candidates);
- :class:`ItemsFromLinks`: items it was not trained on, from KG links and modality features
  (an extended catalogue that implements the same protocols over ``I + N`` items);
- :class:`AttentionExplanations`: the user's attention over relations, an item's sampled
  neighbourhood, each modality's share in an item's vector;
- :class:`WalksPaths`: recommendations come with the paths the model walked, with each step's
  probability (:class:`~mmkgrec.evaluate.explanations.PathRecommendations`).

Extended catalogues (:class:`ItemsFromLinks`) number entities in "model space"
(:func:`model_space_ids`): trained items ``0..I-1``, new items ``I..I+N-1``, then the other
entities, so that items stay entities ``0..I'-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split

if TYPE_CHECKING:  # pragma: no cover
    from mmkgrec.evaluate.explanations import PathGraph, PathRecommendations


class ModelConfig(BaseModel):
    """Base of the per-model hyper-parameter models; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Recommender(nn.Module):
    """Base class: scores (user, item) pairs as logits; sigmoid(logit) is the probability."""

    name: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]
    trainable: ClassVar[bool] = True  # False for models fitted in closed form (e.g. popularity)
    #: attributes holding ranking caches; :meth:`train` sets them to None when the model enters
    #: or leaves training (its parameters may change before the next ranking); ``eval()`` on a
    #: model already in eval mode keeps them
    ranking_caches: ClassVar[tuple[str, ...]] = ()
    #: set by models with modalities (:func:`~mmkgrec.models.layers.register_modalities`)
    modality_names: list[str]

    def __init__(self, dataset: MMKG, split: Split, config: ModelConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.n_users, self.n_items = dataset.n_users, dataset.n_items

    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        """Resample per-epoch state (user-history samples, neighbour tables). Default: nothing."""

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """users [B], items [B] (int64) -> logits [B]."""
        raise NotImplementedError

    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor:
        """users [B], items [M] -> logits [B, M] of every (user, item) pair: the sampled-softmax
        loss's scores. Default: :meth:`forward` over the B * M pairs; models with user and item
        vectors override it with one matmul."""
        n_users, n_items = len(users), len(items)
        pairs = self(users.repeat_interleave(n_items), items.repeat(n_users))  # [B * M]
        return pairs.view(n_users, n_items)

    def regularization(self, users: Tensor, items: Tensor) -> Tensor:
        """L2 penalty of the embeddings used for this batch (scalar). Default: zero."""
        return torch.zeros((), device=users.device)

    def auxiliary_loss(self) -> Tensor | None:
        """An extra, already weighted loss the Trainer adds to every training step (e.g. KGAT's
        KG-embedding loss). Default: None (nothing)."""
        return None

    @torch.no_grad()
    def prepare_ranking(self) -> None:
        """Precompute everything user-independent before :meth:`score_users`. Default: nothing."""

    def score_users(self, users: Tensor) -> Tensor:
        """users [B] -> logits for every item [B, n_items]."""
        raise NotImplementedError

    def rank_users(self, users: Tensor, k: int, exclude_indptr: Tensor, exclude_items: Tensor,
                   columns: Tensor | None = None) -> Tensor | None:
        """Optional full-ranking shortcut: users [B] -> top items [B, min(k, C)] (best first,
        -1 = no item), leaving out the rows ``users`` of the exclusion CSR (indptr
        [n_users + 1], items [nnz]). Over the whole catalogue (C = n_items), or with
        ``columns`` [C] (sorted item ids) over those items only: the exclusions and the result
        are then column indices into ``columns``. It must rank by the scores
        :meth:`score_users` gives (ties may be ordered differently). Default: None, meaning
        "score with :meth:`score_users`, then rank with ``rank_topk``"."""
        return None

    def train(self, mode: bool = True):
        if mode or self.training:  # entering or leaving training: the weights may change(d)
            for name in self.ranking_caches:
                setattr(self, name, None)
        return super().train(mode)


# ---- capabilities ------------------------------------------------------------------------------
@runtime_checkable
class Scorer(Protocol):
    """What ranks: a model, or an extended catalogue of one (:meth:`ItemsFromLinks.with_new_items`)."""

    n_items: int

    def prepare_ranking(self) -> None:
        """Precompute what :meth:`score_users` needs (may be a no-op)."""

    def score_users(self, users: Tensor) -> Tensor:
        """users [B] -> logits [B, n_items]."""


@runtime_checkable
class UsersFromItems(Protocol):
    """Scores a listener given only by liked items (a new listener, no retraining)."""

    def score_histories(self, history: Tensor, valid: Tensor) -> Tensor:
        """Users given by items: history [B, S] item ids, valid [B, S] -> logits [B, I]."""


@runtime_checkable
class HistoryUsers(UsersFromItems, Protocol):
    """Known users too are built from items (no user ID embedding), so liked feedback enters a
    known user's scores at once: ``score_histories(ranking_histories(u) + liked)``."""

    def ranking_histories(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The items :meth:`Recommender.score_users` builds known users [B] from:
        (history [B, S] int64 item ids, valid [B, S] bool)."""


@runtime_checkable
class ItemVectors(Protocol):
    """User-independent item vectors and user query vectors in their inner-product space."""

    def item_vectors(self) -> Tensor:
        """[I, d] user-independent item vectors (similar items, the ANN index)."""

    def query_vectors(self, users: Tensor | None = None, history: Tensor | None = None,
                      valid: Tensor | None = None) -> Tensor:
        """[B, d] query vectors of known users [B], or (:class:`HistoryUsers` only) of users
        given by items, history / valid [B, S]."""

    def score_queries(self, queries: Tensor, items: Tensor) -> Tensor:
        """Exact logits of the given items for the users behind ``queries`` [B, d]:
        items [B, C] -> [B, C] (equal to the full ranking's)."""


@runtime_checkable
class ItemsFromLinks(Protocol):
    """Scores items it was not trained on, from KG links and (standardised) modality rows."""

    modality_names: list[str]

    def standardise_feature(self, name: str, row: np.ndarray) -> tuple[np.ndarray, str | None]:
        """A raw modality row [d_k] as the float32 row the model computes with, and what is wrong
        with it (None when usable)."""

    def with_new_items(self, links: Sequence[tuple[np.ndarray, np.ndarray]],
                       features: Sequence[dict[str, np.ndarray]]) -> Scorer:
        """A scorer over the trained items plus new ones: ``links[j]`` = (relation ids [L],
        storage entity ids [L]; entity ``E + j'`` is new item ``j'`` < j), ``features[j]`` =
        {modality: standardised row}. It has ``n_items = I + N``, :meth:`Recommender.score_users`
        and the same capabilities as the model, over model-space ids (:func:`model_space_ids`)."""

    def item_problem(self, item: int) -> str | None:
        """What makes item ``item`` unservable (a non-finite vector or score), or None."""


@runtime_checkable
class AttentionExplanations(Protocol):
    """What the model's attention says about a (user, item) pair."""

    def relation_weights(self, queries: Tensor) -> np.ndarray:
        """[R] a user's attention over the dataset's relations; queries [1, d]."""

    def neighbourhood(self, queries: Tensor, item: int) -> pd.DataFrame:
        """The item's sampled neighbours (model-space entity, relation) with the user's weight
        on each: columns entity, relation, weight, best first."""

    def modality_shares(self, item: int) -> list[dict]:
        """Each input's share in the item's vector: [{modality, share, present}]."""


@runtime_checkable
class WalksPaths(Protocol):
    """Recommendations come with the path the model walked over its train graph."""

    def path_graph(self) -> PathGraph:
        """The graph the paths walk on (TRAIN interactions and KG triples)."""

    def recommend_paths(self, users, k: int = 10, exclude: tuple | None = None
                        ) -> PathRecommendations:
        """Top-k of known users [n] with the path that reached each item."""

    def walk_from_items(self, history: Tensor, valid: Tensor, k: int = 10,
                        exclude: tuple | None = None) -> PathRecommendations:
        """Top-k of listeners given by items (history / valid [B, S]): the walk starts at them."""


def model_space_ids(ids: np.ndarray, n_items: int, n_entities: int, n_new: int) -> np.ndarray:
    """Storage entity ids (entities ``0..E-1``, new items ``E..E+N-1``) -> model-space ids
    (items ``0..I-1``, new items ``I..I+N-1``, other entities ``I+N..E+N-1``)."""
    return np.where(ids < n_items, ids, np.where(ids < n_entities, ids + n_new,
                                                 ids - n_entities + n_items))
