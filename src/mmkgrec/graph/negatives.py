"""Training negatives shared by every model (non-edges of the user-item graph): vectorised,
seeded by a numpy ``Generator``. Used by the Trainer and by models that sample their own
(FREEDOM); the ctr protocol's evaluation negatives are :func:`mmkgrec.data.sampling.sample_unseen`.

Strategies (``NegativeSampler(strategy=...)``):

``uniform``
    Each negative is an item drawn uniformly from the catalogue. Easy negatives: most are
    obscure items, so a model (or a plain popularity scorer) scores well on AUC against uniform
    negatives by learning popularity alone.
``ratio``
    The MKGCN paper's "ratio negative sampling": ``P(item) ∝ (popularity + 1) ** alpha``, where
    popularity counts the item's TRAIN positives (:meth:`Split.item_popularity`; valid and test
    never leak in) and ``+ 1`` smooths items with no train positive so every item keeps a
    non-zero probability whatever the sign of ``alpha``.

    - ``alpha > 0`` (default 0.75, word2vec's exponent): popular items are drawn more often.
      These are *hard* negatives: a model can no longer win by ranking popular items first, so
      AUC measured against uniform negatives drops, while full-ranking top-K metrics (where the
      competitors ARE the popular items) usually improve.
    - ``alpha = 0``: uniform.
    - ``alpha = -1``: ``1 / popularity``, what the public MKGCN code does. Rare items dominate the
      negatives, so the task becomes easy: on music-d a popularity scorer alone reaches
      AUC ≈ 0.91. It inflates AUC while teaching the model popularity bias (hurting top-K).
``fixed``
    The split's own ctr negatives (the ``label == 0`` rows of train), the same every epoch, as
    KGCN trains. ctr protocol only; ``n_negatives`` is then decided by the split's ``neg_ratio``.

Under the cold-start protocol the held-out items (:attr:`Split.cold_items`) are never drawn:
they do not exist at training time.

``uniform`` and ``ratio`` never return a train positive of the user: candidates are checked on
int64 keys ``user * n_items + item`` against the sorted train-positive keys and only rejected
entries are redrawn, for a bounded number of rounds; entries still rejected after that (users
whose positives hold most of the sampling mass) are drawn exactly by Gumbel-max over their
allowed items, so sampling always terminates with the intended distribution. Negatives are
drawn with replacement (a user may get the same negative twice in an epoch); valid / test items
are NOT excluded, since a sampler that avoided them would leak the held-out data into training.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from mmkgrec.data.sampling import excluded_cells, in_sorted
from mmkgrec.data.split import Split
from mmkgrec.errors import ConfigError

Strategy = Literal["fixed", "uniform", "ratio"]
STRATEGIES = ("fixed", "uniform", "ratio")
MAX_REJECTION_ROUNDS = 32  # then the remaining entries are drawn exactly
DENSE_CELLS = 1 << 22  # cells of one [entries, n_items] block of the exact fallback


class NegativeSampler:
    """Draws training negatives for one split. See the module docstring for the strategies.

    Args:
        split: the split; only its TRAIN part is read.
        strategy: ``"uniform"``, ``"ratio"`` or ``"fixed"`` (ctr protocol only).
        alpha: exponent of ``ratio`` sampling (``P ∝ (train popularity + 1) ** alpha``).
        n_negatives: negatives per train positive (``uniform`` / ``ratio``).
        rng: the numpy Generator (or an int seed); the trainer shares its own so that a resumed
            run continues the same stream.

    Raises:
        ConfigError: unknown strategy, ``n_negatives < 1``, non-finite ``alpha``, ``fixed`` on a
            topk split, or a user whose train positives cover the whole catalogue.
    """

    def __init__(self, split: Split, strategy: Strategy = "uniform", alpha: float = 0.75,
                 n_negatives: int = 1, rng: np.random.Generator | int | None = None):
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown negative sampling {strategy!r}; expected one of "
                              f"{list(STRATEGIES)}")
        if strategy == "fixed" and split.protocol != "ctr":
            raise ConfigError("negatives='fixed' uses the split's own ctr negatives; this is a "
                              f"{split.protocol} split (positives only): use 'uniform' or 'ratio'")
        if int(n_negatives) < 1:
            raise ConfigError(f"n_negatives must be >= 1, got {n_negatives}")
        if not np.isfinite(alpha):
            raise ConfigError(f"alpha must be finite, got {alpha}")
        self.split, self.strategy = split, strategy
        self.alpha, self.n_negatives = float(alpha), int(n_negatives)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.n_items = split.n_items

        train = split.train_positives()
        self.pos_users = train["user"].to_numpy(np.int64)  # [n_pos]
        self.pos_items = train["item"].to_numpy(np.int64)  # [n_pos]
        self.pos_keys = np.unique(self.pos_users * self.n_items + self.pos_items)  # [n_pos] sorted
        full = np.bincount(self.pos_keys // self.n_items, minlength=split.n_users) >= self.n_items
        if strategy != "fixed" and full.any():
            raise ConfigError(f"{int(full.sum())} users (e.g. user {int(np.argmax(full))}) have "
                              "every item as a train positive: no negative can be drawn for them")
        self.cdf = None  # [n_items] cumulative weights of ratio sampling; None = uniform
        weights = None  # [n_items]
        if strategy == "ratio" and self.alpha != 0.0:
            weights = (split.item_popularity() + 1.0) ** self.alpha
        if split.cold_items:  # cold-start protocol: held-out items do not exist at train time
            weights = np.ones(self.n_items) if weights is None else weights
            weights[np.concatenate(list(split.cold_items.values()))] = 0.0
        if weights is not None:
            self.cdf = np.cumsum(weights / weights.sum())

    def probabilities(self) -> np.ndarray:
        """[n_items] float64: the probability of drawing each item before rejection."""
        if self.cdf is None:
            return np.full(self.n_items, 1.0 / self.n_items)
        return np.diff(self.cdf, prepend=0.0)

    def sample(self, users: np.ndarray) -> np.ndarray:
        """One negative item per entry of ``users`` [n] -> items [n] int64 (never a train positive).

        Rejection sampling redraws only rejected entries, for ``MAX_REJECTION_ROUNDS`` rounds;
        the few entries still rejected then (users owning most of the sampling mass) are drawn
        exactly from their allowed items by Gumbel-max, so the result always has the target
        distribution restricted to the user's non-positives.
        """
        users = np.asarray(users, dtype=np.int64)
        items = self._draw(users.size)  # [n]
        pending = np.flatnonzero(in_sorted(users * self.n_items + items, self.pos_keys))
        for _ in range(MAX_REJECTION_ROUNDS):
            if not pending.size:
                return items
            items[pending] = self._draw(pending.size)
            keys = users[pending] * self.n_items + items[pending]
            pending = pending[in_sorted(keys, self.pos_keys)]
        if pending.size:
            items[pending] = self._draw_excluding(users[pending])
        return items

    def epoch_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pointwise (BCE) training rows of one epoch, shuffled.

        Returns:
            ``users`` [n] int64, ``items`` [n] int64, ``labels`` [n] float32: every train positive
            (label 1) plus its ``n_negatives`` sampled negatives (label 0); for ``fixed``, the
            split's train rows as they are.
        """
        if self.strategy == "fixed":
            train = self.split.train
            users, items = train["user"].to_numpy(np.int64), train["item"].to_numpy(np.int64)
            labels = train["label"].to_numpy(np.float32)
        else:
            neg_users = np.repeat(self.pos_users, self.n_negatives)  # [n_pos * n_neg]
            users = np.concatenate([self.pos_users, neg_users])
            items = np.concatenate([self.pos_items, self.sample(neg_users)])
            labels = np.concatenate([np.ones(self.pos_users.size, np.float32),
                                     np.zeros(neg_users.size, np.float32)])
        order = self.rng.permutation(users.size)
        return users[order], items[order], labels[order]

    def epoch_triples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairwise (BPR) training triples of one epoch, shuffled.

        Returns:
            ``users``, ``pos_items``, ``neg_items``, each [n] int64: each train positive repeated
            ``n_negatives`` times with a sampled negative. For ``fixed``, each positive gets one
            of its user's train negatives at random; positives of users without any are dropped.
        """
        if self.strategy == "fixed":
            users, positives, negatives = self._fixed_triples()
        else:
            users = np.repeat(self.pos_users, self.n_negatives)  # [n]
            positives = np.repeat(self.pos_items, self.n_negatives)  # [n]
            negatives = self.sample(users)
        order = self.rng.permutation(users.size)
        return users[order], positives[order], negatives[order]

    # ---- internals ---------------------------------------------------------------------------
    def _draw(self, n: int) -> np.ndarray:
        """n items from the (unrejected) sampling distribution."""
        if self.cdf is None:
            return self.rng.integers(0, self.n_items, n, dtype=np.int64)
        drawn = np.searchsorted(self.cdf, self.rng.random(n) * self.cdf[-1], side="right")
        return np.minimum(drawn, self.n_items - 1).astype(np.int64)

    def _draw_excluding(self, users: np.ndarray) -> np.ndarray:
        """Exact draws outside each user's train positives: argmax of log p + Gumbel noise."""
        log_p = np.log(self.probabilities())  # [n_items]
        block = max(1, DENSE_CELLS // self.n_items)
        out = np.empty(users.size, dtype=np.int64)
        for start in range(0, users.size, block):  # a few blocks of entries, bounded memory
            rows = users[start:start + block]  # [b]
            scores = log_p + self.rng.gumbel(size=(rows.size, self.n_items))  # [b, n_items]
            scores[excluded_cells(self.pos_keys, rows, self.n_items)] = -np.inf
            out[start:start + block] = scores.argmax(axis=1)
        return out

    def _fixed_triples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        train = self.split.train
        negative = train["label"].to_numpy() == 0
        neg_users = train["user"].to_numpy(np.int64)[negative]  # [n_neg]
        order = np.argsort(neg_users, kind="stable")  # group by user (parts are sorted already)
        neg_users, neg_items = neg_users[order], train["item"].to_numpy(np.int64)[negative][order]
        counts = np.bincount(neg_users, minlength=self.split.n_users)  # [n_users]
        starts = np.cumsum(counts) - counts  # [n_users]
        has = counts[self.pos_users] > 0  # [n_pos]
        users, positives = self.pos_users[has], self.pos_items[has]
        pick = starts[users] + (self.rng.random(users.size) * counts[users]).astype(np.int64)
        return users, positives, neg_items[pick]
