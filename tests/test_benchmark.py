"""`mmkgrec benchmark`: identical splits, per-user arrays, significance, breakdowns, resume,
pre-splits with RecBole's reference rows; all on synthetic-tiny."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mmkgrec.experiments.benchmark as bench
from conftest import requires_data, run_cli
from mmkgrec.cli import main
from mmkgrec.data import split
from mmkgrec.data.split import Split
from mmkgrec.errors import ConfigError
from mmkgrec.experiments.benchmark import BenchmarkSpec, run_benchmark
from mmkgrec.experiments.breakdown import breakdown_groups
from mmkgrec.experiments.recbole import markdown_tables
from mmkgrec.experiments.significance import holm
from mmkgrec.experiments.spec import overrides_for as _overrides_for

SMOKE = ["benchmark", "--datasets", "synthetic-tiny", "--models", "pop,bprmf,mkgcn", "--seeds",
         "2", "--set", "train.epochs=2"]



@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The CI smoke run: pop, bprmf, mkgcn x 2 seeds x 2 epochs."""
    out = tmp_path_factory.mktemp("bench") / "smoke"
    with pytest.raises(SystemExit) as info:
        main([*SMOKE, "--out", str(out)])
    assert (info.value.code or 0) == 0
    return out


def test_smoke_writes_every_artefact(smoke):
    results = pd.read_csv(smoke / "results.csv")
    assert len(results) == 6
    assert set(zip(results["model"], results["seed"])) == {
        (m, s) for m in ("pop", "bprmf", "mkgcn") for s in (0, 1)}
    for column in ("test_recall@10", "test_ndcg@20", "valid_ndcg@20", "train_s_per_epoch",
                   "eval_s_test", "epochs_run", "peak_rss_mb", "config_hash"):
        assert results[column].notna().all(), column
    assert (results.loc[results["model"] != "pop", "epochs_run"] == 2).all()
    report = (smoke / "results.md").read_text()
    for text in ("## synthetic-tiny", "| model | Recall@10 | Recall@20 | NDCG@10 | NDCG@20",
                 "Wilcoxon", "Holm", "NDCG@20 by user activity", "head", "tail", " ± "):
        assert text in report, text
    for name in ("synthetic-tiny-metrics.png", "synthetic-tiny-breakdown.png"):
        assert (smoke / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    breakdown = pd.read_csv(smoke / "breakdown.csv")
    assert set(breakdown["breakdown"]) == {"activity", "popularity"}
    assert {"Q1", "Q4", "head", "tail"} <= set(breakdown["group"])


def test_models_share_the_split_of_each_seed_and_per_user_means_match(smoke, tiny_topk):
    results = pd.read_csv(smoke / "results.csv").set_index(["model", "seed"])
    ds, _ = tiny_topk
    for seed in (0, 1):
        expected_users = split(ds, "topk", seed=seed).ground_truth("test")[0]
        for model in ("pop", "bprmf", "mkgcn"):
            saved = np.load(smoke / "per_user" / "synthetic-tiny" / model / f"seed{seed}.npz")
            np.testing.assert_array_equal(saved["users"], expected_users)
            # one ranking pass for the arrays == the Trainer's own test evaluation
            for metric in ("ndcg@20", "recall@20"):
                assert saved[metric].mean() == pytest.approx(
                    results.loc[(model, seed), f"test_{metric}"], abs=1e-9)


def test_significance_is_holm_over_seed_averaged_paired_tests(smoke):
    results = pd.read_csv(smoke / "results.csv")
    tests = pd.read_csv(smoke / "significance.csv")
    for metric in ("ndcg@20", "recall@20"):
        best = results.groupby("model")[f"test_{metric}"].mean().idxmax()
        rows = tests[tests["metric"] == metric]
        assert (rows["best"] == best).all()
        assert set(rows["model"]) == {"pop", "bprmf", "mkgcn"} - {best}
        per_user = {m: np.mean([np.load(smoke / "per_user" / "synthetic-tiny" / m /
                                        f"seed{s}.npz")[metric] for s in (0, 1)], axis=0)
                    for m in ("pop", "bprmf", "mkgcn")}
        raw = [stats.wilcoxon(per_user[best], per_user[m]).pvalue for m in rows["model"]]
        np.testing.assert_allclose(rows["wilcoxon_p"], raw, rtol=1e-10)
        np.testing.assert_allclose(rows["wilcoxon_p_holm"], holm(raw), rtol=1e-10)
        raw_t = [stats.ttest_rel(per_user[best], per_user[m]).pvalue for m in rows["model"]]
        np.testing.assert_allclose(rows["ttest_p_holm"], holm(raw_t), rtol=1e-10)
    # popularity beats 2-epoch BPR-MF by far on 60 users: marked on both tested metrics
    bprmf_row = next(line for line in (smoke / "results.md").read_text().splitlines()
                     if line.startswith("| bprmf |"))
    assert bprmf_row.count("†‡") == 2


def test_rerun_skips_finished_cells_and_redoes_changed_ones(smoke, tmp_path, capsys, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(smoke, out)
    before = pd.read_csv(out / "results.csv")
    calls = []
    real = bench.run_experiment

    def counting(spec, *args, **kwargs):
        calls.append((spec.model, spec.seed))
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(bench, "run_experiment", counting)
    code, out_text, err = run_cli(capsys, *SMOKE, "--out", str(out))
    assert code == 0, err
    assert calls == [] and "resumed: 6 of 6 cells" in out_text
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), before)

    code, _, err = run_cli(capsys, *SMOKE, "--set", "bprmf.dim=8", "--out", str(out))
    assert code == 0, err
    assert sorted(calls) == [("bprmf", 0), ("bprmf", 1)]  # only the changed model reran
    after = pd.read_csv(out / "results.csv").set_index(["model", "seed"])
    assert '"dim": 8' in after.loc[("bprmf", 0), "model_config"]
    assert after.loc[("mkgcn", 1), "config_hash"] == before.set_index(
        ["model", "seed"]).loc[("mkgcn", 1), "config_hash"]


