"""Negative sampling: exclusion of train positives, ratio sampling's distribution, `fixed`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from mmkgrec.data import load
from mmkgrec.data.split import Split, split
from mmkgrec.errors import ConfigError
from mmkgrec.graph.negatives import NegativeSampler


@pytest.fixture(scope="module")
def tiny():
    return load("synthetic-tiny")


@pytest.fixture(scope="module")
def topk(tiny):
    return split(tiny, "topk", seed=0)


@pytest.fixture(scope="module")
def ctr(tiny):
    return split(tiny, "ctr", seed=0)


def keys(split_: Split, users, items) -> np.ndarray:
    return np.asarray(users) * split_.n_items + np.asarray(items)


def train_keys(split_: Split) -> set:
    train = split_.train_positives()
    return set(keys(split_, train["user"], train["item"]).tolist())


def popularity_split(n_items: int = 40, n_users: int = 60, seed: int = 0) -> Split:
    """A topk split where item i has i train positives (random users >= 1); user 0 has none."""
    rng = np.random.default_rng(seed)
    counts = np.arange(n_items)  # [n_items]
    items = np.repeat(np.arange(n_items), counts)
    users = np.concatenate([rng.permutation(np.arange(1, n_users))[:c] for c in counts])
    train = pd.DataFrame({"user": users.astype(np.int64), "item": items.astype(np.int64)})
    empty = pd.DataFrame({"user": np.zeros(0, np.int64), "item": np.zeros(0, np.int64)})
    return Split(protocol="topk", n_users=n_users, n_items=n_items, train=train,
                 valid=empty.copy(), test=empty.copy())


@pytest.mark.parametrize("strategy,alpha", [("uniform", 0.75), ("ratio", 0.75), ("ratio", -1.0),
                                            ("ratio", 4.0)])
def test_negatives_are_never_a_train_positive(topk, strategy, alpha):
    sampler = NegativeSampler(topk, strategy, alpha, n_negatives=5, rng=0)
    positives = train_keys(topk)
    users, items, labels = sampler.epoch_pairs()
    negative = labels == 0
    assert negative.sum() == 5 * len(topk.train)
    assert not set(keys(topk, users[negative], items[negative]).tolist()) & positives
    u, pos, neg = sampler.epoch_triples()
    assert len(u) == 5 * len(topk.train)
    assert set(keys(topk, u, pos).tolist()) == positives
    assert not set(keys(topk, u, neg).tolist()) & positives


def test_epoch_pairs_hold_every_positive_once_shuffled(topk):
    users, items, labels = NegativeSampler(topk, "uniform", n_negatives=2, rng=1).epoch_pairs()
    assert users.dtype == np.int64 and items.dtype == np.int64 and labels.dtype == np.float32
    positive = labels == 1
    assert sorted(keys(topk, users[positive], items[positive]).tolist()) == sorted(
        train_keys(topk))
    assert (np.diff(users) < 0).any()  # shuffled, not in split order
    again = NegativeSampler(topk, "uniform", n_negatives=2, rng=1).epoch_pairs()
    assert all(np.array_equal(a, b) for a, b in zip((users, items, labels), again))


@pytest.mark.parametrize("alpha", [0.75, -1.0])
def test_ratio_frequencies_follow_smoothed_popularity_power(alpha):
    sp = popularity_split()
    sampler = NegativeSampler(sp, "ratio", alpha=alpha, rng=0)
    expected = (np.arange(sp.n_items) + 1.0) ** alpha
    expected /= expected.sum()
    np.testing.assert_allclose(sampler.probabilities(), expected, rtol=1e-12)
    n = 200_000
    drawn = sampler.sample(np.zeros(n, np.int64))  # user 0 has no positive: no rejection
    frequency = np.bincount(drawn, minlength=sp.n_items) / n
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert (np.abs(frequency - expected) < 5 * sigma + 1e-4).all()
    assert np.corrcoef(frequency, expected)[0, 1] > 0.99


def test_alpha_minus_one_favours_rare_items_and_zero_is_uniform():
    sp = popularity_split()
    popularity = sp.item_popularity()
    users = np.zeros(50_000, np.int64)
    rare = NegativeSampler(sp, "ratio", alpha=-1.0, rng=0).sample(users)
    hard = NegativeSampler(sp, "ratio", alpha=0.75, rng=0).sample(users)
    uniform = NegativeSampler(sp, "uniform", rng=0).sample(users)
    assert popularity[rare].mean() < popularity[uniform].mean() < popularity[hard].mean()
    flat = NegativeSampler(sp, "ratio", alpha=0.0, rng=0)
    np.testing.assert_allclose(flat.probabilities(), 1.0 / sp.n_items)
    assert np.array_equal(flat.sample(users), uniform)  # alpha = 0 IS uniform sampling


def test_popularity_uses_train_only(topk):
    changed = dataclasses.replace(topk, valid=topk.valid.iloc[:3], test=topk.test.iloc[::2])
    a = NegativeSampler(topk, "ratio", alpha=0.75, rng=5)
    b = NegativeSampler(changed, "ratio", alpha=0.75, rng=5)
    np.testing.assert_array_equal(a.probabilities(), b.probabilities())
    for x, y in zip(a.epoch_pairs(), b.epoch_pairs()):
        np.testing.assert_array_equal(x, y)
    more_train = dataclasses.replace(topk, train=pd.concat([topk.train, topk.test]))
    assert not np.array_equal(NegativeSampler(more_train, "ratio").probabilities(),
                              a.probabilities())


def test_fixed_is_ctr_only_and_uses_the_split_negatives(topk, ctr):
    with pytest.raises(ConfigError, match="ctr"):
        NegativeSampler(topk, "fixed")
    sampler = NegativeSampler(ctr, "fixed", rng=0)
    users, items, labels = sampler.epoch_pairs()
    train = ctr.train
    got = pd.DataFrame({"user": users, "item": items, "label": labels})
    pd.testing.assert_frame_equal(got.sort_values(["user", "item"]).reset_index(drop=True),
                                  train.reset_index(drop=True))
    u, pos, neg = sampler.epoch_triples()
    fixed = train[train["label"] == 0]
    negatives = set(keys(ctr, fixed["user"], fixed["item"]).tolist())
    assert set(keys(ctr, u, neg).tolist()) <= negatives  # a train negative of the same user
    assert set(keys(ctr, u, pos).tolist()) <= train_keys(ctr)


def with_user0_positives(sp: Split, items: np.ndarray) -> Split:
    extra = pd.DataFrame({"user": np.zeros(len(items), np.int64), "item": items.astype(np.int64)})
    return dataclasses.replace(sp, train=pd.concat([sp.train, extra], ignore_index=True))


def test_rejection_is_bounded_then_exact():
    sp = popularity_split(n_items=30)
    with pytest.raises(ConfigError, match="every item"):
        NegativeSampler(with_user0_positives(sp, np.arange(30)), "uniform")
    # user 0 likes items 1..29: only item 0 (weight 1 vs >= 2**12) is allowed; rejection alone
    # would almost never find it within the round cap, the exact fallback always does
    almost = with_user0_positives(sp, np.arange(1, 30))
    assert (NegativeSampler(almost, "ratio", alpha=12.0, rng=0).sample(np.zeros(500)) == 0).all()
    assert (NegativeSampler(almost, "uniform", rng=0).sample(np.zeros(500)) == 0).all()


def test_exact_fallback_keeps_the_restricted_distribution():
    sp = with_user0_positives(popularity_split(n_items=40), np.arange(20, 40))
    sampler = NegativeSampler(sp, "ratio", alpha=3.0, rng=0)
    allowed = sampler.probabilities()[:20] / sampler.probabilities()[:20].sum()  # items 0..19
    n = 100_000
    drawn = sampler.sample(np.zeros(n, np.int64))
    assert drawn.max() < 20
    frequency = np.bincount(drawn, minlength=20) / n
    sigma = np.sqrt(allowed * (1 - allowed) / n)
    assert (np.abs(frequency - allowed) < 5 * sigma + 1e-4).all()
    mixed = sampler.sample(np.tile([0, 5], 1000))  # other users' entries are untouched
    assert mixed[::2].max() < 20 and mixed[1::2].max() >= 20


def test_bad_options_raise_config_error(topk):
    with pytest.raises(ConfigError):
        NegativeSampler(topk, "popular")
    with pytest.raises(ConfigError):
        NegativeSampler(topk, "uniform", n_negatives=0)
    with pytest.raises(ConfigError):
        NegativeSampler(topk, "ratio", alpha=float("nan"))
