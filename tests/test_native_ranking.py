"""The native backend of the KG models' ranking (models/fused_kernel.c through
models/fused_native.py): its scores equal the reference within rtol 1e-4 / atol 1e-5 for 1 and
2 hops (deeper plans and other activations fall back to the eager fused path), its ranking
equals ``rank_topk`` over ``score_users`` (exclusions, ties, short catalogues, NaN), its tanh is
within 5e-7 of torch's, each instruction-set path (plain loops, AVX2, AVX-512) gives the
same results, and without a compiler everything falls back to eager with one warning."""

from __future__ import annotations

import subprocess
import warnings

import numpy as np
import pytest
import torch

from mmkgrec.errors import MMKGRecError
from mmkgrec.evaluate.metrics import rank_topk
from mmkgrec.evaluate.ranking import rank_stage
from mmkgrec.models import default_config, fused, fused_native, model_class

RTOL, ATOL = 1e-4, 1e-5

pytestmark = pytest.mark.skipif(fused_native.library() is None,
                                reason="no C compiler: the native kernel cannot be built")


def build(name, data, **overrides):
    ds, sp = data
    cls = model_class(name)
    config = cls.Config(**{**default_config(name)["model"], **overrides})
    torch.manual_seed(0)
    model = cls(ds, sp, config, seed=0).eval()
    with torch.no_grad():  # attention far from uniform
        model.backbone.relation_emb.weight.normal_(0.0, 3.0)
    return model


def scores(model, users, backend, monkeypatch):
    monkeypatch.setenv(fused.ENV, backend)
    with torch.no_grad():
        model.prepare_ranking()
        out = model.score_users(users)
    return out


