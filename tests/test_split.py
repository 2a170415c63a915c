"""Leak-freedom and protocol tests of mmkgrec.data.split (toy MMKGs plus the real benchmarks)."""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import requires_data
from mmkgrec.data.dataset import build_mmkg
from mmkgrec.data.split import (
    Split,
    SplitConfig,
    apply_presplit,
    recbole_part_sizes,
    split,
)
from mmkgrec.errors import ConfigError, DataFormatError, MMKGRecError

SEEDS = (0, 1, 2)


# ---- fixtures ----------------------------------------------------------------------------------
def _toy(seed: int = 0):
    """~40 users x 60 items, values 0..9 (positive >= 5), tied timestamps, duplicate rows, plus
    a 'heavy' user (too few unseen items), a 'half' user (ranking path), a negatives-only user."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(40):
        chosen = rng.choice(60, size=rng.integers(1, 26), replace=False)
        rows += [(f"u{u}", f"i{i}", float(rng.integers(0, 10)), float(rng.integers(0, 30)))
                 for i in chosen]
    rows += [("heavy", f"i{i}", 9.0 if i < 40 else 1.0, float(i)) for i in range(55)]
    rows += [("half", f"i{i}", 8.0 if i < 20 else 2.0, float(i)) for i in range(30)]
    rows += [("cold", "i0", 1.0, 0.0), ("cold", "i1", 0.0, 1.0)]
    rows += rows[:5]  # repeated (user, item) rows
    frame = pd.DataFrame(rows, columns=["user", "item", "value", "timestamp"])
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return build_mmkg("toy", frame, threshold=5.0)


@pytest.fixture(scope="module")
def toy():
    return _toy()


def _keys(frame: pd.DataFrame, n_items: int) -> np.ndarray:
    return frame["user"].to_numpy() * n_items + frame["item"].to_numpy()


def _csr_keys(indptr, items, n_items, rows=None) -> np.ndarray:
    rows = np.arange(len(indptr) - 1) if rows is None else rows
    return np.repeat(rows, np.diff(indptr)) * n_items + items


def _pos(sp: Split, name: str) -> set:
    return set(_keys(sp.positives(name), sp.n_items).tolist())


def assert_leak_free(sp: Split, ds) -> None:
    """Every guarantee a model relies on; fails on any valid/test leak."""
    n_items = ds.n_items
    all_keys = np.concatenate([_keys(sp.part(p), n_items) for p in ("train", "valid", "test")])
    assert len(np.unique(all_keys)) == len(all_keys), "a pair is in two parts"
    positives = set(_keys(ds.positives(), n_items).tolist())
    train, valid, test = _pos(sp, "train"), _pos(sp, "valid"), _pos(sp, "test")
    assert train | valid | test == positives
    assert len(train) + len(valid) + len(test) == len(positives)

    indptr, items = sp.user_history()
    assert indptr.shape == (ds.n_users + 1,) and indptr[-1] == len(items)
    history = _csr_keys(indptr, items, n_items)
    assert set(history.tolist()) == train and len(history) == len(train)
    assert not (set(history.tolist()) & (valid | test))
    assert (np.diff(history) > 0).all(), "items must be sorted per user"

    assert np.array_equal(sp.item_popularity(),
                          np.bincount(np.array(sorted(train)) % n_items, minlength=n_items))

    exclude_valid = set(_csr_keys(*sp.ranking_exclusions("valid"), n_items).tolist())
    exclude_test = set(_csr_keys(*sp.ranking_exclusions("test"), n_items).tolist())
    assert exclude_valid == train and not exclude_valid & valid
    assert exclude_test == train | valid and not exclude_test & test

    for stage, truth in (("valid", valid), ("test", test)):
        users, ptr, gt_items = sp.ground_truth(stage)
        assert (np.diff(ptr) > 0).all() and (np.diff(users) > 0).all()
        assert set(_csr_keys(ptr, gt_items, n_items, users).tolist()) == truth


# ---- topk -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temporal", [False, True])
def test_topk_is_leak_free(toy, seed, temporal):
    sp = split(toy, "topk", seed=seed, temporal=temporal)
    assert sp.protocol == "topk" and list(sp.train.columns) == ["user", "item"]
    assert all(sp.part(p)["user"].dtype == np.int64 for p in ("train", "valid", "test"))
    assert_leak_free(sp, toy)


def test_item_popularity_sees_train_only(toy):
    sp = split(toy, "topk", seed=0)
    before = sp.item_popularity()
    test = sp.test.copy()
    test.loc[0, "item"] = (test.loc[0, "item"] + 1) % toy.n_items
    assert np.array_equal(dataclasses.replace(sp, test=test).item_popularity(), before)
    train = sp.train.copy()
    train.loc[0, "item"] = (train.loc[0, "item"] + 1) % toy.n_items
    assert not np.array_equal(dataclasses.replace(sp, train=train).item_popularity(), before)


def _counts_dataset(counts: list[int]):
    rows = [(f"u{u}", f"i{i}", 1.0, float(i)) for u, n in enumerate(counts) for i in range(n)]
    return build_mmkg("counts", pd.DataFrame(rows, columns=["user", "item", "value", "timestamp"]),
                      threshold=1.0)


def test_topk_sizes_follow_recbole_rule():
    # Hand-computed from RecBole's _calcu_split_ids with 8:1:1 (train, valid, test).
    expected = {1: (1, 0, 0), 2: (1, 0, 1), 3: (1, 1, 1), 5: (3, 1, 1), 10: (8, 1, 1),
                11: (9, 1, 1), 20: (16, 2, 2), 25: (21, 2, 2)}
    ns = list(expected)
    ds = _counts_dataset(ns)
    for seed in SEEDS:
        sp = split(ds, "topk", seed=seed)
        got = [np.bincount(sp.part(p)["user"], minlength=len(ns))
               for p in ("train", "valid", "test")]
        assert [tuple(int(g[u]) for g in got) for u in range(len(ns))] == list(expected.values())
    train, valid, test = recbole_part_sizes(np.array(ns), (0.6, 0.2, 0.2))
    assert list(zip(train[:4], valid[:4], test[:4])) == [(1, 0, 0), (1, 0, 1), (1, 1, 1), (3, 1, 1)]


def test_topk_temporal_puts_latest_in_test():
    ds = _counts_dataset([10, 3, 2, 1])  # item i at time i, rows shuffled below
    inter = ds.interactions.sample(frac=1.0, random_state=0).reset_index(drop=True)
    ds = dataclasses.replace(ds, interactions=inter)
    for seed in SEEDS:  # temporal splits ignore the seed
        sp = split(ds, "topk", seed=seed, temporal=True)
        assert sp.test.values.tolist() == [[0, 9], [1, 2], [2, 1]]
        assert sp.valid.values.tolist() == [[0, 8], [1, 1]]


def test_topk_temporal_order_with_ties(toy):
    sp = split(toy, "topk", seed=0, temporal=True)
    times = toy.positives().set_index(["user", "item"])["timestamp"]
    last = {p: sp.part(p).join(times, on=["user", "item"]).groupby("user")["timestamp"]
            for p in ("train", "valid", "test")}
    train_max, valid_min, valid_max, test_min = (
        last["train"].max(), last["valid"].min(), last["valid"].max(), last["test"].min())
    assert (valid_min >= train_max.reindex(valid_min.index)).all()
    assert (test_min >= valid_max.reindex(test_min.index).fillna(-1)).all()
    assert (test_min >= train_max.reindex(test_min.index)).all()


def test_topk_ratios_respected(toy):
    counts = np.bincount(toy.positives()["user"], minlength=toy.n_users)
    for ratios in [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.5, 0.3, 0.2)]:
        sp = split(toy, "topk", seed=0, ratios=ratios)
        for part, ratio in zip(("valid", "test"), ratios[1:]):
            got = np.bincount(sp.part(part)["user"], minlength=toy.n_users)
            low = np.floor(ratio * counts)
            assert ((got == low) | (got == low + 1)).all()  # floor, +1 only when 0 < r n < 1
            assert (got[low >= 1] == low[low >= 1]).all()


# ---- ctr --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_ctr_is_leak_free_and_negatives_unseen(toy, seed):
    sp = split(toy, "ctr", seed=seed)
    assert list(sp.train.columns) == ["user", "item", "label"]
    assert sp.train["label"].dtype == np.float32
    assert_leak_free(sp, toy)
    labelled = pd.concat([sp.train, sp.valid, sp.test], ignore_index=True)
    negatives = labelled[labelled["label"] == 0]
    seen = set(_keys(toy.interactions, toy.n_items).tolist())  # any value, not only positives
    assert not set(_keys(negatives, toy.n_items).tolist()) & seen
    per_user = negatives.groupby("user").size()
    positives = toy.positives().groupby("user").size()
    heavy, half, cold = (int(np.flatnonzero(toy.users == name)[0])
                         for name in ("heavy", "half", "cold"))
    assert per_user[heavy] == toy.n_items - 55  # only 5 never-interacted items exist
    assert per_user[half] == positives[half] == 20  # 20 of 30 unseen: the ranking path
    assert cold not in per_user.index
    others = positives.index.difference([heavy])
    assert (per_user.reindex(others) == positives[others]).all()  # 1:1 everywhere else
    assert any("fewer never-interacted items" in note for note in sp.notes)


def _expected_negatives(ds, neg_ratio: int) -> pd.Series:
    """Per user with positives: min(neg_ratio * positives, never-interacted items)."""
    positives = ds.positives().groupby("user").size()
    seen = ds.interactions.drop_duplicates(["user", "item"]).groupby("user").size()
    return np.minimum(neg_ratio * positives, ds.n_items - seen.reindex(positives.index))


def _negatives_per_user(sp: Split) -> pd.Series:
    labelled = pd.concat([sp.train, sp.valid, sp.test], ignore_index=True)
    return labelled[labelled["label"] == 0].groupby("user").size()


@pytest.mark.parametrize("rounds", [0, 1])
def test_ctr_rank_fallback_after_rejection_cap(toy, monkeypatch, rounds):
    # Slots that rejection sampling leaves empty are filled by ranking, never re-drawing an item.
    # sys.modules: mmkgrec.data may re-export the function split under the module's name
    monkeypatch.setattr(sys.modules["mmkgrec.data.split"], "_MAX_REJECTION_ROUNDS", rounds)
    expected = _expected_negatives(toy, 2)
    for seed in SEEDS:
        sp = split(toy, "ctr", seed=seed, neg_ratio=2)
        assert_leak_free(sp, toy)
        assert _negatives_per_user(sp).reindex(expected.index).equals(expected)


def test_ctr_sizes_and_neg_ratio(toy):
    n_pos = len(toy.positives())
    sp = split(toy, "ctr", seed=0, ratios=(0.7, 0.2, 0.1), neg_ratio=2)
    n = sum(len(sp.part(p)) for p in ("train", "valid", "test"))
    assert len(sp.valid) == math.floor(0.2 * n) and len(sp.test) == math.floor(0.1 * n)
    negatives = _negatives_per_user(sp)
    heavy = int(np.flatnonzero(toy.users == "heavy")[0])
    expected = _expected_negatives(toy, 2)
    assert (negatives.reindex(expected.index) == expected).all() and n == n_pos + expected.sum()
    assert negatives[heavy] == 5
    assert_leak_free(sp, toy)


@requires_data("lastfm-kgcn")
def test_ctr_on_lastfm_is_balanced_and_leak_free(lastfm):
    sp = split(lastfm, "ctr", seed=0)
    assert_leak_free(sp, lastfm)
    labels = np.concatenate([sp.part(p)["label"].to_numpy() for p in ("train", "valid", "test")])
    assert (labels == 1).sum() == (labels == 0).sum() == 21173
    for part, ratio in (("valid", 0.2), ("test", 0.2)):
        assert len(sp.part(part)) == math.floor(ratio * len(labels))
    negatives = pd.concat([sp.part(p) for p in ("train", "valid", "test")]).query("label == 0")
    seen = _keys(lastfm.interactions, lastfm.n_items)
    assert not np.isin(_keys(negatives, lastfm.n_items), seen).any()


# ---- seeds, options ---------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["ctr", "topk"])
def test_seed_determinism(toy, protocol):
    a, b, c = (split(toy, protocol, seed=s) for s in (7, 7, 8))
    assert a.fingerprint() == b.fingerprint() and all(
        a.part(p).equals(b.part(p)) for p in ("train", "valid", "test"))
    assert a.fingerprint() != c.fingerprint() and not a.test.equals(c.test)


@pytest.mark.parametrize("options", [
    {"protocol": "random"},
    {"ratios": (0.8, 0.1, 0.2)},
    {"ratios": (0.9, 0.1)},
    {"ratios": (1.0, 0.0, 0.0)},
    {"ratios": (1.2, -0.1, -0.1)},
    {"ratios": (float("nan"), 0.5, 0.5)},
    {"protocol": "ctr", "neg_ratio": 0},
    {"protocol": "ctr", "neg_ratio": 1.5},
    {"protocol": "ctr", "temporal": True},
    {"protocol": "topk", "neg_ratio": 2},
    {"seed": -1},
    {"seed": "zero"},
])
def test_invalid_options_raise_config_error(toy, options):
    with pytest.raises(ConfigError):
        split(toy, **options)


def test_config_and_stage_errors(toy):
    with pytest.raises(ConfigError, match="unknown_option"):
        SplitConfig.parse(unknown_option=1)
    assert SplitConfig.parse(protocol="ctr").part_ratios() == (0.6, 0.2, 0.2)
    no_time = dataclasses.replace(toy, interactions=toy.interactions.drop(columns="timestamp"))
    with pytest.raises(ConfigError, match="timestamps"):
        split(no_time, "topk", temporal=True)
    sp = split(toy, "topk")
    with pytest.raises(ConfigError):
        sp.ranking_exclusions("train")
    with pytest.raises(ConfigError):
        sp.ground_truth("dev")
    no_positives = dataclasses.replace(toy, threshold=100.0)
    with pytest.raises(MMKGRecError, match="no positives"):
        split(no_positives)


# ---- save / load ------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["ctr", "topk"])
def test_save_load_round_trip_and_fingerprint_check(toy, tmp_path, protocol):
    sp = split(toy, protocol, seed=3)
    sp.save(tmp_path / "s")
    back = Split.load(tmp_path / "s", toy)
    assert back.fingerprint() == sp.fingerprint() and back.seed == 3 and back.notes == sp.notes
    assert all(back.part(p).equals(sp.part(p)) for p in ("train", "valid", "test"))
    with pytest.raises(DataFormatError, match="made from dataset"):
        Split.load(tmp_path / "s", _toy(seed=1))
    tampered = sp.train.copy()
    tampered.loc[0, "item"] = (tampered.loc[0, "item"] + 1) % toy.n_items
    tampered = tampered.drop_duplicates(["user", "item"])
    tampered.to_parquet(tmp_path / "s" / "train.parquet", index=False)
    with pytest.raises(DataFormatError):
        Split.load(tmp_path / "s")
    with pytest.raises(DataFormatError, match="not found"):
        Split.load(tmp_path / "missing")


# ---- pre-splits -------------------------------------------------------------------------------
def _write_presplit(sp: Split, ds, directory, extra: dict[str, list[str]] | None = None):
    directory.mkdir(parents=True, exist_ok=True)
    for part in ("train", "valid", "test"):
        frame = sp.part(part)
        lines = ["user_id\titem_id\trating"] + [
            f"{u}\t{i}\t5" for u, i in zip(ds.users[frame["user"]], ds.items[frame["item"]])]
        lines += (extra or {}).get(part, [])
        (directory / f"{part}.tsv").write_text("\n".join(lines) + "\n")
    return directory


def test_presplit_round_trip(toy, tmp_path):
    sp = split(toy, "topk", seed=5)
    back = apply_presplit(toy, _write_presplit(sp, toy, tmp_path / "p"))
    assert back.fingerprint() == sp.fingerprint() and back.seed is None
    assert any("covers all" in note for note in back.notes)
    assert_leak_free(back, toy)


def test_presplit_notes_omitted_positives(toy, tmp_path):
    sp = split(toy, "topk", seed=5)
    smaller = dataclasses.replace(sp, test=sp.test.iloc[2:])
    back = apply_presplit(toy, _write_presplit(smaller, toy, tmp_path / "p"))
    assert any("omits 2 of" in note for note in back.notes)


def _user_item(ds, positive: bool, interacted: bool = True) -> str:
    inter = ds.interactions
    if not interacted:
        seen = set(_keys(inter, ds.n_items).tolist())
        key = next(k for k in range(ds.n_users * ds.n_items) if k not in seen)
        return f"{ds.users[key // ds.n_items]}\t{ds.items[key % ds.n_items]}\t1"
    keys = set(_keys(ds.positives(), ds.n_items).tolist())
    row = next(r for r in inter.itertuples() if (r.user * ds.n_items + r.item in keys) == positive)
    return f"{ds.users[row.user]}\t{ds.items[row.item]}\t1"


@pytest.mark.parametrize("case, match", [
    ("unknown_user", "unknown user id 'nobody'"),
    ("unknown_item", "unknown item id 'no-such-item'"),
    ("not_positive", "not a positive"),
    ("not_interaction", "not an interaction"),
    ("duplicate_across", "listed twice"),
    ("duplicate_within", "listed twice"),
])
def test_presplit_errors_name_file_and_line(toy, tmp_path, case, match):
    sp = split(toy, "topk", seed=5)
    train_pair = f"{toy.users[sp.train['user'].iloc[0]]}\t{toy.items[sp.train['item'].iloc[0]]}\t1"
    test_pair = f"{toy.users[sp.test['user'].iloc[0]]}\t{toy.items[sp.test['item'].iloc[0]]}\t1"
    bad_line = {
        "unknown_user": f"nobody\t{toy.items[0]}\t1",
        "unknown_item": f"{toy.users[0]}\tno-such-item\t1",
        "not_positive": _user_item(toy, positive=False),
        "not_interaction": _user_item(toy, positive=False, interacted=False),
        "duplicate_across": train_pair,
        "duplicate_within": test_pair,
    }[case]
    directory = _write_presplit(sp, toy, tmp_path / case, {"test": [bad_line]})
    with pytest.raises(DataFormatError, match=match) as err:
        apply_presplit(toy, directory)
    assert err.value.path.endswith("test.tsv")
    assert err.value.line == len(sp.test) + 2  # header + test rows, 1-based
    if case.startswith("duplicate"):
        first = "train.tsv, line 2" if case == "duplicate_across" else "test.tsv, line 2"
        assert f"first in {first}" in str(err.value)


# ---- real benchmarks --------------------------------------------------------------------------
@pytest.mark.parametrize("fixture, folder, sizes, n_positives", [
    ("lastfm", "lastfm-kgcn", (17350, 1907, 1916), 21173),
    ("musicd", "music-d", (27261, 3601, 4257), 35119),
])
def test_real_presplits(request, real_root, fixture, folder, sizes, n_positives):
    directory = real_root / "recbole-splits" / folder
    if not directory.is_dir():
        pytest.skip(f"{directory} not found")
    ds = request.getfixturevalue(fixture)
    pre = apply_presplit(ds, directory)
    assert tuple(len(pre.part(p)) for p in ("train", "valid", "test")) == sizes
    assert sum(sizes) == n_positives == len(ds.positives())
    assert any(f"covers all {n_positives}" in note for note in pre.notes)
    assert_leak_free(pre, ds)
    # RecBole made these files: our random split must give every user the same part sizes.
    ours = split(ds, "topk", seed=0)
    for part in ("train", "valid", "test"):
        assert np.array_equal(np.bincount(ours.part(part)["user"], minlength=ds.n_users),
                              np.bincount(pre.part(part)["user"], minlength=ds.n_users))
    assert_leak_free(ours, ds)


def test_synthetic_if_available():
    try:
        from mmkgrec.data import load
        ds = load("synthetic-tiny")
    except (ImportError, MMKGRecError) as err:  # the generator lands separately
        pytest.skip(f"synthetic-tiny not available yet: {err}")
    for seed in SEEDS:
        assert_leak_free(split(ds, "ctr", seed=seed), ds)
        assert_leak_free(split(ds, "topk", seed=seed), ds)
        if ds.has_timestamps:
            assert_leak_free(split(ds, "topk", seed=seed, temporal=True), ds)


def test_positive_candidates_are_the_items_with_a_positive_in_the_split(tiny_topk):
    """topk's default candidate set (RecBole's): items with a positive in train, valid or test.
    An item without one is never ranked; with candidates="all" it is."""
    from dataclasses import replace

    import torch

    from mmkgrec.evaluate.ranking import rank_stage

    ds, sp = tiny_topk
    assert sp.candidates == "positive"
    dropped = np.array([0, 5])  # items whose positives we remove from every part
    parts = {name: getattr(sp, name)[~getattr(sp, name)["item"].isin(dropped)]
             .reset_index(drop=True) for name in ("train", "valid", "test")}
    pruned = replace(sp, **parts)
    expected = np.setdiff1d(np.unique(np.concatenate(
        [parts[n]["item"].to_numpy() for n in parts])), dropped)
    np.testing.assert_array_equal(pruned.candidate_items("test"), expected)
    assert pruned.with_candidates("all").candidate_items("test") is None

    class ByIdScorer(torch.nn.Module):  # item i scores -i: item 0 would be first everywhere
        def score_users(self, users):
            return -torch.arange(ds.n_items, dtype=torch.float32).expand(len(users), -1).clone()

        def prepare_ranking(self):
            pass

    users, _, _ = pruned.ground_truth("test")
    top = rank_stage(ByIdScorer(), pruned, "test", users, 10, 64, "cpu")
    assert not np.isin(top, dropped).any()
    top_all = rank_stage(ByIdScorer(), pruned.with_candidates("all"), "test", users, 10, 64, "cpu")
    assert (top_all[:, 0] == 0).all()  # nobody knows item 0 any more: first for everyone
    # the candidate set is part of the split's identity (and survives save / load)
    assert pruned.fingerprint() != pruned.with_candidates("all").fingerprint()
