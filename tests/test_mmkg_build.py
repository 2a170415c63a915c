"""Attribute-based and entity-based MMKGs from the same content."""

import numpy as np
import pandas as pd
import pytest
from tests.conftest import run_cli

from mmkgrec.data.dataset import MMKG
from mmkgrec.errors import ConfigError
from mmkgrec.graph.mmkg_build import MOODS, build_mmkg


def toy() -> MMKG:
    """4 items; items 0/1 share a tag and a sound, 2/3 share another sound; sentiments differ."""
    audio = np.array([[0, 0], [0.1, 0], [10, 10], [10.1, 10]], np.float32)
    sentiment = np.array([[-0.9, 0, 1, 0], [-0.2, 0, 1, 0], [0.0, 0, 0, 1], [0, 0, 0, 0]],
                         np.float32)
    return MMKG(
        name="toy", users=np.array(["u0", "u1"]), items=np.array(["a", "b", "c", "d"]),
        entities=np.array(["a", "b", "c", "d", "genre:x"]), relations=np.array(["has_genre"]),
        interactions=pd.DataFrame({"user": np.array([0, 1], np.int64),
                                   "item": np.array([0, 2], np.int64), "value": [1.0, 1.0]}),
        threshold=1.0, triples=np.array([[0, 0, 4], [2, 0, 4]], np.int64),
        modalities={"audio": audio, "sentiment": sentiment},
        modality_masks={"audio": np.array([True, True, True, True]),
                        "sentiment": np.array([True, True, True, False])},
        item_attrs=pd.DataFrame({"tags": ["Shoegaze; dream pop", "shoegaze", "noise", ""]}),
    )


def triples_named(ds: MMKG, relation: str) -> set[tuple[str, str]]:
    r = list(ds.relations).index(relation)
    rows = ds.triples[ds.triples[:, 1] == r]
    return {(ds.entities[h], ds.entities[t]) for h, _, t in rows}


def test_entity_mode_adds_tag_mood_and_cluster_entities():
    base = toy()
    built = build_mmkg(base, "entity", clusters=2)
    assert set(built.relations) == {"has_genre", "has_tag", "has_mood", "audio_like"}
    # tags on >= 2 items only, lower-cased; "dream pop" and "noise" are on one item each
    assert triples_named(built, "has_tag") == {("a", "tag:shoegaze"), ("b", "tag:shoegaze")}
    # VADER compound bins; item d has no sentiment (masked) so no mood
    assert triples_named(built, "has_mood") == {
        ("a", "mood:very negative"), ("b", "mood:negative"), ("c", "mood:neutral")}
    sounds = dict(triples_named(built, "audio_like"))
    assert sounds["a"] == sounds["b"] != sounds["c"] == sounds["d"]
    # the original KG and ids are kept; modalities become entities, not attributes
    assert list(built.entities[:base.n_entities]) == list(base.entities)
    assert triples_named(built, "has_genre") == triples_named(base, "has_genre")
    assert built.modalities == {} and set(MOODS) >= {e[5:] for e in built.entities if e.startswith("mood:")}


def test_attribute_mode_keeps_features_and_kg():
    base = toy()
    built = build_mmkg(base, "attribute")
    assert built.fingerprint() == base.fingerprint() and built.meta["mmkg mode"] == "attribute"
    kept = build_mmkg(base, "entity", keep_modalities=True, clusters=2)
    assert set(kept.modalities) == {"audio", "sentiment"}


def test_existing_entities_are_reused_and_nothing_to_build_is_an_error():
    base = toy()
    base.entities[4] = "tag:shoegaze"  # the KG already has this tag entity
    built = build_mmkg(base, "entity", clusters=2)
    assert list(built.entities).count("tag:shoegaze") == 1
    assert ("a", "tag:shoegaze") in triples_named(built, "has_tag")
    bare = toy()
    bare.modalities, bare.modality_masks, bare.item_attrs = {}, {}, None
    with pytest.raises(ConfigError, match="no content"):
        build_mmkg(bare, "entity")


def test_cli_writes_a_loadable_entity_mmkg(capsys, tmp_path):
    from mmkgrec.data import load

    code, out, _ = run_cli(capsys, "data", "build-mmkg", "synthetic-tiny", "--mode", "entity",
                           "--clusters", "4", "--out", str(tmp_path / "ent"))
    assert code == 0, out
    loaded = load(str(tmp_path / "ent"))
    assert {"has_mood", "audio_like", "image_like", "text_like"} <= set(loaded.relations)
    assert loaded.modalities == {}
    code, out, _err = run_cli(capsys, "data", "build-mmkg", "synthetic-tiny", "--mode", "entity",
                             "--clusters", "1", "--out", str(tmp_path / "x"))
    assert code == 2