def test_presplit_is_shared_by_all_seeds_and_recbole_rows_are_parsed(tmp_path, tiny_topk):
    ds, _ = tiny_topk
    fixed = split(ds, "topk", seed=7)
    root = tmp_path / "splits"
    (root / "synthetic-tiny").mkdir(parents=True)
    for part in ("train", "valid", "test"):
        frame = fixed.part(part)
        pd.DataFrame({"user_id": ds.users[frame["user"]], "item_id": ds.items[frame["item"]],
                      "rating": 5.0}).to_csv(root / "synthetic-tiny" / f"{part}.tsv", sep="\t",
                                             index=False)
    (root / "README.md").write_text(
        "# splits\n\nsome text\n\nsynthetic-tiny\n"
        "| model | Recall@10 | NDCG@10 | Recall@20 | NDCG@20 | s/epoch | s/test |\n"
        "|---|---|---|---|---|---|---|\n| Pop | 0.1234 | 0.0567 | 0.2345 | 0.0789 | 0.03 | 0.13 |\n"
        "\nother\n| model | Recall@10 |\n|---|---|\n| BPR | 0.9 |\n")
    spec = BenchmarkSpec.parse(datasets=["synthetic-tiny"], models=["pop"], seeds=[0, 1],
                               presplit_root=str(root), recbole_reference=True)
    report = run_benchmark(spec, tmp_path / "out", progress=False).read_text()
    first, second = (np.load(tmp_path / "out" / "per_user" / "synthetic-tiny" / "pop" /
                             f"seed{s}.npz") for s in (0, 1))
    np.testing.assert_array_equal(first["users"], fixed.ground_truth("test")[0])
    for key in ("users", "train_items"):  # seed 1 ran on the same fixed split
        np.testing.assert_array_equal(first[key], second[key])
    reference = next(line for line in report.splitlines() if "RecBole (reference)" in line)
    assert reference.startswith("| Pop — RecBole (reference) | 0.1234 | 0.2345 | 0.0567 | 0.0789")
    assert "BPR" not in report  # another section's table


