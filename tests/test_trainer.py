"""The shared Trainer, checkpoints, resume after a crash, and the ranking evaluator.

Models here are tiny stand-ins (matrix factorisation, a popularity scorer) that keep the
Recommender contract; the real models are tested in test_models.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from mmkgrec.data import load
from mmkgrec.data.split import split
from mmkgrec.errors import ConfigError
from mmkgrec.evaluate import evaluate_ctr, evaluate_topk, time_full_ranking, topk_metrics
from mmkgrec.models.base import ModelConfig, Recommender
from mmkgrec.train import CheckpointError, TrainConfig, Trainer, load_checkpoint
from mmkgrec.train import trainer as trainer_module
from mmkgrec.train.checkpoint import save_checkpoint

TESTS = Path(__file__).resolve().parent
# BPR + ratio negatives: exercises the sampler's RNG stream across a resume.
RESUME_CONFIG = dict(epochs=4, batch_size=256, lr=0.02, loss="bpr", negatives="ratio",
                     patience=None, seed=3, device="cpu", ks=[5, 20])


class MFConfig(ModelConfig):
    dim: int = 8


class MF(Recommender):
    """Plain matrix factorisation: score = <user, item>."""

    name = "mf"
    Config = MFConfig

    def __init__(self, dataset, split_, config=None, seed=0):
        super().__init__(dataset, split_, config or MFConfig())
        self.user = nn.Embedding(dataset.n_users, self.config.dim)
        self.item = nn.Embedding(dataset.n_items, self.config.dim)
        generator = torch.Generator().manual_seed(seed)
        for table in (self.user, self.item):
            nn.init.normal_(table.weight, std=0.1, generator=generator)

    def forward(self, users, items):
        return (self.user(users) * self.item(items)).sum(-1)

    def regularization(self, users, items):
        return (self.user(users).pow(2).sum() + self.item(items).pow(2).sum()) / len(users)

    def score_users(self, users):
        return self.user(users) @ self.item.weight.T


class Popularity(Recommender):
    """Not trainable: scores items by train popularity."""

    name = "pop"
    Config = ModelConfig
    trainable = False

    def __init__(self, dataset, split_, config=None, seed=0):
        super().__init__(dataset, split_, config or ModelConfig())
        popularity = torch.as_tensor(split_.item_popularity(), dtype=torch.float32)
        self.register_buffer("score", popularity)

    def forward(self, users, items):
        return self.score[items]

    def score_users(self, users):
        return self.score.expand(len(users), -1)


def tiny_data(protocol: str = "topk"):
    ds = load("synthetic-tiny")
    return ds, split(ds, protocol, seed=0)


def fit(ds, sp, out_dir=None, model_seed=0, **options):
    config = {**RESUME_CONFIG, **options}
    return Trainer(MF(ds, sp, seed=model_seed), sp, config, out_dir, progress=False).fit()


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """An uninterrupted run with RESUME_CONFIG, written to a directory."""
    out = tmp_path_factory.mktemp("straight")
    ds, sp = data
    return fit(ds, sp, out), out


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ---- training ------------------------------------------------------------------------------------
def test_run_writes_log_curve_metrics_and_loss_decreases(straight):
    results, out = straight
    log = read_log(out)
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["loss"] < log[0]["loss"] and all("valid" in r for r in log)
    assert log[-1]["valid"]["ndcg@20"] > log[0]["valid"]["ndcg@20"]
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text()) == results
    assert results["epochs_run"] == 4 and results["stop_reason"] == "epochs"
    assert results["monitor"] == "ndcg@20" and set(results["eval_seconds"]) == {"valid", "test"}
    best = max(log, key=lambda r: r["valid"]["ndcg@20"])
    assert results["best_epoch"] == best["epoch"] and results["valid"] == best["valid"]


def test_same_seed_same_metrics_other_seed_differs(data, straight):
    ds, sp = data
    again = fit(ds, sp)
    for key in ("valid", "test", "best_epoch"):
        assert again[key] == straight[0][key]
    other = fit(ds, sp, seed=4)
    assert other["test"] != again["test"]


class IndexedMF(MF):
    """MF that reads its tables by advanced indexing, whose backward (index_put_ accumulate)
    sums repeated rows in a thread-dependent order unless deterministic kernels are on."""

    def forward(self, users, items):
        return (self.user.weight[users] * self.item.weight[items]).sum(-1)


def test_same_seed_gives_bitwise_equal_weights_with_two_threads(data):
    """Without TrainConfig.deterministic this differed from run to run (4 of 4 runs distinct):
    large batches repeat each user many times, and two threads add their gradients unordered."""
    ds, sp = data
    options = dict(RESUME_CONFIG, epochs=3, batch_size=4096, lr=0.05, n_negatives=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(3):
            model = IndexedMF(ds, sp, seed=0)
            Trainer(model, sp, options, progress=False).fit()
            runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(runs[0], other) for other in runs[1:])
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is restored


def test_early_stopping_and_single_test_with_best_weights(data):
    ds, sp = data
    model = MF(ds, sp)
    trainer = Trainer(model, sp, {**RESUME_CONFIG, "epochs": 10, "patience": 2}, progress=False)
    script = iter([0.1, 0.3, 0.2, 0.25, 0.9])  # valid ndcg@20 per evaluation
    calls, real_evaluate = [], trainer._evaluate

    def scripted(stage):
        calls.append((stage, model.item.weight.detach().clone()))
        return ({"ndcg@20": next(script)}, 0.0) if stage == "valid" else real_evaluate(stage)

    trainer._evaluate = scripted
    results = trainer.fit()
    assert [stage for stage, _ in calls] == ["valid"] * 4 + ["test"]  # stopped after 2 bad evals
    assert results["stop_reason"] == "early stopping" and results["epochs_run"] == 4
    assert results["best_epoch"] == 2 and results["valid"] == {"ndcg@20": 0.3}
    assert torch.equal(calls[-1][1], calls[1][1])  # test saw epoch 2's weights
    assert not torch.equal(calls[-1][1], calls[3][1])


def test_min_epochs_holds_early_stopping_back(data):
    """A dip after a lucky first evaluation (a slow start, not a peak) does not end the run
    before ``min_epochs``; after it, patience applies as before."""
    ds, sp = data
    model = MF(ds, sp)
    trainer = Trainer(model, sp, {**RESUME_CONFIG, "epochs": 10, "patience": 2, "min_epochs": 6},
                      progress=False)
    script = iter([0.3, 0.1, 0.2, 0.25, 0.4, 0.35, 0.3, 0.2, 0.1, 0.1])
    real_evaluate = trainer._evaluate
    trainer._evaluate = lambda stage: (({"ndcg@20": next(script)}, 0.0) if stage == "valid"
                                       else real_evaluate(stage))
    results = trainer.fit()
    assert results["best_epoch"] == 5 and results["valid"] == {"ndcg@20": 0.4}  # patience 2 alone: epoch 1
    assert results["stop_reason"] == "early stopping" and results["epochs_run"] == 7


def test_ctr_protocol_monitors_auc_with_fixed_negatives():
    ds, sp = tiny_data("ctr")
    results = fit(ds, sp, loss="bce", negatives="fixed", epochs=3, lr=0.05)
    assert results["monitor"] == "auc" and {"auc", "f1", "accuracy"} <= set(results["test"])
    assert results["valid"]["auc"] > 0.6
    topk = tiny_data("topk")[1]
    with pytest.raises(ConfigError, match="ctr"):
        Trainer(MF(ds, topk), topk, {"negatives": "fixed"})


def test_untrainable_model_skips_optimisation(data, tmp_path):
    ds, sp = data
    model = Popularity(ds, sp)
    before = model.score.clone()
    results = Trainer(model, sp, {"device": "cpu", "ks": [5, 20]}, tmp_path, progress=False).fit()
    assert torch.equal(model.score, before)  # ranking masks a copy of expanded / buffer scores
    assert results["epochs_run"] == 0 and results["best_epoch"] == 0
    expected, _ = evaluate_topk(model, sp, "test", ks=[5, 20])
    assert results["test"] == expected
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_config_errors(data, tmp_path):
    ds, sp = data
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.parse(bogus=1)
    with pytest.raises(ConfigError, match="loss"):
        TrainConfig.parse(loss="hinge")
    with pytest.raises(ConfigError, match="ks"):
        TrainConfig.parse(ks=[0, 10])
    with pytest.raises(ConfigError, match="out_dir"):
        Trainer(MF(ds, sp), sp, {"device": "cpu"}).fit(resume=True)


# ---- checkpoints ---------------------------------------------------------------------------------
def test_checkpoint_round_trip_gives_identical_scores(data, straight, tmp_path):
    ds, sp = data
    _, out = straight
    trained = MF(ds, sp, seed=99)
    state, meta = load_checkpoint(out / "best", trained, dataset=ds, split=sp)
    assert meta["model"] == {"name": "mf", "config": {"dim": 8}}
    assert meta["split"]["protocol"] == "topk"
    assert meta["dataset"]["fingerprint"] == ds.fingerprint()
    assert meta["metrics"]["test"] == straight[0]["test"]
    users = torch.arange(ds.n_users)
    reloaded, _ = evaluate_topk(trained, sp, "test", ks=[5, 20])
    assert reloaded == straight[0]["test"]
    fresh = MF(ds, sp, seed=5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.score_users(users), trained.score_users(users))
    suffixes = {p.suffix for p in out.rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".jsonl", ".png"}  # no .pt / .pkl: no pickle
    assert not any(p.read_bytes()[:1] == b"\x80" for p in out.rglob("*.safetensors"))


def test_checkpoint_mismatch_and_corruption_raise(data, straight, tmp_path):
    ds, sp = data
    _, out = straight
    other_split = split(ds, "topk", seed=1)
    with pytest.raises(CheckpointError, match="another split"):
        load_checkpoint(out / "best", split=other_split)
    other_ds = load("synthetic-tiny", seed=1)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_checkpoint(out / "best", dataset=other_ds)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(out / "best", MF(ds, sp, MFConfig(dim=4)))
    with pytest.raises(CheckpointError, match="not a .*checkpoint"):
        load_checkpoint(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("checkpoint.json", "model.safetensors"):
        (copy / name).write_bytes((out / "best" / name).read_bytes())
    blob = bytearray((copy / "model.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(copy)


class Tied(MF):
    name = "tied"

    def __init__(self, dataset, split_, config=None, seed=0):
        super().__init__(dataset, split_, config, seed)
        self.output = nn.Linear(self.config.dim, dataset.n_items, bias=False)
        self.output.weight = self.item.weight  # tied: one tensor under two names


def test_checkpoint_handles_shared_tensors(data, tmp_path):
    ds, sp = data
    model = Tied(ds, sp, seed=1)
    save_checkpoint(tmp_path, model, model_name="tied", model_config={}, train_config={}, split=sp)
    other = Tied(ds, sp, seed=2)
    load_checkpoint(tmp_path, other)
    assert torch.equal(other.item.weight, model.item.weight)
    assert other.output.weight is other.item.weight


# ---- resume --------------------------------------------------------------------------------------
def test_resume_after_crash_equals_straight_run(data, straight, tmp_path):
    ds, sp = data

    def crash(epoch, batch):
        if epoch == 2 and batch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(MF(ds, sp), sp, RESUME_CONFIG, tmp_path, progress=False).fit(on_batch=crash)
    assert [r["epoch"] for r in read_log(tmp_path)] == [1, 2]
    resumed = Trainer(MF(ds, sp, seed=7), sp, RESUME_CONFIG, tmp_path, progress=False)
    results = resumed.fit(resume=True)
    for key in ("valid", "test", "best_epoch", "epochs_run"):
        assert results[key] == straight[0][key]
    assert [r["epoch"] for r in read_log(tmp_path)] == [1, 2, 3, 4]
    with pytest.raises(CheckpointError, match="lr"):
        Trainer(MF(ds, sp), sp, {**RESUME_CONFIG, "lr": 0.1}, tmp_path).fit(resume=True)


KILLED_RUN = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_trainer import MF, RESUME_CONFIG, tiny_data
from mmkgrec.train import Trainer

def hang_in_epoch_2(epoch, batch):
    if epoch == 1 and batch == 2:  # 0-based: the third batch of the second epoch
        Path({marker!r}).touch()
        time.sleep(600)  # until SIGKILL

ds, sp = tiny_data()
Trainer(MF(ds, sp), sp, RESUME_CONFIG, {out!r}, progress=False).fit(on_batch=hang_in_epoch_2)
"""


