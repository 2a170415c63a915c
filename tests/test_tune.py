"""`mmkgrec tune`: search spaces, a seeded search that never evaluates test, the TOML it writes."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import mmkgrec.train.trainer as trainer_module
from mmkgrec.cli import main
from mmkgrec.data.dataset import MMKG
from mmkgrec.errors import ConfigError
from mmkgrec.experiments.tune import (
    GENERIC_SPACE,
    LOSS_SPACE,
    TuneSpec,
    _import_optuna,
    applicable,
    conditional,
    parse_space,
    search_space,
    to_toml,
    tune,
)
from mmkgrec.train.run import RunSpec, read_config_file, resolved_configs

pytest.importorskip("optuna")


@pytest.fixture
def no_test_evaluation(monkeypatch):
    """Make any TEST evaluation inside the Trainer fail loudly."""
    real = trainer_module.evaluate_topk

    def guarded(model, split, stage, *args, **kwargs):
        if stage == "test":
            raise AssertionError("tuning evaluated the test set")
        return real(model, split, stage, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_topk", guarded)


def test_declared_and_generic_spaces():
    mkgcn = search_space("mkgcn")  # configs/mkgcn.toml has a [search] table
    assert mkgcn["dim"] == ("model", {"choices": [16, 32, 64]})
    assert mkgcn["lr"][0] == "train" and mkgcn["lr"][1]["log"] is True
    bprmf = search_space("bprmf")  # no [search]: the generic space
    assert set(bprmf) == set(GENERIC_SPACE) and bprmf["dim"][0] == "model"
    assert search_space("pop") == {}  # no options, not trainable: nothing to search


@pytest.mark.parametrize(("declared", "fragment"), [
    ({"width": {"choices": [1]}}, "not an option"),
    ({"model.lr": {"low": 1e-3, "high": 1e-2}}, "not an option"),
    ({"optim.lr": {"low": 1e-3, "high": 1e-2}}, "prefix"),
    ({"lr": {"low": 1e-3}}, "must be"),
    ({"lr": 0.01}, "must be"),
    ({"lr": {"low": 1e-3, "high": 1e-2, "when": "lr"}}, "when must be"),
    ({"lr": {"low": 1e-3, "high": 1e-2, "when": "colour=red"}}, "when must be"),
    ({"lr": {"low": 1e-3, "high": 1e-2, "needs": "lyrics"}}, "needs must be"),
])
def test_bad_search_tables_are_config_errors(declared, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_space("bprmf", declared, "bprmf.toml [search]")


def test_conditional_entries_follow_the_fixed_options():
    space = search_space("mmkgcf")  # learn_gates: gated route only; lambda_coeff: latent only
    gated = conditional(dict(space), "mmkgcf", {}, {})  # the default route is "gated"
    latent = conditional(search_space("mmkgcf"), "mmkgcf", {"content_route": "latent"}, {})
    assert "learn_gates" in gated and "lambda_coeff" not in gated and "item_layers" not in gated
    assert "learn_gates" not in latent and {"lambda_coeff", "item_layers"} <= set(latent)
    assert all("when" not in dist for _, dist in [*gated.values(), *latent.values()])
    assert gated["lr"] == latent["lr"]  # unconditional entries are shared


def test_options_acting_on_a_missing_part_of_the_dataset_are_not_searched():
    space = conditional(search_space("mmkgcf"), "mmkgcf", {}, {})
    plays_and_kg = SimpleNamespace(triples=np.ones((5, 3)), user_triples=np.zeros((0, 3)),
                                   user_links=np.zeros((0, 2)), modalities={},
                                   item_tag_links=np.zeros((0, 2)))  # music-d
    assert set(applicable(space, plays_and_kg)) == {"lr", "l2", "n_layers", "kg_weight",
                                                       "kg_item_knn"}
    untagged = pd.DataFrame({"tags": ["", " ", None]})  # tag column, no tags in it
    assert "tag_item_knn" not in applicable(space, SimpleNamespace(
        triples=np.ones((5, 3)), user_triples=np.ones((2, 3)), user_links=np.ones((2, 2)),
        modalities={}, item_tag_links=MMKG.item_tag_links.fget(SimpleNamespace(item_attrs=untagged))))
    everything = SimpleNamespace(triples=np.ones((5, 3)), user_triples=np.ones((2, 3)),
                                 user_links=np.ones((2, 2)), modalities={"text": object()},
                                 item_tag_links=np.ones((2, 2)))
    kept = applicable(space, everything)
    assert set(kept) == set(space) and all("needs" not in dist for _, dist in kept.values())
    assert "needs" in space["kg_weight"][1]  # the space passed in is left as it was


def test_toml_writer_round_trips():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib  # a dependency below 3.11

    tables = {"model": {"dim": 32, "layers": [64, 32], "fusion": "residual", "flag": True},
              "train": {"lr": 1e-05, "l2": 0.000123, "patience": None}}
    parsed = tomllib.loads(to_toml(tables))
    assert parsed["model"] == tables["model"]
    assert parsed["train"] == {"lr": 1e-05, "l2": 0.000123}  # None: left to the default


def test_tuning_bprmf_writes_a_usable_config_and_never_sees_test(tmp_path, no_test_evaluation):
    spec = TuneSpec(model="bprmf", dataset="synthetic-tiny", trials=3, seed=0,
                    overrides=["epochs=2"])
    result = tune(spec, tmp_path)
    assert result["monitor"] == "ndcg@20"
    model_options, train_options = read_config_file(tmp_path / "synthetic-tiny" / "bprmf.toml")
    best = result["best_params"]
    assert model_options["dim"] in (16, 32, 64) and model_options["dim"] == best["dim"]
    assert 1e-4 <= train_options["lr"] <= 1e-1 and train_options["lr"] == best["lr"]
    assert train_options["epochs"] == 2 and train_options["loss"] == "bpr"  # fixed + defaults
    assert train_options["ks"] == [5, 10, 20, 50]  # every effective option is written
    assert "seed" not in train_options and "device" not in train_options
    trials = pd.read_csv(result["trials_path"])
    assert len(trials) == 3 and trials["value"].max() == pytest.approx(result["best_value"])
    # the benchmark reads it back as options of a valid run
    model_cfg, train_cfg = resolved_configs(RunSpec(model="bprmf", dataset="synthetic-tiny",
                                                    model_options=model_options,
                                                    train_options=train_options))
    assert model_cfg.dim == model_options["dim"] and train_cfg.lr == train_options["lr"]
    # seeded TPE: the same search gives the same answer
    again = tune(spec, tmp_path / "again")
    assert again["best_params"] == result["best_params"]


def test_cli_tune_pop_runs_one_trial(tmp_path, capsys, no_test_evaluation):
    with pytest.raises(SystemExit) as info:
        main(["tune", "pop", "--dataset", "synthetic-tiny", "--trials", "3", "--out",
              str(tmp_path)])
    out = capsys.readouterr().out
    assert info.value.code in (0, None), out
    assert "best valid ndcg@20" in out
    model_options, train_options = read_config_file(tmp_path / "synthetic-tiny" / "pop.toml")
    assert model_options == {} and "seed" not in train_options
    assert len(pd.read_csv(tmp_path / "synthetic-tiny" / "pop-trials.csv")) == 1


def test_cli_tune_rejects_an_unknown_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["tune", "nope", "--dataset", "synthetic-tiny", "--out", str(tmp_path)])
    assert info.value.code == 2 and "unknown model" in capsys.readouterr().err


def test_missing_optuna_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(ConfigError, match="pip install"):
        _import_optuna()


def test_benchmark_tunes_every_model_with_one_budget_then_runs_tuned(tmp_path, capsys,
                                                                      monkeypatch):
    """`benchmark --tune-trials N`: each model gets N trials on validation (test is never
    evaluated while tuning), then the cells run at the tuned settings; a second call reuses the
    tuned files."""
    import mmkgrec.experiments.tune as tune_module

    calls, real_tune, real_evaluate = [], tune_module.tune, trainer_module.evaluate_topk

    def guarded(model, split, stage, *args, **kwargs):
        assert stage != "test", "tuning evaluated the test set"
        return real_evaluate(model, split, stage, *args, **kwargs)

    def counted(spec, out_dir, **kw):
        calls.append((spec.model, spec.trials, spec.label))
        monkeypatch.setattr(trainer_module, "evaluate_topk", guarded)
        try:
            return real_tune(spec, out_dir, **kw)
        finally:
            monkeypatch.setattr(trainer_module, "evaluate_topk", real_evaluate)

    monkeypatch.setattr(tune_module, "tune", counted)
    argv = ["benchmark", "--datasets", "synthetic-tiny", "--models", "pop,bprmf", "--seeds", "1",
            "--tune-trials", "2", "--set", "train.epochs=2", "--out", str(tmp_path / "b")]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert (info.value.code or 0) == 0, capsys.readouterr().out
    assert sorted(calls) == [("bprmf", 2, "synthetic-tiny"), ("pop", 2, "synthetic-tiny")]
    results = pd.read_csv(tmp_path / "b" / "results.csv")
    assert set(results["config_source"]) == {"tuned + --set"}
    tuned, _ = read_config_file(tmp_path / "b" / "tuned" / "synthetic-tiny" / "bprmf.toml")
    assert results.loc[results["model"] == "bprmf", "model_config"].str.contains(
        f'"dim": {tuned["dim"]}').all()
    with pytest.raises(SystemExit):
        main(argv)
    assert len(calls) == 2  # reused, not tuned again


def test_fixed_options_are_not_searched(tmp_path):
    spec = TuneSpec(model="bprmf", dataset="synthetic-tiny", trials=2, seed=0,
                    overrides=["epochs=1", "dim=8"])
    result = tune(spec, tmp_path)
    assert "dim" not in result["best_params"]
    model_options, _ = read_config_file(tmp_path / "synthetic-tiny" / "bprmf.toml")
    assert model_options["dim"] == 8


def test_a_fixed_softmax_loss_searches_its_temperature_for_every_model(tmp_path):
    spec = TuneSpec(model="bprmf", dataset="synthetic-tiny", trials=2, seed=0,
                    overrides=["epochs=1", "loss=softmax"])
    result = tune(spec, tmp_path)
    low, high = (LOSS_SPACE["softmax"]["temperature"][k] for k in ("low", "high"))
    assert low <= result["best_params"]["temperature"] <= high
    _, train_options = read_config_file(tmp_path / "synthetic-tiny" / "bprmf.toml")
    assert train_options["loss"] == "softmax"
    assert train_options["temperature"] == result["best_params"]["temperature"]
    # BPR (the default loss) has no temperature to search; a fixed temperature is not searched
    bpr = tune(spec.model_copy(update={"overrides": ["epochs=1"]}), tmp_path / "bpr")
    fixed = tune(spec.model_copy(update={"overrides": ["epochs=1", "loss=softmax",
                                                       "temperature=0.3"]}), tmp_path / "fixed")
    assert "temperature" not in bpr["best_params"] | fixed["best_params"]


def test_a_stopped_search_resumes_with_the_trials_it_lacks(tmp_path, no_test_evaluation):
    spec = TuneSpec(model="bprmf", dataset="synthetic-tiny", trials=2, seed=0,
                    overrides=["epochs=1"])
    tune(spec, tmp_path)
    journal = tmp_path / "synthetic-tiny" / "bprmf-study.jsonl"
    assert journal.is_file()
    more = tune(spec.model_copy(update={"trials": 3}), tmp_path)  # one trial more, not three
    trials = pd.read_csv(more["trials_path"])
    assert len(trials) == 3 and (trials["state"] == "COMPLETE").all()
    params = trials.filter(like="params_")
    assert not (params.iloc[2] == params.iloc[0]).all()  # the resumed trial is a new point
    with pytest.raises(ConfigError, match="other settings"):  # never mixes two searches
        tune(spec.model_copy(update={"overrides": ["epochs=2"]}), tmp_path)


def test_a_trial_cut_off_by_the_stop_runs_again_at_its_point(tmp_path, no_test_evaluation):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    spec = TuneSpec(model="bprmf", dataset="synthetic-tiny", trials=1, seed=0,
                    overrides=["epochs=1"])
    tune(spec, tmp_path)
    journal = tmp_path / "synthetic-tiny" / "bprmf-study.jsonl"
    study = optuna.load_study(study_name="search",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    done = study.trials[0]
    cut = study.ask(dict(done.distributions))  # RUNNING, as a process killed mid-trial leaves it
    point = dict(cut.params)
    more = tune(spec.model_copy(update={"trials": 2}), tmp_path)
    trials = pd.read_csv(more["trials_path"])
    assert list(trials["state"]) == ["COMPLETE", "FAIL", "COMPLETE"]
    rerun = trials.iloc[2]
    for name, value in point.items():
        assert rerun[f"params_{name}"] == pytest.approx(value)
