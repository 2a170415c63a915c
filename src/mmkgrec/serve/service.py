"""The recommendation service: a trained run, its feedback and registered items, and every
operation the HTTP API exposes, as plain Python (the FastAPI layer in :mod:`.app` only maps
requests and errors).

State and concurrency: the catalogue (:class:`~.engine.Catalogue`) is an immutable snapshot,
one per catalogue version, holding everything user-independent (the fused item table, the first
aggregation round, the mean-user item vectors); a registration builds the next one (only the new
rows are computed) and swaps it in whole, with a copy of the faiss index extended by the new
items, so a request never sees a half-built cache. Per-user feedback lives in a dict guarded by
a lock and is copied per request. Writes (feedback, items) are committed to SQLite (fsynced)
BEFORE they change memory or are acknowledged.

The store is the source of truth, and memory only ever applies its rows in id order
(:meth:`RecService._sync`): before a request reads the catalogue or a user's feedback, one
``PRAGMA data_version`` tells whether any connection committed since the last sync; if one did,
the new items, then the new feedback rows, are applied. So several processes over one store
(``mmkgrec serve --workers N``) serve the same catalogue and the same feedback: a request that
starts after another worker acknowledged a write sees it. Registrations take SQLite's write lock
first (``BEGIN IMMEDIATE``) and sync inside it, so every worker numbers the new items in the
store's order. Every ranking scores the whole catalogue in one tensor program (exact), or the
faiss candidates only (two-stage).
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Literal, cast

import numpy as np
import pandas as pd
import torch

from mmkgrec.errors import MMKGRecError
from mmkgrec.models.base import (
    AttentionExplanations,
    HistoryUsers,
    ItemsFromLinks,
    ItemVectors,
    UsersFromItems,
    WalksPaths,
)
from mmkgrec.serve.engine import Catalogue, Engine, NewItem
from mmkgrec.serve.explain import describe_path, find_paths, weigh_paths
from mmkgrec.serve.retrieval import ItemIndex
from mmkgrec.serve.store import FeedbackStore
from mmkgrec.train.run import (
    Run,
    builds_listener,
    display_names,
    exclusions,
    listener_history,
    load_run,
    rank_items,
    seen_items,
    top_k,
    user_scores,
)

Retrieval = Literal["exact", "two-stage"]


def clip(value, limit: int = 80) -> str:
    """``repr(str(value))``, cut to about ``limit`` characters: error messages never echo a
    whole oversized id back."""
    text = str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def finite_or_worst(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` with every non-finite entry (NaN, +-inf) replaced by -inf, so that
    ``torch.topk`` ranks it last and the ranking drops it: no non-finite score reaches a list."""
    return torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -torch.inf))


class ServiceError(MMKGRecError):
    """A request the service refuses; ``status`` is its HTTP status."""

    status = 400
    kind = "bad_request"


class NotFoundError(ServiceError):
    status, kind = 404, "not_found"


class UnsupportedError(ServiceError):
    """The served model cannot do this (e.g. KGCN has no way to build a new listener)."""

    status, kind = 409, "unsupported_by_model"


class ConflictError(ServiceError):
    status, kind = 409, "conflict"


class InvalidInputError(ServiceError):
    status, kind = 422, "invalid_input"


class WouldBlock(Exception):
    """A ``wait=False`` call found a lock taken (the caller retries in the thread pool)."""


#: the most items a recommendation may score to run on the event loop (:meth:`RecService.quick`)
QUICK_ITEMS = 20_000


