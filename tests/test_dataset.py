"""The MMKG object: id assignment, invariants, modalities and fingerprints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmkgrec.data.dataset import build_mmkg
from mmkgrec.errors import DataFormatError, MMKGRecError


def small():
    inter = pd.DataFrame({"user": ["b", "a", "b", "c"], "item": ["x", "y", "z", "x"],
                          "value": [3.0, 1.0, 5.0, 2.0]})
    links = pd.DataFrame({"item": ["y", "x"], "entity": ["E1", "E0"]})
    triples = pd.DataFrame({"head": ["E0", "E9", "E1"], "relation": ["r2", "r1", "r2"],
                            "tail": ["E8", "E0", "E8"]})
    return build_mmkg("small", inter, threshold=2.0, links=links, triples=triples)


def test_id_order_follows_the_conventions():
    ds = small()
    assert list(ds.users) == ["b", "a", "c"]  # first appearance
    assert list(ds.items) == ["y", "x", "z"]  # link order, then unlinked by first appearance
    assert list(ds.entities[:3]) == ["E1", "E0", "item:z"]  # item i is entity i
    assert list(ds.entities[3:]) == ["E8", "E9"]  # by first appearance, head before tail
    assert list(ds.relations) == ["r2", "r1"]
    assert ds.triples.tolist() == [[1, 0, 3], [4, 1, 1], [0, 0, 3]]
    assert ds.interactions[["user", "item"]].to_numpy().tolist() == [[0, 1], [1, 0], [0, 2], [2, 1]]
    assert ds.positive_mask().tolist() == [True, False, True, True]
    assert any("1 items have no KG link" in n for n in ds.notes)


def test_unlinked_items_can_be_dropped_with_a_note():
    inter = pd.DataFrame({"user": ["a", "a"], "item": ["x", "q"], "value": [1.0, 1.0]})
    links = pd.DataFrame({"item": ["x"], "entity": ["E0"]})
    ds = build_mmkg("d", inter, threshold=0, links=links, keep_unlinked_items=False)
    assert ds.n_items == 1 and len(ds.interactions) == 1
    assert any("dropped 1 of 2" in n for n in ds.notes)


def test_duplicate_links_are_rejected_with_their_line():
    inter = pd.DataFrame({"user": ["a"], "item": ["x"], "value": [1.0]})
    links = pd.DataFrame({"item": ["x", "x"], "entity": ["E0", "E1"], "_line": [1, 2]})
    with pytest.raises(DataFormatError) as info:
        build_mmkg("d", inter, threshold=0, links=links, source={"links": "links.txt"})
    assert info.value.line == 2 and "linked twice" in str(info.value)


def test_modalities_are_masked_and_checked():
    ds = small()
    matrix = np.arange(6, dtype=np.float32).reshape(3, 2) + 1
    ds.add_modality("audio", matrix, np.array([True, False, True]))
    assert ds.modalities["audio"][1].tolist() == [0.0, 0.0]
    ds.validate()
    with pytest.raises(MMKGRecError, match="expected shape"):
        ds.add_modality("bad", np.ones((2, 2)))
    with pytest.raises(MMKGRecError, match="NaN or inf"):
        ds.add_modality("bad", np.full((3, 2), np.nan))
    # A NaN in an ABSENT row is fine: it is zeroed, never used.
    ds.add_modality("ok", np.array([[1, 1], [np.nan, 0], [2, 2]]), np.array([True, False, True]))
    assert np.isfinite(ds.modalities["ok"]).all()


def test_fingerprint_changes_with_content():
    a, b = small(), small()
    assert a.fingerprint() == b.fingerprint() and a.equals(b)
    b.interactions.loc[0, "value"] = 4.0
    assert a.fingerprint() != b.fingerprint()
    c = small()
    c.add_modality("audio", np.ones((3, 2)))
    assert a.fingerprint() != c.fingerprint()


def test_validate_catches_broken_invariants():
    ds = small()
    ds.triples = np.vstack([ds.triples, ds.triples[:1]])
    with pytest.raises(MMKGRecError, match="duplicate triples"):
        ds.validate()
    ds = small()
    ds.interactions.loc[0, "item"] = 99
    with pytest.raises(MMKGRecError, match="item ids out of range"):
        ds.validate()


def test_positives_are_unique_pairs():
    inter = pd.DataFrame({"user": ["a", "a", "a"], "item": ["x", "x", "y"], "value": [1.0, 2.0, 0.0]})
    ds = build_mmkg("d", inter, threshold=1.0)
    assert len(ds.positives()) == 1
    assert any("repeat a (user, item) pair" in n for n in ds.notes)
