"""Sampling on int64 keys ``user * n_items + item``: membership in sorted keys, the cells of a
dense block to exclude, and the ctr protocol's evaluation negatives (distinct never-interacted
items per user). Training negatives (:class:`mmkgrec.graph.negatives.NegativeSampler`) build on
the same helpers.
"""

from __future__ import annotations

import numpy as np

from mmkgrec.data.csr import segments


def in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """[len(keys)] bool: whether each key is in the sorted array ``sorted_keys``."""
    if not sorted_keys.size:
        return np.zeros(keys.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[at] == keys


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort-based; faster than np.unique's hashing on int64 keys)."""
    keys = np.sort(keys)
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if keys.size else keys


def first_occurrence(keys: np.ndarray) -> np.ndarray:
    """[len(keys)] bool: True at the first occurrence of each value."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    first = np.empty(keys.shape, dtype=bool)
    first[order] = np.concatenate([[True], ranked[1:] != ranked[:-1]]) if keys.size else []
    return first


def excluded_cells(sorted_keys: np.ndarray, rows: np.ndarray, n_items: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The cells of a dense ``[len(rows), n_items]`` block that hold a key of ``sorted_keys``
    (``user * n_items + item``, sorted): ``(block_row [m], item [m])``, for any ``rows`` (users,
    in any order, repeats allowed)."""
    lo = np.searchsorted(sorted_keys, rows * n_items)  # [b] first key of each row's user
    hi = np.searchsorted(sorted_keys, (rows + 1) * n_items)  # [b] one past its last
    block_row, keys = segments(sorted_keys, lo, hi - lo)  # [m] each
    return block_row, keys % n_items


def sample_unseen(seen: np.ndarray, need: np.ndarray, n_items: int, rng: np.random.Generator,
                  rounds: int = 64, rank_block: int = 1 << 24) -> tuple[np.ndarray, list[str]]:
    """Draw ``need[u]`` distinct items per user outside the sorted ``seen`` keys.

    Rejection sampling on keys ``user * n_items + item``, redrawing only rejected slots. Users who
    need at least half their unseen items (and slots still empty after the round cap) are filled
    by ranking random scores over all items instead, which is exact and cheap for them.
    ``rounds``: the round cap; ``rank_block``: elements of one block of random scores.

    Returns:
        the negative keys [n_neg] (grouped by method, unshuffled) and notes on users who
        got fewer than asked.
    """
    n_users = len(need)
    unseen = n_items - np.bincount(seen // n_items, minlength=n_users)  # [n_users]
    take = np.minimum(need, unseen)  # [n_users]
    notes = []
    short = need > take
    if short.any():
        notes.append(
            f"{int(short.sum())} users have fewer never-interacted items than the negatives "
            f"asked: they got all of theirs ({int((need - take).sum())} negatives missing, "
            "so labels are not exactly balanced)")
    by_rank = take * 2 > unseen  # [n_users]
    pending = np.repeat(np.arange(n_users), np.where(by_rank, 0, take))  # [n_slots] slot owners
    accepted = np.empty(0, dtype=np.int64)  # sorted keys
    for _ in range(rounds):
        if not pending.size:
            break
        keys = pending * n_items + rng.integers(0, n_items, pending.size)  # [n_pending]
        ok = ~in_sorted(keys, seen) & ~in_sorted(keys, accepted) & first_occurrence(keys)
        # both runs sorted: the stable sort (timsort) merges them in linear time
        accepted = np.sort(np.concatenate([accepted, np.sort(keys[ok])]), kind="stable")
        pending = pending[~ok]
    rest = np.where(by_rank, take, 0) + np.bincount(pending, minlength=n_users)  # [n_users]
    excluded = np.sort(np.concatenate([seen, accepted]), kind="stable")
    ranked = sample_by_rank(rest, excluded, n_items, rng, rank_block)
    return np.concatenate([accepted, ranked]), notes


def sample_by_rank(count: np.ndarray, excluded: np.ndarray, n_items: int,
                   rng: np.random.Generator, rank_block: int = 1 << 24) -> np.ndarray:
    """Per user u, the ``count[u]`` items of lowest random score outside the sorted ``excluded``."""
    users = np.flatnonzero(count)
    block = max(1, rank_block // max(n_items, 1))
    out = [np.empty(0, dtype=np.int64)]
    for start in range(0, users.size, block):  # a few blocks of users, bounded memory
        rows = users[start:start + block]  # [b] ascending
        scores = rng.random((rows.size, n_items))  # [b, n_items]
        scores[excluded_cells(excluded, rows, n_items)] = 2.0  # ranked after every allowed item
        ranked = np.argsort(scores, axis=1)  # [b, n_items]
        keep = np.arange(n_items)[None, :] < count[rows][:, None]  # [b, n_items]
        out.append((rows[:, None] * n_items + ranked)[keep])
    return np.concatenate(out).astype(np.int64)