def test_resume_after_sigkill_equals_straight_run(data, straight, tmp_path):
    ds, sp = data
    out, marker = tmp_path / "run", tmp_path / "in-epoch-2"
    script = KILLED_RUN.format(tests=str(TESTS), out=str(out), marker=str(marker))
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, "the training subprocess ended early"
            assert time.monotonic() < deadline, "the subprocess did not reach epoch 2 in 60 s"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert (out / "last" / "checkpoint.json").is_file() and not (out / "metrics.json").exists()
    results = Trainer(MF(ds, sp, seed=11), sp, RESUME_CONFIG, out, progress=False).fit(resume=True)
    for stage in ("valid", "test"):
        for key, value in straight[0][stage].items():
            assert results[stage][key] == pytest.approx(value, abs=1e-6)
    assert [r["epoch"] for r in read_log(out)] == [1, 2, 3, 4]


# ---- evaluation ----------------------------------------------------------------------------------
def test_evaluate_topk_matches_a_dense_reference(data):
    ds, sp = data
    model = MF(ds, sp, seed=2)
    model.train()
    metrics, per_user = evaluate_topk(model, sp, "test", ks=[5, 20, 500], batch_users=7)
    assert model.training  # mode restored
    users, indptr, items = sp.ground_truth("test")
    with torch.no_grad():
        scores = model.score_users(torch.as_tensor(users)).numpy()  # [n_eval, n_items]
    ex_indptr, ex_items = sp.ranking_exclusions("test")
    rows = np.repeat(np.arange(len(users)), np.diff(ex_indptr)[users])
    starts = ex_indptr[users]
    cols = np.concatenate([ex_items[s:e] for s, e in zip(starts, ex_indptr[users + 1])])
    scores[rows, cols] = -np.inf
    allowed = sp.candidate_items("test")  # topk default: items with a positive in the split
    assert sp.candidates == "positive" and allowed is not None
    scores[:, np.setdiff1d(np.arange(ds.n_items), allowed)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")  # [n_eval, n_items]
    top = np.where(np.take_along_axis(scores, order, 1) == -np.inf, -1, order)
    top = np.pad(top, ((0, 0), (0, 500 - ds.n_items)), constant_values=-1)
    expected = topk_metrics(top, indptr, items, ks=[5, 20, 500])
    assert metrics.keys() == expected.keys()
    for key in expected:
        assert metrics[key] == pytest.approx(expected[key], abs=1e-12)
    assert per_user["ndcg@20"].shape == (len(users),)
    assert metrics["recall@500"] == pytest.approx(1.0)  # every allowed item is "ranked"
    assert time_full_ranking(model, sp) > 0


def test_evaluate_ctr_is_auc_over_the_whole_stage():
    ds, sp = tiny_data("ctr")
    model = MF(ds, sp, seed=3)
    metrics = evaluate_ctr(model, sp, "valid", batch=50)
    frame = sp.valid
    with torch.no_grad():
        users, items = (torch.tensor(frame[c].to_numpy()) for c in ("user", "item"))
        logits = model(users, items)
    assert metrics["auc"] == pytest.approx(roc_auc_score(frame["label"], logits.numpy()))
    with pytest.raises(ConfigError, match="ctr split"):
        evaluate_ctr(model, tiny_data("topk")[1], "valid")


def test_trainer_module_has_no_pickle():
    source = Path(trainer_module.__file__).parent
    for path in source.glob("*.py"):
        text = path.read_text()
        assert "torch.save" not in text and "import pickle" not in text and "torch.load" not in text


# ---- sampled softmax ------------------------------------------------------------------------------
def test_softmax_loss_is_cross_entropy_over_the_batch_with_own_copies_masked(data):
    ds, sp = data
    model = MF(ds, sp)
    trainer = Trainer(model, sp, {**RESUME_CONFIG, "loss": "softmax", "temperature": 0.5,
                                  "l2": 0.0}, progress=False)
    users = torch.tensor([0, 1, 2])
    positives = torch.tensor([5, 6, 5])  # users 0 and 2 share a positive
    negatives = torch.tensor([7, 5, 8])  # user 1's negative is user 0's positive
    loss = trainer._loss(users, positives, negatives)
    candidates = torch.cat([positives, negatives])  # [6]
    expected = []
    for row in range(3):  # reference: one user at a time
        logits = [model(users[row:row + 1], candidates[c:c + 1])[0] / 0.5 for c in range(6)]
        # the own positive (column row) stays; other copies of it are no negatives
        kept = [logits[c] for c in range(6) if c == row or candidates[c] != positives[row]]
        expected.append(torch.logsumexp(torch.stack(kept), 0) - logits[row])
    torch.testing.assert_close(loss, torch.stack(expected).mean())


def test_softmax_temperature_must_be_positive(data):
    ds, sp = data
    with pytest.raises(ConfigError, match="temperature"):
        Trainer(MF(ds, sp), sp, {**RESUME_CONFIG, "loss": "softmax", "temperature": 0},
                progress=False)