def test_ctr_protocol_reports_auc_and_f1(tmp_path, capsys):
    code, _, err = run_cli(capsys, "benchmark", "--datasets", "synthetic-tiny", "--models",
                       "pop,bprmf", "--protocol", "ctr", "--seeds", "1", "--set",
                       "train.epochs=1", "--out", str(tmp_path))
    assert code == 0, err
    results = pd.read_csv(tmp_path / "results.csv")
    assert results["test_auc"].between(0, 1).all() and results["test_ndcg@20"].notna().all()
    assert "| model | AUC | F1 | Recall@20 | NDCG@20" in (tmp_path / "results.md").read_text()


def test_breakdown_groups_by_hand():
    # 10 items; train makes items 0 and 1 the head (top 20%); users 0..2 are evaluated
    train = pd.DataFrame({"user": [0, 0, 1, 1, 2, 3, 3, 3, 3, 3],
                          "item": [0, 1, 0, 1, 0, 1, 2, 3, 4, 7]})
    test = pd.DataFrame({"user": [0, 0, 1, 2], "item": [5, 9, 6, 8]})
    test.loc[[0], "item"] = 0  # user 0: head item 0 ... and tail item 9
    test = test.sort_values(["user", "item"]).reset_index(drop=True)
    empty = pd.DataFrame({"user": np.zeros(0, np.int64), "item": np.zeros(0, np.int64)})
    sp = Split("topk", n_users=4, n_items=10, train=train.astype(np.int64), valid=empty,
               test=test.astype(np.int64))
    users, indptr, items = sp.ground_truth("test")  # users 0, 1, 2
    top = np.full((3, 20), -1)
    top[0, :2] = [0, 4]  # user 0 finds its head item, misses tail item 9
    top[1, :1] = [6]  # user 1 finds its tail item 6
    top[2, :1] = [1]  # user 2 misses its tail item 8
    from mmkgrec.evaluate.metrics import per_user_topk_metrics

    per_user = per_user_topk_metrics(top, indptr, items, [20], 10)
    train_items = np.diff(sp.user_history()[0])[users]  # [2, 2, 1]
    rows = {(r["breakdown"], r["group"]): r for r in breakdown_groups(sp, top, per_user,
                                                                      train_items)}
    assert rows[("popularity", "head")]["n_users"] == 1
    assert rows[("popularity", "head")]["recall@20"] == 1.0
    assert rows[("popularity", "tail")]["n_users"] == 3
    assert rows[("popularity", "tail")]["recall@20"] == pytest.approx(1 / 3)
    assert rows[("activity", "<=3")]["n_users"] == 3
    assert rows[("activity", "<=3")]["recall@20"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert sum(r["n_users"] for k, r in rows.items() if k[1].startswith("Q")) == 3


def test_override_routing():
    assert _overrides_for(["model.dim=8", "train.epochs=1"], "pop") == ["train.epochs=1"]
    assert _overrides_for(["model.dim=8"], "bprmf") == ["model.dim=8"]
    assert _overrides_for(["bprmf.dim=8", "lightgcn.n_layers=1"], "bprmf") == ["dim=8"]
    assert _overrides_for(["n_layers=1"], "bprmf") == []
    with pytest.raises(ConfigError, match="prefix"):
        _overrides_for(["optim.lr=1"], "bprmf")


@pytest.mark.parametrize(("argv", "fragment"), [
    (("--models", "nope"), "unknown models"),
    (("--datasets", "no-such-data", "--models", "pop"), "unknown dataset"),
    (("--models", "pop", "--set", "model.dim=8"), "applies to none"),
    (("--models", "pop", "--protocol", "ctr", "--presplit-root", "."), "topk"),
    (("--models", "bprmf", "--presplit-root", "/nonexistent"), "train.tsv"),
])
def test_bad_options_fail_before_training(tmp_path, capsys, argv, fragment):
    code, _, err = run_cli(capsys, "benchmark", "--datasets", "synthetic-tiny", *argv,
                       "--out", str(tmp_path))
    assert code == 2 and fragment in err, err
    assert not (tmp_path / "results.csv").exists()


@requires_data("recbole-splits")
def test_recbole_readme_tables_parse(real_root):
    tables = markdown_tables(real_root / "recbole-splits" / "README.md")
    for dataset in ("lastfm-kgcn", "music-d"):
        table = tables[dataset]
        assert {"model", "Recall@10", "NDCG@20", "s/epoch"} <= set(table.columns)
        assert {"Pop", "BPR", "LightGCN"} <= set(table["model"])
        values = pd.to_numeric(table["Recall@20"])
        assert values.between(0, 1).all()


def test_directories_get_readable_labels_and_tables_state_candidates(tmp_path, capsys):
    """--datasets LABEL=DIR (or a bare DIR, labelled by its folder name); every table states its
    candidate set and content scope."""
    from mmkgrec.data import load
    from mmkgrec.data.formats.native import write_native

    write_native(load("synthetic-tiny"), tmp_path / "data" / "my-catalogue")
    folder = str(tmp_path / "data" / "my-catalogue")
    for entry, label in ((f"plays={folder}", "plays"), (folder, "my-catalogue")):
        out = tmp_path / f"out-{label}"
        code, text, _ = run_cli(capsys, "benchmark", "--datasets", entry, "--models", "pop",
                                "--seeds", "1", "--out", str(out))
        assert code == 0, text
        results = pd.read_csv(out / "results.csv")
        assert list(results["dataset"]) == [label]
        assert results["candidates"].iloc[0].startswith("positive (")
        assert results["content_scope"].iloc[0] == "none (no user content)"
        report = (out / "results.md").read_text()
        assert f"## {label}" in report and "Candidate items: positive" in report
        assert (out / "per_user" / label / "pop" / "seed0.npz").is_file()
    code, text, err = run_cli(capsys, "benchmark", "--datasets", f"a={folder},a={folder}",
                              "--models", "pop", "--out", str(tmp_path / "dup"))
    assert code == 2 and "used twice" in text + err


def test_presplit_root_serves_a_derived_dataset_from_its_source(tmp_path):
    """lastfm-kgcn-content is lastfm-kgcn's interactions: without a folder of its own it uses
    lastfm-kgcn's split; a dataset with neither folder is a clear error."""
    from mmkgrec.errors import ConfigError
    from mmkgrec.experiments.spec import BenchmarkSpec, presplit_dir

    (tmp_path / "lastfm-kgcn").mkdir()
    (tmp_path / "lastfm-kgcn" / "train.tsv").write_text("u\ti\t1\n")
    spec = BenchmarkSpec(datasets=["lastfm-kgcn-content"], models=["pop"],
                         presplit_root=str(tmp_path))
    assert presplit_dir(spec, "lastfm-kgcn-content") == tmp_path / "lastfm-kgcn"
    (tmp_path / "lastfm-kgcn-content").mkdir()
    (tmp_path / "lastfm-kgcn-content" / "train.tsv").write_text("u\ti\t1\n")
    assert presplit_dir(spec, "lastfm-kgcn-content") == tmp_path / "lastfm-kgcn-content"
    with pytest.raises(ConfigError, match="music-d holds no train.tsv"):
        presplit_dir(spec, "music-d")


def test_report_only_tables_cells_saved_by_separate_runs(smoke, tmp_path, monkeypatch):
    out = tmp_path / "smoke"
    shutil.copytree(smoke, out)
    (out / "results.md").unlink()
    monkeypatch.setattr(bench, "_run_and_save", lambda *a, **k: pytest.fail("ran a cell"))
    argv = ["benchmark", "--datasets", "synthetic-tiny", "--seeds", "2", "--set",
            "train.epochs=2", "--out", str(out), "--report-only"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--models", "pop,mkgcn"])
    assert (info.value.code or 0) == 0
    table = (out / "results.md").read_text()
    assert "| pop |" in table and "| mkgcn |" in table and "| bprmf |" not in table
    with pytest.raises(SystemExit) as info:  # a model never run here: a clear error
        main([*argv, "--models", "pop,lightgcn"])
    assert info.value.code == 2
