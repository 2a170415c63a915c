"""The embedded synthetic music MMKG: determinism, structure, signal, config and id conventions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmkgrec.data import synthetic
from mmkgrec.data.dataset import build_mmkg
from mmkgrec.data.synthetic import GENRES, PRESETS, TAGS, SyntheticConfig, _names, generate
from mmkgrec.errors import ConfigError


@pytest.fixture(scope="module")
def tiny():
    return generate("tiny")


@pytest.fixture(scope="module")
def small():
    return generate("small")


def _cosine(matrix: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x, y = matrix[a], matrix[b]
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def test_same_seed_same_data_other_seed_other_data(tiny):
    again = generate("tiny", seed=0)
    assert again.fingerprint() == tiny.fingerprint() and again.equals(tiny)
    assert tiny.provenance[0]["sha256"] == tiny.fingerprint()
    assert generate("tiny", seed=1).fingerprint() != tiny.fingerprint()


def test_chunked_threaded_sampling_does_not_depend_on_the_thread_count(monkeypatch):
    monkeypatch.setattr(synthetic, "CHUNK_CELLS", 2_000)  # tiny: 16 users per chunk, 4 chunks
    monkeypatch.setattr(synthetic.os, "cpu_count", lambda: 1)
    serial = generate("tiny")
    monkeypatch.setattr(synthetic.os, "cpu_count", lambda: 4)
    threaded = generate("tiny")
    assert serial.equals(threaded)
    users, times = threaded.interactions["user"].to_numpy(), threaded.interactions["timestamp"]
    assert (np.diff(users) >= 0).all() and (np.diff(times)[np.diff(users) == 0] > 0).all()


def test_presets_validate_and_have_the_promised_sizes():
    for name, config in PRESETS.items():
        assert SyntheticConfig.model_validate(config.model_dump()) == config, name
    sizes = {n: (c.n_users, c.n_items, c.n_users * c.interactions_per_user)
             for n, c in PRESETS.items()}
    assert sizes["small"] == (1_000, 2_000, 50_000)
    assert sizes["large"][2] >= 5_000_000


def test_tiny_and_small_are_consistent(tiny, small):
    for ds, preset in ((tiny, "tiny"), (small, "small")):
        ds.validate()
        config = PRESETS[preset]
        assert ds.name == f"synthetic-{preset}"
        assert (ds.n_users, ds.n_items) == (config.n_users, config.n_items)
        rows = len(ds.interactions)
        assert abs(rows / ds.n_users - config.interactions_per_user) < 0.1 * config.interactions_per_user
        assert ds.meta["synthetic n_users"] == config.n_users and ds.meta["synthetic seed"] == 0
        assert all(isinstance(v, (int, float, str)) for v in ds.meta.values())


def test_interactions_are_play_counts_with_increasing_time(small):
    inter = small.interactions
    assert list(inter.columns) == ["user", "item", "value", "timestamp"]
    plays = inter["value"].to_numpy()
    assert plays.min() >= 1 and (plays == np.round(plays)).all()
    assert 0.6 < small.positive_mask().mean() < 0.95  # most, not all, rows are positives
    assert not inter.duplicated(["user", "item"]).any()  # drawn without replacement
    users = inter["user"].to_numpy()
    assert (np.diff(users) >= 0).all() and np.array_equal(np.unique(users), np.arange(small.n_users))
    same_user = np.diff(users) == 0
    assert (np.diff(inter["timestamp"].to_numpy())[same_user] > 0).all()
    activity = np.bincount(users)
    assert activity.min() >= PRESETS["small"].min_interactions_per_user
    assert activity.max() > 10 * np.median(activity)  # heavy-tailed activity


def test_popularity_is_heavy_tailed(small):
    counts = np.sort(np.bincount(small.interactions["item"], minlength=small.n_items))[::-1]
    assert counts[: small.n_items // 10].sum() > 0.3 * counts.sum()


def test_modalities_differ_in_width_and_respect_the_missing_rate(small):
    dims = small.modality_dims()
    assert dims == {"audio": 40, "text": 32, "image": 48, "sentiment": 4}
    for name, matrix in small.modalities.items():
        mask = small.modality_masks[name]
        assert abs((~mask).mean() - PRESETS["small"].missing_rate) < 0.03, name
        assert not matrix[~mask].any() and (np.abs(matrix[mask]).sum(1) > 0).all()
    half = generate("tiny", missing_rate=0.5, modalities={"audio": 8})
    assert half.modality_dims() == {"audio": 8}
    assert 0.35 < (~half.modality_masks["audio"]).mean() < 0.65


def test_content_carries_artist_signal(small):
    artist = small.item_attrs["artist"].to_numpy()
    audio, present = small.modalities["audio"], small.modality_masks["audio"]
    items = np.flatnonzero(present)
    rng = np.random.default_rng(0)
    a, b = rng.choice(items, 20_000), rng.choice(items, 20_000)
    pairs = pd.DataFrame({"item": items, "artist": artist[items]})
    shared = pairs.merge(pairs, on="artist")
    shared = shared[shared["item_x"] != shared["item_y"]]
    same = _cosine(audio, shared["item_x"].to_numpy(), shared["item_y"].to_numpy())
    other = _cosine(audio, a, b)
    assert same.mean() > other.mean() + 0.3


def test_kg_links_every_song_to_its_artist_album_and_tags(tiny):
    relation = {name: i for i, name in enumerate(tiny.relations)}
    assert set(relation) == {"on_album", "by_artist", "tagged", "album_by", "has_genre",
                             "similar_to"}
    triples = tiny.triples
    heads, rels, tails = triples[:, 0], triples[:, 1], triples[:, 2]
    kind = np.array([e.split(":")[0] for e in tiny.entities])
    for name, (head_kind, tail_kind) in {
        "on_album": ("song", "album"), "by_artist": ("song", "artist"), "tagged": ("song", "tag"),
        "album_by": ("album", "artist"), "has_genre": ("artist", "genre"),
        "similar_to": ("artist", "artist"),
    }.items():
        rows = rels == relation[name]
        assert (kind[heads[rows]] == head_kind).all() and (kind[tails[rows]] == tail_kind).all()
    for name in ("on_album", "by_artist", "tagged"):
        linked = np.unique(heads[rels == relation[name]])
        assert np.array_equal(linked, np.arange(tiny.n_items)), name
    # The song's artist in the KG is the artist of its album, and matches its display text.
    song_artist = dict(zip(heads[rels == relation["by_artist"]], tails[rels == relation["by_artist"]]))
    album_of = dict(zip(heads[rels == relation["on_album"]], tails[rels == relation["on_album"]]))
    album_artist = dict(zip(heads[rels == relation["album_by"]], tails[rels == relation["album_by"]]))
    assert all(album_artist[album_of[s]] == song_artist[s] for s in range(tiny.n_items))
    assert all(tiny.entities[song_artist[s]] == "artist:" + tiny.item_attrs["artist"][s].split()[1]
               for s in range(tiny.n_items))
    assert set(kind[tiny.n_items:]) == {"album", "artist", "genre", "tag"}
    assert tiny.item_attrs["name"][0].startswith("Artist ") and " – Song " in tiny.item_attrs["name"][0]
    assert (tiny.item_attrs["tags"] != "").all()


def test_rebuild_through_build_mmkg_is_the_identity(tiny):
    inter = tiny.interactions
    tables = dict(
        interactions=pd.DataFrame({
            "user": tiny.users[inter["user"]], "item": tiny.items[inter["item"]],
            "value": inter["value"], "timestamp": inter["timestamp"]}),
        links=pd.DataFrame({"item": tiny.items, "entity": tiny.entities[: tiny.n_items]}),
        triples=pd.DataFrame({"head": tiny.entities[tiny.triples[:, 0]],
                              "relation": tiny.relations[tiny.triples[:, 1]],
                              "tail": tiny.entities[tiny.triples[:, 2]]}),
        item_attrs=tiny.item_attrs.assign(item=tiny.items),
    )
    rebuilt = build_mmkg(tiny.name, threshold=tiny.threshold, **tables)
    for key in ("users", "items", "entities", "relations", "triples"):
        assert np.array_equal(getattr(rebuilt, key), getattr(tiny, key)), key
    pd.testing.assert_frame_equal(rebuilt.interactions, tiny.interactions)
    for name, matrix in tiny.modalities.items():
        rebuilt.add_modality(name, matrix, tiny.modality_masks[name])
    assert rebuilt.equals(tiny) and rebuilt.notes == []


def test_overrides_apply_and_bad_ones_raise_config_error():
    ds = generate("tiny", n_users=30, missing_rate=0.5, tags_per_item=0, similar_artists=0, seed=3)
    assert ds.n_users == 30 and ds.meta["synthetic missing_rate"] == 0.5
    assert set(ds.relations) == {"on_album", "by_artist", "album_by", "has_genre"}
    ds.validate()
    custom = generate(PRESETS["tiny"], n_items=150)
    assert custom.n_items == 150 and custom.name == "synthetic-custom"
    for bad, match in [
        (dict(n_users=0), "n_users"), (dict(missing_rate=1.0), "missing_rate"),
        (dict(colour="red"), "unknown option 'colour'"), (dict(n_items=10), "n_artists <= n_albums"),
        (dict(interactions_per_user=100), "n_items // 2"), (dict(modalities={"audio": 0}), "audio"),
        (dict(tags_per_item=99), "tags_per_item"),
    ]:
        with pytest.raises(ConfigError, match=match):
            generate("tiny", **bad)
    with pytest.raises(ConfigError, match="unknown synthetic preset 'huge'.*tiny, small"):
        generate("huge")
    with pytest.raises(ConfigError, match="seed"):
        generate("tiny", seed=-1)


def test_entity_names_are_unique_slugs():
    for base in (GENRES, TAGS):
        names = _names(base, 3_000)
        assert len(set(names)) == 3_000 and not any(" " in n for n in names)
        assert list(names[: len(base)]) == list(base)
