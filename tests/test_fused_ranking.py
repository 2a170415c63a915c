"""The fused all-items scoring of the KG models (models/fused.py) against the reference
(``forward_all_items`` + einsum): same scores within rtol 1e-4 / atol 1e-5 (float32) for KGCN and
MKGCN, 1 to 3 hops, every aggregator; the compiled backend falls back to eager when the compiler
fails. The compiled path itself compiles for tens of seconds: tested only with
MMKGREC_TEST_COMPILE=1 (one tiny config)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from mmkgrec.models import default_config, fused, model_class
from mmkgrec.models.fused import RankingPlan, build_plan

RTOL, ATOL = 1e-4, 1e-5


def build(name, data, **overrides):
    ds, sp = data
    cls = model_class(name)
    config = cls.Config(**{**default_config(name)["model"], **overrides})
    torch.manual_seed(0)
    return cls(ds, sp, config, seed=0).eval()


def scores(model, users, backend, monkeypatch):
    monkeypatch.setenv(fused.ENV, backend)
    with torch.no_grad():
        model.prepare_ranking()
        out = model.score_users(users)
    monkeypatch.delenv(fused.ENV)
    return out


def spread(model):
    """Randomise the relation embeddings so that the attention is far from uniform."""
    with torch.no_grad():
        model.backbone.relation_emb.weight.normal_(0.0, 3.0)


@pytest.mark.parametrize("name", ["kgcn", "mkgcn"])
@pytest.mark.parametrize("aggregator", ["sum", "concat", "neighbor"])
@pytest.mark.parametrize("n_hops", [1, 2, 3])
def test_fused_equals_reference(tiny_topk, monkeypatch, name, aggregator, n_hops):
    model = build(name, tiny_topk, aggregator=aggregator, n_hops=n_hops, n_neighbors=3,
                  inner_activation="leaky_relu" if aggregator == "concat" else "relu",
                  **({"eval_history_size": 8} if name == "mkgcn" else {}))
    spread(model)
    users = torch.arange(7)
    reference = scores(model, users, "reference", monkeypatch)
    fast = scores(model, users, "fused", monkeypatch)
    assert isinstance(model._ranking_slots, RankingPlan)
    torch.testing.assert_close(fast, reference, rtol=RTOL, atol=ATOL)


def test_plan_splits_items_and_restricts_rows(tiny_topk):
    """Both kinds of item are exercised, and a deeper round computes at most the rows the next
    one reads."""
    model = build("kgcn", tiny_topk, n_hops=2, n_neighbors=3)
    bb = model.backbone
    plan = build_plan(bb.aggregator, bb.entity_emb.weight, bb.relation_emb.weight, bb.neighbors,
                      bb.neighbor_relations, bb.n_items)
    assert len(plan.const_items) + len(plan.rounds[-1].rows) == bb.n_items
    assert len(plan.rounds[-1].rows) > 0
    assert len(plan.rounds[0].rows) <= bb.entity_emb.num_embeddings


def test_one_relation_graph_is_user_independent(tiny_topk, monkeypatch):
    """With one relation every attention is uniform: every item is scored by one matmul."""
    model = build("kgcn", tiny_topk, n_hops=2, n_neighbors=3)
    spread(model)
    with torch.no_grad():
        model.backbone.neighbor_relations.zero_()
    users = torch.arange(5)
    reference = scores(model, users, "reference", monkeypatch)
    fast = scores(model, users, "fused", monkeypatch)
    plan = model._ranking_slots
    assert isinstance(plan, RankingPlan) and len(plan.rounds[-1].rows) == 0
    torch.testing.assert_close(fast, reference, rtol=RTOL, atol=ATOL)


def test_user_sub_blocks_and_small_tiles(tiny_topk, monkeypatch):
    """Tiling and user sub-blocks change nothing."""
    model = build("mkgcn", tiny_topk, n_hops=2, n_neighbors=3, eval_history_size=8)
    spread(model)
    users = torch.arange(9)
    reference = scores(model, users, "reference", monkeypatch)
    monkeypatch.setattr(fused, "TILE_ELEMENTS", 64)
    monkeypatch.setattr(fused, "TABLE_ELEMENTS", 64)
    torch.testing.assert_close(scores(model, users, "fused", monkeypatch), reference,
                               rtol=RTOL, atol=ATOL)


def test_history_scoring_without_cache(tiny_topk, monkeypatch):
    """score_histories without cached slots (new listeners) builds the plan itself."""
    model = build("mkgcn", tiny_topk, n_hops=2, n_neighbors=3, eval_history_size=8)
    spread(model)
    history, valid = torch.tensor([[1, 2, 3]]), torch.tensor([[True, True, False]])
    with torch.no_grad():
        monkeypatch.setenv(fused.ENV, "reference")
        reference = model.score_histories(history, valid)
        monkeypatch.setenv(fused.ENV, "fused")
        fast = model.score_histories(history, valid)
    torch.testing.assert_close(fast, reference, rtol=RTOL, atol=ATOL)


def test_compiler_failure_falls_back_to_eager(tiny_topk, monkeypatch):
    """A failing torch.compile warns once and gives the eager scores."""
    model = build("kgcn", tiny_topk, n_hops=1, n_neighbors=3)
    spread(model)
    users = torch.arange(7)
    reference = scores(model, users, "reference", monkeypatch)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(fused, "_COMPILE_FAILED", [])
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        first = scores(model, users, "compiled", monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        second = scores(model, users, "compiled", monkeypatch)
    torch.testing.assert_close(first, reference, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(second, reference, rtol=RTOL, atol=ATOL)


def test_unknown_backend_is_a_config_error(monkeypatch):
    from mmkgrec.errors import ConfigError

    monkeypatch.setenv(fused.ENV, "fast")
    with pytest.raises(ConfigError, match="MMKGREC_KG_RANKING"):
        fused.ranking_backend()


@pytest.mark.skipif(os.environ.get("MMKGREC_TEST_COMPILE") != "1",
                    reason="compiles for tens of seconds: set MMKGREC_TEST_COMPILE=1")
def test_compiled_equals_reference(tiny_topk, monkeypatch):
    model = build("kgcn", tiny_topk, n_hops=1, n_neighbors=3)
    spread(model)
    users = torch.arange(40)  # two padded tiles of COMPILED_USERS
    reference = scores(model, users, "reference", monkeypatch)
    monkeypatch.setattr(fused, "_COMPILE_FAILED", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        compiled = scores(model, users, "compiled", monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["kgcn", "mkgcn"])
@pytest.mark.parametrize("aggregator", ["sum", "concat", "neighbor"])
def test_candidate_scores_equal_full_ranking_columns(tiny_topk, name, aggregator):
    """score_items (two-stage serving's re-ranking of a few candidates per user, 1 hop) gives
    exactly the full ranking's columns and the pairwise reference, for both kinds of item."""
    model = build(name, tiny_topk, aggregator=aggregator, n_hops=1, n_neighbors=3,
                  inner_activation="leaky_relu" if aggregator == "concat" else "relu")
    spread(model)
    with torch.no_grad():
        catalogue = model.with_new_items([], [])
        assert catalogue.plan is not None and len(catalogue.plan.const_items) > 0
        queries = catalogue.query_vectors(torch.arange(5))  # [5, d]
        items = torch.randint(0, catalogue.n_items, (5, 40), generator=torch.Generator().manual_seed(0))
        picked = catalogue.score_queries(queries, items)  # [5, 40]
        full = catalogue.score_queries(queries, None)  # [5, I]
        pairs = torch.einsum("bd,bid->bi", queries, catalogue.aggregate(queries, items))
    assert picked.shape == items.shape
    assert (catalogue.plan.inverse[items] >= len(catalogue.plan.const_items)).any()
    torch.testing.assert_close(picked, full.gather(1, items), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(picked, pairs, rtol=RTOL, atol=ATOL)


def test_score_items_needs_a_one_hop_plan(tiny_topk):
    model = build("kgcn", tiny_topk, n_hops=2, n_neighbors=3)
    with torch.no_grad():
        catalogue = model.with_new_items([], [])
        assert catalogue.plan is not None
        with pytest.raises(ValueError, match="1-hop"):
            fused.score_items(catalogue.plan, torch.zeros(1, catalogue.dim),
                              torch.zeros(1, 2, dtype=torch.long))
