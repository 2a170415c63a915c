"""CLI smoke tests of train / evaluate / recommend / demo, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_cli
from mmkgrec.cli import main

TINY = ["--dataset", "synthetic-tiny", "--set", "epochs=2", "--set", "dim=8", "--set", "n_heads=2"]



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "mkgcn"
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "mkgcn", "--protocol", "ctr", "--out", str(out), *TINY])
    assert info.value.code in (0, None)
    return out


def test_train_writes_a_complete_run_directory(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert {"auc", "f1", "recall@20", "ndcg@20"} <= set(metrics["test"])
    for name in ("run.json", "split/split.json", "best/model.safetensors", "best/checkpoint.json",
                 "log.jsonl", "curve.png"):
        assert (trained / name).is_file(), name
    assert not list(trained.rglob("*.pt")) and not list(trained.rglob("*.pkl"))


def test_evaluate_reproduces_the_stored_test_metrics(trained, capsys):
    code, out, _ = run_cli(capsys, "evaluate", str(trained))
    assert code == 0
    auc = json.loads((trained / "metrics.json").read_text())["test"]["auc"]
    assert f"{auc:.4f}" in out


def test_recommend_for_a_user_and_a_new_listener(trained, capsys):
    code, out, _ = run_cli(capsys, "recommend", str(trained), "--user", "u3", "--k", "4")
    assert code == 0 and "Artist" in out
    code, out, _ = run_cli(capsys, "recommend", str(trained), "--liked", "s1,s2,s5", "--k", "3")
    assert code == 0 and "new listener" in out.replace("\n", " ")
    code, _, err = run_cli(capsys, "recommend", str(trained), "--user", "nobody")
    assert code == 2 and "unknown user" in err


def test_train_topk_kgcn_and_bad_options(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "train", "--model", "kgcn", "--protocol", "topk",
                       "--out", str(tmp_path / "k"), "--dataset", "synthetic-tiny", "--set", "epochs=1")
    assert code == 0 and "ndcg@20" in out
    code, _, err = run_cli(capsys, "train", "--model", "kgcn", "--out", str(tmp_path / "x"),
                       "--dataset", "synthetic-tiny", "--set", "colour=red")
    assert code == 2 and "unknown option 'colour'" in err
    code, _, err = run_cli(capsys, "train", "--model", "kgcn", "--out", str(tmp_path / "y"),
                       "--dataset", "synthetic-tiny", "--set", "aggregator=mean")
    assert code == 2 and "aggregator" in err


def test_demo_runs_on_a_tiny_catalogue(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "demo", "--dataset", "synthetic-tiny", "--out", str(tmp_path))
    assert code == 0
    assert all(m in out for m in ("mmkgcf", "mkgcn", "kgcn", "lightgcn", "pop", "AUC", "Recall@20",
                                    "new listener"))


def test_resume_after_kill(tmp_path):
    """Kill `mmkgrec train` after its first epoch checkpoint, then --resume to the end."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "mmkgrec", "train", "--model", "kgcn", "--dataset", "synthetic",
            "--out", str(out), "--set", "epochs=4", "--set", "batch_size=64", "--set", "patience=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # like the session: no thread oversubscription
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not (out / "last").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert killed, "training finished before it could be interrupted"
    assert not (out / "metrics.json").exists()
    result = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4
    epochs = [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