class RecService:
    """Serve a trained run. See the module docstring.

    Args:
        run: a loaded run (:func:`mmkgrec.train.run.load_run`).
        store: the feedback database; its registered items and feedback are replayed.
        index: faiss index kind for two-stage retrieval (``auto``, ``flat``, ``hnsw``, ``ivf``)
            or ``none`` (exact full ranking only). Only for MKGCN / KGCN.
        retrieval: the default ranking mode (``exact`` or ``two-stage``; the latter needs an index).
        candidates: how many faiss candidates the exact model re-ranks.
    """

    @torch.inference_mode()
    def __init__(self, run: Run, store: FeedbackStore, *, index: str = "none",
                 retrieval: Retrieval | None = None, candidates: int = 200,
                 index_options: dict | None = None, max_concurrent: int | None = None):
        self.run, self.store = run, store
        ds = run.dataset
        self.dataset = ds
        self.model_name = run.spec.model
        run.model.eval()
        self.engine = Engine(run)
        self.user_position = {str(u): i for i, u in enumerate(ds.users)}  # id -> user index
        self.seen = seen_items(ds)  # every interaction row: what exclude_seen excludes
        self.train_indptr, self.train_items = run.split.user_history()
        self.attrs = ds.item_attrs
        self.names = display_names(ds)  # [I] name, else "artist – title"; None without attributes
        self.candidates = int(candidates)
        self._search_text: pd.Series | None = None
        # Scoring runs in the server's thread pool; more concurrent tensor programs than cores
        # only thrash caches and the GIL, so at most ``max_concurrent`` (default: the CPU count)
        # rank at once and the others queue.
        self._scoring = threading.BoundedSemaphore(max_concurrent or os.cpu_count() or 1)
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        # lock order: _write_lock -> _sync_lock -> the store's locks
        self._sync_lock = threading.Lock()
        self._synced_version: int | None = None  # the store's data_version at the last sync
        self._items_upto = self._feedback_upto = 0  # store row ids applied so far
        self._skipped_feedback = 0
        self._feedback: dict[str, dict[int, float]] = {}
        self.started = time.time()
        self.notes: list[str] = []
        catalogue = self.engine.build((), ds.items)
        self.retriever: ItemIndex | None = None
        if index != "none":
            if not isinstance(catalogue.scorer, ItemVectors):
                raise MMKGRecError(f"two-stage retrieval needs a model with user-independent item "
                                   f"vectors (mkgcn, kgcn); {self.model_name} serves exact ranking "
                                   f"only: use --index none")
            self.retriever = ItemIndex(catalogue.item_vectors.numpy(), index,  # type: ignore[arg-type]
                                       seed=run.spec.seed, **(index_options or {}))
        self.retrieval: Retrieval = retrieval or ("two-stage" if self.retriever else "exact")
        if self.retrieval == "two-stage" and self.retriever is None:
            raise MMKGRecError("two-stage retrieval needs an index (--index auto|flat|hnsw|ivf)")
        self._catalogue = catalogue
        self._replay()

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, db: str | Path, **options) -> RecService:
        """Load ``run_dir`` (safetensors + JSON only) and open the feedback database ``db``."""
        return cls(load_run(run_dir), FeedbackStore(db), **options)

    # ---- startup ---------------------------------------------------------------------------------
    def _replay(self) -> None:
        """Re-register stored items, then re-apply stored feedback (latest value per pair).

        A stored item that fails today's checks (non-finite or out-of-range features, a
        non-finite vector or score: written before those checks existed, or by hand), or that
        links to such an item, is quarantined: moved to the database's ``quarantined_items``
        table with the reason, left out of the catalogue, and named in ``/health`` notes."""
        stored = self.store.changes(0, None)[0]
        if stored:
            self._items_upto = stored[-1][0]
            catalogue, quarantined = self._extend(self._catalogue, stored)
            for item_id, reason in quarantined.items():
                self.store.quarantine_item(item_id, reason)
            if quarantined:
                names = ", ".join(clip(x, 40) for x in list(quarantined)[:10])
                self.notes.append(f"{len(quarantined)} stored items failed the checks and were "
                                  f"quarantined (table quarantined_items): {names}"
                                  + (" ..." if len(quarantined) > 10 else ""))
            self._publish(catalogue)
        self._sync()  # every feedback row, and items committed meanwhile by other processes
        if self._skipped_feedback:
            self.notes.append(f"{self._skipped_feedback} stored feedback rows name items this run "
                              f"does not have (or have a non-finite value); they are skipped")

    def _extend(self, start: Catalogue, stored: list, strict: bool = True
                ) -> tuple[Catalogue, dict[str, str]]:
        """``start`` plus the stored items (id, item_id, payload), in order, and the ones left
        out with the reason: those that fail the checks, or link to one that does. ``strict``:
        a link to an unknown entity is an error (on start); else it is left out too."""
        quarantined: dict[str, str] = {}
        while True:
            new = list(start.new)
            for _, item_id, payload in stored:
                if item_id in quarantined:
                    continue
                try:
                    partial = self._partial_catalogue(start, tuple(new))
                    new.append(self._make_item(item_id, payload, partial))
                except InvalidInputError as error:
                    quarantined[item_id] = str(error)
                except NotFoundError as error:
                    links = {str(link.get("entity")) for link in payload.get("links", [])
                             if isinstance(link, dict)}
                    if links & set(quarantined):
                        quarantined[item_id] = "links to a quarantined item"
                    elif strict:
                        raise
                    else:
                        quarantined[item_id] = str(error)
            added = new[len(start.new):]
            catalogue = self.engine.build(tuple(new), self.dataset.items) if added else start
            bad = {x.item_id: problem for j, x in enumerate(added)
                   if (problem := self._item_problem(catalogue, start.n_items + j))}
            if not bad:
                return catalogue, quarantined
            quarantined.update(bad)

    def _publish(self, catalogue: Catalogue) -> None:
        """Make ``catalogue`` the served one; the faiss index first (a copy extended by the new
        items: a search running on the old one is unaffected), so no request finds a candidate
        its catalogue lacks (those beyond it are dropped anyway)."""
        old = self._catalogue
        if self.retriever is not None and catalogue.n_items > old.n_items:
            self.retriever = self.retriever.extended(catalogue.item_vectors[old.n_items:].numpy())
        self._catalogue = catalogue

    def _sync(self) -> None:
        """Apply what any connection (another worker's, or this process's own writer) committed
        to the store since the last call: registered items first, then feedback rows, each in
        id order. Called before every read of the catalogue or of feedback; one ``PRAGMA
        data_version`` (microseconds) when nothing changed."""
        with self._sync_lock:
            self._sync_locked()

    def _catalogue_now(self) -> Catalogue:
        """:attr:`catalogue` without waiting: :class:`WouldBlock` when another thread syncs or
        the store has something to apply (a catalogue rebuild can take seconds: the thread pool
        does it, never the event loop)."""
        if not self._sync_lock.acquire(blocking=False):
            raise WouldBlock
        try:
            if self.store.data_version() != self._synced_version:
                raise WouldBlock
        finally:
            self._sync_lock.release()
        return self._catalogue

    @torch.inference_mode()  # as every request's tensors (a build may run from any endpoint)
    def _sync_locked(self) -> None:
        version = self.store.data_version()
        if version == self._synced_version:
            return
        items, rows = self.store.changes(self._items_upto, self._feedback_upto)
        self._synced_version = version  # read before the snapshot: later commits change it
        if items:
            catalogue, left_out = self._extend(self._catalogue, items, strict=False)
            if left_out:  # accepted by another process, refused here: a different code version?
                self.notes.append(f"{len(left_out)} items registered by another process fail "
                                  f"this process's checks and are not served: "
                                  f"{', '.join(clip(x, 40) for x in list(left_out)[:10])}")
            self._publish(catalogue)
            self._items_upto = items[-1][0]
        if rows:
            self._feedback_upto = rows[-1][0]
            positions = self._catalogue.id_index.get_indexer([row[2] for row in rows])
            with self._state_lock:
                for (_, user_id, _, value), position in zip(rows, positions):
                    if position < 0 or not isinstance(value, (int, float)) or not math.isfinite(value):
                        self._skipped_feedback += 1
                        continue
                    self._feedback.setdefault(user_id, {})[int(position)] = float(value)

    @staticmethod
    def _item_problem(catalogue: Catalogue, item: int) -> str | None:
        """What makes a registered item unservable (``ItemsFromLinks.item_problem``), or None."""
        scorer = catalogue.scorer
        return scorer.item_problem(item) if isinstance(scorer, ItemsFromLinks) else None

    def _partial_catalogue(self, catalogue: Catalogue, new: tuple) -> Catalogue:
        """A catalogue view with ``new`` items' ids (for resolving links while replaying)."""
        ids = np.concatenate([self.dataset.items, np.array([x.item_id for x in new], dtype=str)])
        return Catalogue(catalogue.n_base, new, ids, pd.Index(ids), catalogue.scorer,
                         catalogue.item_vectors, catalogue.item_unit, catalogue.triples,
                         self.dataset.n_entities + len(new), catalogue.n_relations,
                         catalogue.n_users)

    # ---- lookups ---------------------------------------------------------------------------------
    @property
    def catalogue(self) -> Catalogue:
        """The served catalogue, after applying what the store has that memory lacks."""
        self._sync()
        return self._catalogue

    def _item(self, catalogue: Catalogue, item_id: str | int) -> int:
        position = catalogue.id_index.get_indexer([str(item_id)])[0]
        if position < 0:
            raise NotFoundError(f"unknown item {clip(item_id)}")
        return int(position)

    def _items(self, catalogue: Catalogue, item_ids: list) -> np.ndarray:
        keys = [str(x) for x in item_ids]
        positions = catalogue.id_index.get_indexer(keys)
        if (positions < 0).any():
            bad = [k for k, p in zip(keys, positions) if p < 0]
            raise NotFoundError(f"unknown items [{', '.join(clip(b) for b in bad[:10])}]"
                                + (" ..." if len(bad) > 10 else ""))
        return positions.astype(np.int64)

    def _user(self, user_id: str) -> tuple[int | None, dict[int, float]]:
        """(dataset user index or None, a copy of the user's feedback); 404 if neither exists.
        Callers :meth:`_sync` first (reading :attr:`catalogue` does)."""
        position = self.user_position.get(user_id)
        with self._state_lock:
            feedback = dict(self._feedback.get(user_id, {}))
        if position is None and user_id not in self._feedback:
            raise NotFoundError(f"unknown user {clip(user_id)} (neither in the training data nor "
                                f"seen through POST /feedback)")
        return position, feedback

    def item_name(self, catalogue: Catalogue, item: int) -> str | None:
        if item >= catalogue.n_base:
            return catalogue.new[item - catalogue.n_base].name
        if self.names is not None:
            return str(self.names[item])
        return None

    def entity_name(self, catalogue: Catalogue, entity: int) -> str:
        """Display name of a model-space entity: an item's name (else its id), or the entity id."""
        if entity < catalogue.n_items:
            return self.item_name(catalogue, entity) or str(catalogue.item_ids[entity])
        return str(self.dataset.entities[entity - len(catalogue.new)])

    def _describe_items(self, catalogue: Catalogue, items: np.ndarray, logits: np.ndarray,
                        key: str = "score") -> list[dict]:
        out = []
        attrs = self.attrs
        columns = [c for c in attrs.columns if c != "name"] if attrs is not None else []
        for rank, (item, logit) in enumerate(zip(items.tolist(), logits.tolist()), start=1):
            row = {"rank": rank, "item_id": str(catalogue.item_ids[item]),
                   "name": self.item_name(catalogue, item)}
            if key == "score":
                row["score"] = 1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0
                row["logit"] = float(logit)
            else:
                row[key] = float(logit)
            row["attributes"] = ({c: str(attrs[c].iat[item]) for c in columns}
                                 if attrs is not None and item < catalogue.n_base else {})
            out.append(row)
        return out

    # ---- ranking ---------------------------------------------------------------------------------
    def _history(self, feedback: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
        """(positive feedback items, all feedback items) as int64 arrays."""
        items = np.fromiter(feedback.keys(), dtype=np.int64, count=len(feedback))
        values = np.fromiter(feedback.values(), dtype=np.float64, count=len(feedback))
        return items[values > 0], items

    def _unsupported_listener(self) -> UnsupportedError:
        return UnsupportedError(f"{self.model_name} cannot build a user from liked items (it has a "
                                f"user ID embedding); serve a model that builds users from items "
                                f"(mkgcn, mmkgcf, mkrln, pgpr) for new listeners")

    def _query(self, catalogue: Catalogue, user: int | None, liked: np.ndarray) -> torch.Tensor:
        """[1, d] the query vector of a user (index or None) plus liked items."""
        scorer = catalogue.scorer
        if not catalogue.can(ItemVectors):
            raise UnsupportedError(f"{self.model_name} has no user query vectors")
        if builds_listener(scorer, user, liked):
            history, valid = listener_history(scorer, user, liked)
            return cast(ItemVectors, scorer).query_vectors(history=history, valid=valid)
        assert user is not None  # builds_listener is true for a new listener
        return catalogue.known_queries(slice(user, user + 1))  # [1, d]

    def _rank(self, catalogue: Catalogue, user: int | None, liked: np.ndarray,
              feedback: np.ndarray, k: int, retrieval: Retrieval | None, exclude_seen: bool = True,
              wait: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
        """Top-k (items [k'], logits [k'], mode) for a user (index or None) plus liked items;
        exact ranking is :func:`mmkgrec.train.run.rank_items`, the CLI's own path."""
        scorer = catalogue.scorer
        if user is None and not catalogue.can(UsersFromItems):
            raise self._unsupported_listener()
        mode = retrieval or self.retrieval
        vectors = catalogue.can(ItemVectors)
        if not vectors:
            mode = "exact"
        retriever = self.retriever
        if mode == "two-stage" and retriever is None:
            raise InvalidInputError("two-stage retrieval needs a server started with --index")
        if not self._scoring.acquire(blocking=wait):
            raise WouldBlock
        try:
            if mode == "exact" or retriever is None or not vectors:
                items, logits = rank_items(scorer, self.seen, user=user, liked=liked,
                                           feedback=feedback, k=k, exclude_seen=exclude_seen)
                return items, logits, mode
            exclude = exclusions(self.seen, user, feedback, exclude_seen)
            u = self._query(catalogue, user, liked)  # [1, d]
            found = retriever.search(u.numpy(), self.candidates + len(exclude))[0]
            found = found[(found >= 0) & (found < catalogue.n_items)]
            at = np.searchsorted(exclude, found).clip(max=max(0, len(exclude) - 1))  # sorted
            excluded = exclude[at] == found if len(exclude) else np.zeros(len(found), dtype=bool)
            candidates = found[~excluded][: self.candidates]  # [C]
            scores = cast(ItemVectors, scorer).score_queries(
                u, torch.as_tensor(candidates).unsqueeze(0))[0]  # [C]
            top, logits = top_k(scores, np.zeros(0, dtype=np.int64), k)
            return candidates[top], logits, mode
        finally:
            self._scoring.release()

    def quick(self, retrieval: Retrieval | None) -> bool:
        """Whether a recommendation in this ranking mode scores few enough items
        (:data:`QUICK_ITEMS`) to run on the server's event loop: the HTTP layer then skips the
        thread pool, whose hand-offs cost more CPU than the scoring (measured: docs/serving.md).
        Path-reasoning models (beam search per request) always use the pool."""
        catalogue = self._catalogue
        if catalogue.can(WalksPaths):
            return False
        two_stage = (retrieval or self.retrieval) == "two-stage" and self.retriever is not None
        return (self.candidates if two_stage else catalogue.n_items) <= QUICK_ITEMS

    @torch.inference_mode()
    def recommend_user(self, user_id: str, k: int = 20, exclude_seen: bool = True,
                       retrieval: Retrieval | None = None, *, wait: bool = True) -> dict:
        """Top-k for a known user (train history + positive feedback) or a feedback-only user.
        ``wait=False``: raise :class:`WouldBlock` instead of waiting for a lock."""
        catalogue = self.catalogue if wait else self._catalogue_now()
        user, feedback = self._user(user_id)
        liked, touched = self._history(feedback)
        items, logits, mode = self._rank(catalogue, user, liked, touched, k, retrieval, exclude_seen,
                                         wait=wait)
        return {"user_id": user_id, "known_user": user is not None, "k": k,
                "retrieval": mode, "feedback_items": len(touched), "liked_items": len(liked),
                "items": self._describe_items(catalogue, items, logits)}

    @torch.inference_mode()
    def recommend_liked(self, liked_ids: list, k: int = 20,
                        retrieval: Retrieval | None = None, *, wait: bool = True) -> dict:
        """Top-k for a new listener given only liked items (no retraining); liked ones excluded.
        ``wait``: as in :meth:`recommend_user`."""
        catalogue = self.catalogue if wait else self._catalogue_now()
        liked = self._items(catalogue, liked_ids)
        items, logits, mode = self._rank(catalogue, None, liked, liked, k, retrieval, wait=wait)
        return {"liked": [str(catalogue.item_ids[i]) for i in liked], "k": k, "retrieval": mode,
                "items": self._describe_items(catalogue, items, logits)}

    @torch.inference_mode()
    def similar(self, item_id: str, k: int = 20) -> dict:
        """Nearest items by cosine over user-independent item vectors (one matrix-vector op)."""
        catalogue = self.catalogue
        item = self._item(catalogue, item_id)
        sims = finite_or_worst(catalogue.item_unit @ catalogue.item_unit[item])  # [I']
        sims[item] = -torch.inf
        top_sims, top = torch.topk(sims, min(k, catalogue.n_items - 1))
        keep = torch.isfinite(top_sims)
        return {"item_id": str(catalogue.item_ids[item]), "name": self.item_name(catalogue, item),
                "k": k, "items": self._describe_items(catalogue, top[keep].numpy(),
                                                       top_sims[keep].numpy(), key="similarity")}

    # ---- feedback and items ----------------------------------------------------------------------
    @torch.inference_mode()
    def add_feedback(self, user_id: str, item_id: str, value: float) -> dict:
        """Store durably, then apply: the user's next ranking uses it (404 for an unknown item)."""
        if not math.isfinite(value):
            raise InvalidInputError("value must be a finite number")
        with self._write_lock:
            catalogue = self.catalogue  # synced: items registered by another worker resolve
            item = self._item(catalogue, item_id)
            with self._state_lock:
                new_user = (user_id not in self.user_position
                            and user_id not in self._feedback)
            row = self.store.add_feedback(user_id, str(catalogue.item_ids[item]), float(value))
        self._sync()  # memory applies it (and whatever was committed before it) in id order
        return {"id": row, "user_id": user_id, "item_id": str(catalogue.item_ids[item]),
                "value": float(value), "new_user": bool(new_user), "stored": True}

    def _make_item(self, item_id: str, payload: dict, catalogue: Catalogue) -> NewItem:
        if not self.engine.new_items:
            raise UnsupportedError(f"{self.model_name} cannot score items it was not trained on; "
                                   f"new items need a KG model (mkgcn, kgcn)")
        links = payload.get("links", [])
        relation_index = pd.Index(self.dataset.relations)
        rel = relation_index.get_indexer([str(link["relation"]) for link in links])
        if (rel < 0).any():
            bad = sorted({str(link["relation"]) for link, r in zip(links, rel) if r < 0})
            raise NotFoundError(f"unknown relations [{', '.join(clip(b) for b in bad[:10])}]"
                                f"{' ...' if len(bad) > 10 else ''}; the dataset has "
                                f"{list(self.dataset.relations)[:20]}")
        entities = self._storage_entities(catalogue, [str(link["entity"]) for link in links])
        features = {}
        for name, values in (payload.get("features") or {}).items():
            if name not in self.engine.modality_names:
                raise InvalidInputError(f"unknown modality {clip(name)}; the model uses "
                                        f"{self.engine.modality_names or 'none'}")
            width = self.dataset.modalities[name].shape[1]
            try:
                row = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                row = np.full(1, np.nan)
            if row.shape != (width,) or not np.isfinite(row).all():
                raise InvalidInputError(f"modality {clip(name)} needs {width} finite numbers, got "
                                        f"{row.size}")
            scaled, problem = self.engine.standardise(name, row)
            if problem:
                raise InvalidInputError(f"modality {clip(name)}: {problem}")
            features[name] = scaled
        if not len(entities) and not features:
            raise InvalidInputError("a new item needs at least one KG link or one modality feature")
        return NewItem(item_id, payload.get("name"), rel.astype(np.int64), entities, features)

    def _storage_entities(self, catalogue: Catalogue, keys: list[str]) -> np.ndarray:
        """Entity ids (original) -> storage ids: dataset entities, then registered items."""
        entity_index = pd.Index(self.dataset.entities)
        positions = entity_index.get_indexer(keys)
        new_ids = pd.Index([x.item_id for x in catalogue.new]).get_indexer(keys)
        if len(new_ids):
            positions = np.where((positions < 0) & (new_ids >= 0),
                                 self.dataset.n_entities + new_ids, positions)
        if (positions < 0).any():
            bad = [k for k, p in zip(keys, positions) if p < 0]
            raise NotFoundError(f"unknown entities [{', '.join(clip(b) for b in bad[:10])}]"
                                + (" ..." if len(bad) > 10 else ""))
        return positions.astype(np.int64)

    @torch.inference_mode()
    def add_item(self, payload: dict) -> dict:
        """Register a new song (KG links + optional modality rows); recommendable at once."""
        item_id = str(payload["item_id"])
        # SQLite's write lock first: registrations of every worker run one at a time, each on a
        # catalogue synced inside the lock, so all number new items in the store's order. This
        # worker's requests wait meanwhile (registrations are rare); other workers' do not.
        with self._write_lock, self._sync_lock, self.store.transaction() as tx:
            self._sync_locked()
            catalogue = self._catalogue
            if catalogue.id_index.get_indexer([item_id])[0] >= 0:
                raise ConflictError(f"item {clip(item_id)} already exists")
            if self.dataset.entities.size and pd.Index(self.dataset.entities).get_indexer([item_id])[0] >= 0:
                raise ConflictError(f"{clip(item_id)} is already an entity id of the KG")
            new = self._make_item(item_id, payload, catalogue)
            updated = self.engine.build(catalogue.new + (new,), self.dataset.items)
            problem = self._item_problem(updated, updated.n_items - 1)
            if problem:  # checked before it is stored: one request cannot poison every list
                raise InvalidInputError(f"item {clip(item_id)} is not servable: {problem}")
            row = self.store.add_item(item_id, payload, tx)
            tx.commit()  # committed and fsynced: durable before it is visible
            self._publish(updated)
            self._items_upto = row
        return {"item_id": item_id, "index": updated.n_items - 1, "name": new.name,
                "links": len(new.entities),
                "modalities": [n for n in self.engine.modality_names if n in new.features]}

    # ---- explanations ----------------------------------------------------------------------------
    @torch.inference_mode()
    def explain(self, user_id: str, item_id: str, limit: int = 10) -> dict:
        """KG paths from the user's history (train positives + liked feedback) to the item, with
        the model's relation attention; the item's sampled neighbourhood; modality shares."""
        catalogue = self.catalogue
        user, feedback = self._user(user_id)
        item = self._item(catalogue, item_id)
        liked, _ = self._history(feedback)
        own = (self.train_items[self.train_indptr[user]:self.train_indptr[user + 1]]
               if user is not None else np.zeros(0, dtype=np.int64))
        history = np.unique(np.concatenate([own, liked]))  # model-space item ids
        weights, score = None, None
        neighbourhood: list[dict] = []
        scorer = catalogue.scorer
        servable = user is not None or isinstance(scorer, UsersFromItems)
        if (isinstance(scorer, AttentionExplanations) and isinstance(scorer, ItemVectors)
                and (user is not None or isinstance(scorer, HistoryUsers))):
            u = self._query(catalogue, user, liked)
            weights = scorer.relation_weights(u)
            score = float(scorer.score_queries(u, torch.tensor([[item]]))[0, 0])
            frame = scorer.neighbourhood(u, item)
            neighbourhood = [{"entity": self.entity_name(catalogue, int(e)),
                              "relation": self._relation_name(int(r)), "weight": round(float(w), 6)}
                             for e, r, w in frame[["entity", "relation", "weight"]].itertuples(index=False)]
        elif servable:
            with self._scoring:
                score = float(user_scores(scorer, user, liked)[item])
        walked = (self._walked_path(catalogue, scorer, user, liked, item)
                  if isinstance(scorer, WalksPaths) and servable else None)
        if walked is not None:  # the path the model itself walked to the item
            best = pd.DataFrame({"source": []})
            total, out_paths = 1, [walked]
        else:  # KG paths found after the fact (and for items the walk did not reach)
            paths = find_paths(catalogue.graph(), history, item)
            total, out_paths = len(paths), []
            best = weigh_paths(paths, weights, limit)
        best["target"] = item
        def name_of(entity: int) -> str:
            return self.entity_name(catalogue, entity)

        for row in best.itertuples(index=False):
            nodes = [int(row.source)] + ([int(row.middle)] if row.hops == 2 else []) + [item]
            rels = [int(row.r1)] + ([int(row.r2)] if row.hops == 2 else [])
            hop_weights = [row.w1] + ([row.w2] if row.hops == 2 else [])
            out_paths.append({
                "hops": int(row.hops),
                "weight": None if np.isnan(row.weight) else round(float(row.weight), 6),
                "text": describe_path(row, name_of, self._relation_name),
                "nodes": [{"entity": self._entity_id(catalogue, n), "name": name_of(n)} for n in nodes],
                "relations": [{"relation": self._relation_name(r),
                               "weight": None if np.isnan(w) else round(float(w), 6)}
                              for r, w in zip(rels, hop_weights)],
            })
        relation_weights: dict[str, float] = {}
        if weights is not None:
            order = np.argsort(-weights, kind="stable")
            relation_weights = {self._relation_name(int(r)): round(float(weights[r]), 6) for r in order}
        modalities: list[dict] = (scorer.modality_shares(item)
                      if isinstance(scorer, AttentionExplanations) else [])
        return {"explainer": "walked-path" if walked is not None else "kg-paths",
                "user_id": user_id, "item_id": str(catalogue.item_ids[item]),
                "name": self.item_name(catalogue, item),
                "score": None if score is None else 1.0 / (1.0 + math.exp(-score)),
                "logit": score, "history_items": len(history), "n_paths": int(total),
                "paths": out_paths, "relation_weights": relation_weights,
                "neighbourhood": neighbourhood, "modalities": modalities}

    def _walked_path(self, catalogue: Catalogue, scorer: WalksPaths, user: int | None,
                     liked: np.ndarray, item: int) -> dict | None:
        """The path the model walked to ``item`` (from the user, or for a listener without a
        dataset row from their liked items), each step with its probability; None when the
        walk did not reach the item (it was ranked by its embedding score)."""
        with self._scoring:
            if user is not None:
                found = scorer.recommend_paths(np.array([user]), k=catalogue.n_items)
            else:
                history, valid = listener_history(catalogue.scorer, None, liked)
                found = scorer.walk_from_items(history, valid, k=catalogue.n_items)
        where = np.flatnonzero(found.items[0] == item)
        if not len(where) or not found.has_path[0, where[0]]:
            return None
        j = int(where[0])
        graph = scorer.path_graph()
        nodes = [self._walked_node(catalogue, graph, int(n)) for n in found.nodes[0, j]]
        if user is not None:
            nodes[0]["name"] = "you"
        steps = [(graph.relation_names[int(r)], float(q))
                 for r, q in zip(found.relations[0, j], found.step_probs[0, j])]
        probability = float(np.prod([q for _, q in steps]))
        text = nodes[0]["name"] + "".join(f" -[{r} {q:.2f}]-> {n['name']}"
                                          for (r, q), n in zip(steps, nodes[1:]))
        def sig(x: float) -> float:  # 6 significant digits: small probabilities stay exact
            return float(f"{x:.6g}")

        return {"hops": len(steps), "weight": sig(probability), "kind": "walked",
                "probability": sig(probability),
                "text": f"{text}; path probability {probability:.3g}", "nodes": nodes,
                "relations": [{"relation": r, "weight": sig(q), "probability": sig(q)}
                              for r, q in steps]}

    def _walked_node(self, catalogue: Catalogue, graph, node: int) -> dict:
        """A node of a walked path: a user, an item, another entity, or a new listener's start."""
        if node >= graph.n_nodes:
            return {"entity": "(listener)", "name": "you (your liked songs)", "kind": "listener"}
        if node >= graph.n_entities:
            user_id = str(self.dataset.users[node - graph.n_entities])
            return {"entity": user_id, "name": f"listener {user_id}", "kind": "user"}
        return {"entity": self._entity_id(catalogue, node), "name": self.entity_name(catalogue, node),
                "kind": "item" if node < graph.n_items else "entity"}

    def _relation_name(self, relation: int) -> str:
        relations = self.dataset.relations
        return str(relations[relation]) if relation < len(relations) else "(none)"

    def _entity_id(self, catalogue: Catalogue, entity: int) -> str:
        if entity < catalogue.n_items:
            return str(catalogue.item_ids[entity])
        return str(self.dataset.entities[entity - len(catalogue.new)])

    # ---- listing ---------------------------------------------------------------------------------
    def users(self, limit: int = 50, offset: int = 0) -> dict:
        """Dataset users (with train-history sizes), then users created through feedback."""
        sizes = np.diff(self.train_indptr)
        self._sync()
        with self._state_lock:
            extra = [u for u in self._feedback if u not in self.user_position]
        ids = list(self.dataset.users[offset:offset + limit])
        rows = [{"user_id": str(u), "history": int(sizes[offset + i]), "known": True}
                for i, u in enumerate(ids)]
        rest = max(0, offset + limit - self.dataset.n_users)
        start = max(0, offset - self.dataset.n_users)
        rows += [{"user_id": u, "history": 0, "known": False} for u in extra[start:start + rest]]
        return {"total": self.dataset.n_users + len(extra), "users": rows}

    def search_items(self, query: str = "", limit: int = 20) -> dict:
        """Items whose id or display name contains ``query`` (case-insensitive)."""
        catalogue = self.catalogue
        if self._search_text is None:  # trained items' "name id" strings, built once
            names = (pd.Series(self.names, dtype=object).astype(str) if self.names is not None
                     else pd.Series([""] * catalogue.n_base))
            self._search_text = (names.reset_index(drop=True) + " "
                                 + pd.Series(self.dataset.items)).str.lower()
        new = pd.Series([f"{x.name or ''} {x.item_id}" for x in catalogue.new], dtype=object).str.lower()
        text = pd.concat([self._search_text, new], ignore_index=True)
        hits = np.flatnonzero(text.str.contains(query.lower(), regex=False).to_numpy())[:limit]
        return {"query": query, "items": [{"item_id": str(catalogue.item_ids[i]),
                                           "name": self.item_name(catalogue, int(i))} for i in hits]}

    def health(self) -> dict:
        catalogue = self.catalogue
        with self._state_lock:
            n_feedback_users = len(self._feedback)
        return {"status": "ok", "model": self.model_name, "dataset": self.dataset.name,
                "users": self.dataset.n_users, "items": catalogue.n_items,
                "new_items": len(catalogue.new), "feedback_users": n_feedback_users,
                "feedback_rows": self.store.count(), "retrieval": self.retrieval,
                "index": self.retriever.params if self.retriever else None,
                "new_listeners": isinstance(catalogue.scorer, UsersFromItems),
                "modalities": list(self.engine.modality_names),
                "uptime_s": round(time.time() - self.started, 3), "notes": self.notes,
                "pid": os.getpid(), "catalogue_version": self._items_upto}