def exclusions(n_users, n_items, seed=0):
    """A random exclusion CSR: (indptr [U + 1], items [nnz])."""
    rng = np.random.default_rng(seed)
    lists = [np.sort(rng.choice(n_items, size=rng.integers(0, n_items // 2), replace=False))
             for _ in range(n_users)]
    indptr = torch.tensor(np.concatenate([[0], np.cumsum([len(x) for x in lists])]))
    return indptr, torch.tensor(np.concatenate(lists)).long()


@pytest.mark.parametrize("name", ["kgcn", "mkgcn"])
@pytest.mark.parametrize("aggregator", ["sum", "concat", "neighbor"])
@pytest.mark.parametrize("n_hops", [1, 2, 3])
def test_native_scores_equal_reference(tiny_topk, monkeypatch, name, aggregator, n_hops):
    model = build(name, tiny_topk, aggregator=aggregator, n_hops=n_hops, n_neighbors=3,
                  inner_activation="leaky_relu" if aggregator == "concat" else "relu",
                  **({"eval_history_size": 8} if name == "mkgcn" else {}))
    users = torch.arange(9)
    reference = scores(model, users, "reference", monkeypatch)
    native = scores(model, users, "native", monkeypatch)
    assert model._ranking_slots.backend == "native"
    torch.testing.assert_close(native, reference, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_two_hop_activations(tiny_topk, monkeypatch, activation):
    """tanh runs natively; sigmoid (not in the kernel) falls back to eager: equal either way."""
    model = build("kgcn", tiny_topk, n_hops=2, n_neighbors=3, inner_activation=activation)
    users = torch.arange(6)
    reference = scores(model, users, "reference", monkeypatch)
    native = scores(model, users, "native", monkeypatch)
    assert fused._native(model._ranking_slots, model.user_emb.weight) == (activation == "tanh")
    torch.testing.assert_close(native, reference, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["kgcn", "mkgcn"])
@pytest.mark.parametrize("n_hops", [1, 2])
@pytest.mark.parametrize("k", [1, 5, 1000])
def test_native_ranking_equals_rank_topk(tiny_topk, monkeypatch, name, n_hops, k):
    """rank_users gives the lists rank_topk gives over score_users, exclusions included;
    k above the catalogue is cut to it, and fully excluded tails are -1."""
    ds, _ = tiny_topk
    model = build(name, tiny_topk, n_hops=n_hops, n_neighbors=3,
                  **({"eval_history_size": 8} if name == "mkgcn" else {}))
    monkeypatch.setenv(fused.ENV, "native")
    users = torch.arange(ds.n_users)
    indptr, items = exclusions(ds.n_users, ds.n_items)
    with torch.no_grad():
        model.prepare_ranking()
        got = model.rank_users(users, k, indptr, items)
        scored = model.score_users(users)
    _, want = rank_topk(scored, indptr, items, k, users=users)
    assert got is not None and got.shape == want.shape == (ds.n_users, min(k, ds.n_items))
    assert torch.equal(got, want)


def test_ties_go_to_the_lower_item_id(tiny_topk, monkeypatch):
    """Items with identical vectors tie for every user: the lower id ranks first."""
    ds, _ = tiny_topk
    model = build("kgcn", tiny_topk, n_hops=1, n_neighbors=3)
    monkeypatch.setenv(fused.ENV, "native")
    with torch.no_grad():
        model.backbone.neighbor_relations.zero_()  # one relation: every item user-independent
        model.backbone.entity_emb.weight[: ds.n_items] = model.backbone.entity_emb.weight[0]
        model.backbone.neighbors[: ds.n_items] = model.backbone.neighbors[0]
        model.prepare_ranking()
        users = torch.arange(4)
        no_exclusions = torch.zeros(ds.n_users + 1, dtype=torch.int64)
        top = model.rank_users(users, 6, no_exclusions, torch.zeros(0, dtype=torch.int64))
    assert torch.equal(top, torch.arange(6).expand(4, -1))


def test_nan_scores_are_refused(tiny_topk, monkeypatch):
    ds, _ = tiny_topk
    model = build("kgcn", tiny_topk, n_hops=1, n_neighbors=3)
    monkeypatch.setenv(fused.ENV, "native")
    with torch.no_grad():
        model.user_emb.weight[2, 0] = float("nan")
        model.prepare_ranking()
        no_exclusions = torch.zeros(ds.n_users + 1, dtype=torch.int64)
        with pytest.raises(MMKGRecError, match="NaN"):
            model.rank_users(torch.arange(4), 5, no_exclusions, torch.zeros(0, dtype=torch.int64))


def candidate_columns(n_items, seed=1):
    """A random sorted candidate set of about half the catalogue: [C] item ids."""
    rng = np.random.default_rng(seed)
    return torch.tensor(np.sort(rng.choice(n_items, size=n_items // 2, replace=False)))


@pytest.mark.parametrize("backend", ["native", "fused"])
@pytest.mark.parametrize("name", ["kgcn", "mkgcn"])
@pytest.mark.parametrize("n_hops", [1, 2])
def test_restricted_plan_scores_the_candidate_columns(tiny_topk, monkeypatch, backend, name,
                                                     n_hops):
    """A plan restricted to candidate items scores exactly their columns of the full plan."""
    ds, _ = tiny_topk
    model = build(name, tiny_topk, n_hops=n_hops, n_neighbors=3)
    monkeypatch.setenv(fused.ENV, backend)
    columns = candidate_columns(ds.n_items)
    with torch.no_grad():
        model.prepare_ranking()
        plan = model._ranking_slots
        users = model.user_emb.weight[:7] if name == "kgcn" else torch.randn(7, plan.dim)
        view = fused.restricted(plan, columns)
        assert view.n_items == len(columns) and fused.restricted(plan, columns) is view
        torch.testing.assert_close(fused.score_all_items(view, users),
                                   fused.score_all_items(plan, users)[:, columns],
                                   rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("restricted", [False, True], ids=["split-candidates", "half"])
@pytest.mark.parametrize("n_hops", [1, 2])
def test_rank_stage_takes_the_native_ranking(tiny_topk, monkeypatch, n_hops, restricted):
    """The shared ranking path takes the model's rank_users, with the split's own candidates or
    a narrower set, and gives the lists of the eager score / mask / top-k path."""
    ds, sp = tiny_topk
    model = build("kgcn", tiny_topk, n_hops=n_hops, n_neighbors=3)
    columns = candidate_columns(ds.n_items)
    if restricted:
        monkeypatch.setattr(sp, "candidate_items", lambda stage: columns.numpy())
    users = np.asarray(sp.ground_truth("test")[0])
    monkeypatch.setenv(fused.ENV, "fused")
    eager = rank_stage(model, sp, "test", users, 10, 3, "cpu")
    monkeypatch.setenv(fused.ENV, "native")
    calls = []  # (the columns passed, the kernel's lists: None would mean a fallback)
    original = model.rank_users

    def spy(*args):
        calls.append((args[-1], original(*args)))
        return calls[-1][1]

    monkeypatch.setattr(model, "rank_users", spy)
    native = rank_stage(model, sp, "test", users, 10, 3, "cpu")
    assert calls and all(top is not None for _, top in calls)
    assert np.array_equal(native, eager)
    if restricted:
        assert all(passed is not None for passed, _ in calls)
        assert np.isin(native[native >= 0], columns.numpy()).all()


def test_rank_stage_without_preparing_keeps_the_pass_tables(tiny_topk, monkeypatch):
    """rank_stage(prepare=False) ranks on the caller's prepared plan: the same lists, and the
    kernel's tables of the first call are reused, not rebuilt."""
    _, sp = tiny_topk
    model = build("kgcn", tiny_topk, n_hops=1, n_neighbors=3)
    monkeypatch.setenv(fused.ENV, "native")
    users = np.asarray(sp.ground_truth("test")[0])
    want = rank_stage(model, sp, "test", users, 10, 4, "cpu")
    with torch.no_grad():
        model.prepare_ranking()
    first = rank_stage(model, sp, "test", users[:3], 10, 4, "cpu", prepare=False)
    plan = model._ranking_slots

    def kernel_tables():  # the whole plan's, or those of its candidate-set views
        return [view.native for view in plan.views.values()] or [plan.native]

    tables = kernel_tables()
    rest = rank_stage(model, sp, "test", users[3:], 10, 4, "cpu", prepare=False)
    assert model._ranking_slots is plan and None not in tables
    assert all(a is b for a, b in zip(kernel_tables(), tables, strict=True))
    assert np.array_equal(np.concatenate([first, rest]), want)


def test_tanh_accuracy():
    x = torch.linspace(-20.0, 20.0, 400_001)
    error = (fused_native.tanh(x).double() - torch.tanh(x.double())).abs()
    assert float(error.max()) < 5e-7


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            return next((set(line.split(":", 1)[1].split()) for line in info
                         if line.startswith("flags")), set())
    except OSError:  # pragma: no cover - not Linux
        return set()


@pytest.mark.parametrize("march, needs", [("x86-64-v2", set()), ("haswell", {"avx2", "fma"}),
                                          ("skylake-avx512", {"avx512f"})],
                         ids=["plain-loops", "avx2", "avx512"])
def test_each_instruction_set_gives_the_same_results(tiny_topk, monkeypatch, tmp_path, march,
                                                     needs):
    """The kernel compiled for each of its code paths (plain C loops, AVX2 + FMA, AVX-512)
    scores and ranks as the default build, and keeps its tanh within 5e-7 of torch's."""
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(needs - _cpu_flags())}: -march={march} cannot run")
    users = torch.arange(9)
    models = [build("kgcn", tiny_topk, n_hops=hops, n_neighbors=k) for hops in (1, 2)
              for k in (3, 4)]
    indptr, items = exclusions(tiny_topk[1].n_users, tiny_topk[1].n_items)
    default = [(scores(m, users, "native", monkeypatch), m.rank_users(users, 5, indptr, items))
               for m in models]
    monkeypatch.setenv("MMKGREC_CACHE", str(tmp_path))
    flags = tuple(f"-march={march}" if f == "-march=native" else f for f in fused_native.FLAGS)
    monkeypatch.setattr(fused_native, "FLAGS", flags)
    try:
        path = fused_native._build("cc")
    except subprocess.CalledProcessError as error:  # pragma: no cover - non-x86 machines
        pytest.skip(f"no -march={march} build here: {error.stderr}")
    assert path.parent == tmp_path / "kernels"  # its own library, keyed by the flags
    monkeypatch.setattr(fused_native, "_LIB", [fused_native._load(path)])
    for model, (want_scores, want_top) in zip(models, default, strict=True):
        model._ranking_slots = None
        torch.testing.assert_close(scores(model, users, "native", monkeypatch), want_scores,
                                   rtol=RTOL, atol=ATOL)
        assert torch.equal(model.rank_users(users, 5, indptr, items), want_top)
    x = torch.linspace(-20.0, 20.0, 100_001)
    assert float((fused_native.tanh(x).double() - torch.tanh(x.double())).abs().max()) < 5e-7


def test_no_compiler_falls_back_with_one_warning(tiny_topk, monkeypatch):
    monkeypatch.setattr(fused_native, "_LIB", [])
    monkeypatch.setenv("CC", "/nonexistent/cc")
    model = build("kgcn", tiny_topk, n_hops=1, n_neighbors=3)
    users = torch.arange(5)
    reference = scores(model, users, "reference", monkeypatch)
    with pytest.warns(RuntimeWarning, match="native KG ranking kernel is unavailable"):
        native = scores(model, users, "native", monkeypatch)
    torch.testing.assert_close(native, reference, rtol=RTOL, atol=ATOL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert model.rank_users(users, 3, torch.zeros(100, dtype=torch.int64),
                                torch.zeros(0, dtype=torch.int64)) is None
    assert fused_native._LIB == [None]
