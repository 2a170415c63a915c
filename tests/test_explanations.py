"""Explanation metrics: coverage, validity, diversities, LIR, SEP and ETD computed by hand on a
six-node graph, the moving average against pandas, and edge membership."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmkgrec.evaluate.explanations import (
    PathGraph,
    PathRecommendations,
    explanation_metrics,
    lir_table,
    normalized_ema,
    per_user_explanation_metrics,
    sep_table,
)

# Relations: genre 0, similar 1, their inverses 2 and 3, played 4, played by 5, self-loop 6.
GENRE, SIMILAR, GENRE_INV, SIMILAR_INV, PLAYED, PLAYED_BY, SELF = range(7)
NAMES = ("genre", "similar", "genre (inverse)", "similar (inverse)", "played", "played by",
         "self-loop")
U0, U1 = 6, 7  # user nodes: items 0-3, entities 4 and 5, then users


def toy_graph() -> PathGraph:
    """Items 0-3, genres 4 and 5, users u0 (node 6) and u1 (node 7).

    KG: 0, 1, 3 have genre 4; 2, 3 have genre 5; 0 and 1 are similar to 3. Train: u0 played
    0, 1, 2; u1 played 3, 1. Every edge exists both ways."""
    kg = [(0, GENRE, 4), (1, GENRE, 4), (3, GENRE, 4), (2, GENRE, 5), (3, GENRE, 5),
          (0, SIMILAR, 3), (1, SIMILAR, 3)]
    train = [(U0, 0), (U0, 1), (U0, 2), (U1, 3), (U1, 1)]
    edges = ([(h, r, t) for h, r, t in kg] + [(t, r + 2, h) for h, r, t in kg]
             + [(u, PLAYED, i) for u, i in train] + [(i, PLAYED_BY, u) for u, i in train])
    edges = np.array(sorted(edges), dtype=np.int64)
    return PathGraph(heads=edges[:, 0], relations=edges[:, 1], tails=edges[:, 2], n_items=4,
                     n_entities=6, n_users=2, relation_names=NAMES, self_loop=SELF)


def toy_timestamps() -> pd.DataFrame:
    return pd.DataFrame({"user": [0, 0, 0, 1, 1], "item": [2, 0, 1, 1, 3],
                         "timestamp": [300.0, 100.0, 200.0, 60.0, 50.0]})


def toy_recs() -> PathRecommendations:
    """u0: [3 with P1 = u0 -played-> 1 -self-> 1 -similar-> 3, 1 without a path];
    u1: [0 with P2 = u1 -played-> 3 -genre-> 4 -genre^-1-> 0,
         2 with P3 = u1 -played-> 1 -played by-> u0 -played-> 2]."""
    nan = np.nan
    return PathRecommendations(
        users=np.array([0, 1]), items=np.array([[3, 1], [0, 2]]),
        scores=np.array([[2.0, 1.0], [3.0, 2.5]], dtype=np.float32),
        has_path=np.array([[True, False], [True, True]]),
        nodes=np.array([[[U0, 1, 1, 3], [-1, -1, -1, -1]],
                        [[U1, 3, 4, 0], [U1, 1, U0, 2]]]),
        relations=np.array([[[PLAYED, SELF, SIMILAR], [-1, -1, -1]],
                            [[PLAYED, GENRE, GENRE_INV], [PLAYED, PLAYED_BY, PLAYED]]]),
        step_probs=np.array([[[0.5, 0.5, 0.4], [nan, nan, nan]],
                             [[0.9, 0.5, 0.2], [0.1, 1.0, 0.5]]], dtype=np.float32))


# ---- moving average ----------------------------------------------------------------------------
def test_normalized_ema_by_hand_and_against_pandas():
    values = np.array([[1.0, 2.0, 4.0], [0.0, 10.0, 20.0]])
    lengths = np.array([3, 3])
    # beta=None: pandas' ewm(span=3), alpha = 0.5, bias-adjusted:
    # y = 1, (2 + .5) / 1.5 = 5/3, (4 + 1 + .25) / 1.75 = 3 -> (y - 1) / 2
    got = normalized_ema(values, lengths)
    np.testing.assert_allclose(got[0], [0.0, 1 / 3, 1.0])
    for row in values:
        ema = pd.Series(row).ewm(span=3).mean()
        np.testing.assert_allclose(normalized_ema(row[None], [3])[0],
                                   (ema - ema.min()) / (ema.max() - ema.min()))
    # the paper's recursion with beta = 0.5: y = 0, 5, 12.5 -> / 12.5
    np.testing.assert_allclose(normalized_ema(values, lengths, beta=0.5)[1], [0.0, 0.4, 1.0])


def test_normalized_ema_padding_ties_and_single_values():
    values = np.array([[7.0, 7.0, 7.0], [5.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
    got = normalized_ema(values, np.array([3, 1, 2]))
    # equal values -> positions 0, 1, 2 (the authors' code): the same as ewm over [0, 1, 2]
    np.testing.assert_allclose(got[0], normalized_ema(np.array([[0.0, 1.0, 2.0]]), [3])[0])
    assert np.isnan(got[1]).all()  # one value: undefined
    np.testing.assert_allclose(got[2, :2], [0.0, 1.0])
    assert np.isnan(got[2, 2])  # padding
    with pytest.raises(Exception, match="beta"):
        normalized_ema(values, np.array([3, 1, 2]), beta=1.5)


# ---- tables ------------------------------------------------------------------------------------
def test_lir_table_by_hand():
    ts = toy_timestamps()
    keys, values = lir_table(ts["user"], ts["item"], ts["timestamp"], 2, 4)
    table = dict(zip(keys.tolist(), values.tolist()))
    # u0 by time: 0@100, 1@200, 2@300 -> ema 100, 166.67, 242.86 -> 0, 0.4667, 1
    assert table[0 * 4 + 0] == pytest.approx(0.0)
    assert table[0 * 4 + 1] == pytest.approx((500 / 3 - 100) / (425 / 1.75 - 100))
    assert table[0 * 4 + 2] == pytest.approx(1.0)
    # u1 by time: 3@50, 1@60 -> 0, 1
    assert table[1 * 4 + 3] == pytest.approx(0.0) and table[1 * 4 + 1] == pytest.approx(1.0)
    _, paper = lir_table(ts["user"], ts["item"], ts["timestamp"], 2, 4, beta=0.5)
    # recursion: 100, 150, 225 -> 0, 0.4, 1
    assert dict(zip(keys.tolist(), paper.tolist()))[1] == pytest.approx(0.4)


def test_sep_table_by_hand():
    graph = toy_graph()
    # degrees (edges as head or tail): items 0:6 1:8 2:4 3:10, genres 4:6 5:4, users 6:6 7:4
    np.testing.assert_array_equal(graph.degree(), [6, 8, 4, 10, 6, 4, 6, 4])
    sep = sep_table(graph)
    # items sorted 2, 0, 1, 3 with degrees 4, 6, 8, 10; alpha = 2/5: y = 4, 8.4/1.6,
    # 13.04/1.96, 17.824/2.176
    y = np.array([4.0, 8.4 / 1.6, 13.04 / 1.96, 17.824 / 2.176])
    expected = (y - y[0]) / (y[-1] - y[0])
    np.testing.assert_allclose(sep[[2, 0, 1, 3]], expected)
    np.testing.assert_allclose(sep[[5, 4]], [0.0, 1.0])  # two genres: min-max of two values
    np.testing.assert_allclose(sep[[7, 6]], [0.0, 1.0])  # two users


def test_edge_membership_and_node_types():
    graph = toy_graph()
    assert graph.has_edges([U0, 3, 4], [PLAYED, GENRE, GENRE_INV], [0, 4, 1]).tolist() == [
        True, True, True]
    assert not graph.has_edges([U0], [PLAYED], [3]).any()  # u0 never played 3 (in train)
    assert not graph.has_edges([1], [GENRE], [5]).any()
    np.testing.assert_array_equal(graph.node_types([0, 3, 4, 5, 6, 7, -1]),
                                  [1, 1, 2, 2, 0, 0, -1])
    np.testing.assert_array_equal(graph.local_ids([3, 5, 6, 7]), [3, 5, 0, 1])
    np.testing.assert_array_equal(graph.explanation_types(), [SIMILAR, GENRE_INV, SIMILAR_INV,
                                                              PLAYED])


# ---- the metrics -------------------------------------------------------------------------------
def test_every_metric_by_hand():
    graph, recs = toy_graph(), toy_recs()
    per_user = per_user_explanation_metrics(recs, graph, toy_timestamps())
    np.testing.assert_allclose(per_user["coverage"], [0.5, 1.0])
    # patterns: u0 (played, similar); u1 (played, genre, genre^-1), (played, played by, played)
    np.testing.assert_allclose(per_user["pattern_diversity"], [1.0, 1.0])
    # relations: u0 {played, similar} / min(2 edges, 6); u1 {played, genre, genre^-1,
    # played by} / min(6 edges, 6)
    np.testing.assert_allclose(per_user["relation_diversity"], [1.0, 4 / 6])
    # ETD: types (last real relation) u0 {similar} / min(2, 4); u1 {genre^-1, played} / 2
    np.testing.assert_allclose(per_user["etd"], [0.5, 1.0])
    # LIR: linking interactions u0 -> 1 (0.4667), u1 -> 3 (0) and 1 (1)
    u0_item1 = (500 / 3 - 100) / (425 / 1.75 - 100)
    np.testing.assert_allclose(per_user["lir"], [u0_item1, 0.5])
    # SEP: shared entities u0 -> item 1; u1 -> genre 4 (1.0) and user u0 (1.0)
    y = np.array([4.0, 8.4 / 1.6, 13.04 / 1.96, 17.824 / 2.176])
    item1 = (y[2] - y[0]) / (y[-1] - y[0])
    np.testing.assert_allclose(per_user["sep"], [item1, 1.0])

    metrics = explanation_metrics(recs, graph, toy_timestamps())
    assert metrics["coverage"] == pytest.approx(0.75)
    assert metrics["validity"] == pytest.approx(1.0)
    assert metrics["pattern_diversity"] == pytest.approx(1.0)
    assert metrics["relation_diversity"] == pytest.approx((1 + 4 / 6) / 2)
    assert metrics["etd"] == pytest.approx(0.75)
    assert metrics["lir"] == pytest.approx((u0_item1 + 0.5) / 2)
    assert metrics["sep"] == pytest.approx((item1 + 1.0) / 2)
    assert metrics["n_paths"] == 3 and metrics["n_patterns"] == 3 and metrics["n_lists"] == 2
    # the paper's decays instead of the authors' code: u0's linking interaction gets 0.4
    paper = explanation_metrics(recs, graph, toy_timestamps(), beta_lir=0.5)
    assert paper["lir"] == pytest.approx((0.4 + 0.5) / 2)


def test_validity_catches_missing_edges_wrong_ends_and_bad_self_loops():
    graph = toy_graph()
    for b, j, field, t, value in [
        (1, 0, "relations", 1, SIMILAR),  # 3 -similar-> 4 is no edge
        (1, 1, "nodes", 3, 3),  # the path ends at 3, not at its item 2 (and u0 never played 3)
        (0, 0, "nodes", 2, 4),  # a "self-loop" that moves
        (1, 0, "nodes", 0, U0),  # starts at another user
    ]:
        recs = toy_recs()
        getattr(recs, field)[b, j, t] = value
        metrics = explanation_metrics(recs, graph)
        assert metrics["validity"] == pytest.approx(2 / 3), (field, t, value)
    assert explanation_metrics(toy_recs(), graph)["validity"] == 1.0


def test_repeated_patterns_lower_diversity_and_lists_without_paths():
    graph, recs = toy_graph(), toy_recs()
    # u1's second item explained like its first: u1 -played-> 3 -genre-> 5 -genre^-1-> 2
    recs.nodes[1, 1] = [U1, 3, 5, 2]
    recs.relations[1, 1] = [PLAYED, GENRE, GENRE_INV]
    per_user = per_user_explanation_metrics(recs, graph)
    assert per_user["pattern_diversity"][1] == pytest.approx(0.5)
    assert per_user["etd"][1] == pytest.approx(0.5)  # one type over min(2, 4)
    assert np.isnan(per_user["lir"]).all()  # no timestamps: LIR undefined
    recs.has_path[0] = False  # u0 without any path: ETD 0, the rest undefined
    per_user = per_user_explanation_metrics(recs, graph)
    assert per_user["etd"][0] == 0.0 and per_user["coverage"][0] == 0.0
    assert np.isnan(per_user["pattern_diversity"][0]) and np.isnan(per_user["sep"][0])


def test_records_name_every_step():
    graph, recs = toy_graph(), toy_recs()
    records = recs.records(graph, entity_names=np.array(["a", "b", "c", "d", "rock", "pop"]),
                           user_names=np.array(["ann", "bob"]))
    assert [(r["user"], r["rank"], r["item"]) for r in records] == [(0, 1, 3), (0, 2, 1),
                                                                     (1, 1, 0), (1, 2, 2)]
    assert records[1]["path"] is None
    third = records[2]
    assert third["path"] == [{"type": "user", "id": 1, "name": "bob"},
                             {"type": "item", "id": 3, "name": "d"},
                             {"type": "entity", "id": 4, "name": "rock"},
                             {"type": "item", "id": 0, "name": "a"}]
    assert third["relations"] == ["played", "genre", "genre (inverse)"]
    assert third["probabilities"] == pytest.approx([0.9, 0.5, 0.2])
    np.testing.assert_allclose(recs.path_probs[1], [0.09, 0.05], rtol=1e-6)
