"""Distributed data-parallel training (torchrun + DDP on gloo) and sparse embedding tables.

The end-to-end test starts ``torchrun --nproc-per-node 2 -m mmkgrec train`` on 2 CPU processes
and compares it with one process: the same validation AUC within ``AUC_TOLERANCE`` (the two
runs see the rows in different orders, so they are not bit-identical), and the checkpoint that
the distributed run wrote loads in a single process and scores what rank 0 measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from mmkgrec.errors import ConfigError
from mmkgrec.evaluate.ranking import evaluate_ctr
from mmkgrec.train import Trainer
from mmkgrec.train.distributed import (
    launch,
    launch_command,
    setup,
    shard_indices,
    strip_nproc,
)
from mmkgrec.train.run import RunSpec, load_run, run_experiment

AUC_TOLERANCE = 0.02  # measured: |2 ranks - 1 process| <= 0.004 on seeds 0 and 1
DDP_OPTIONS = {"epochs": 8, "patience": None, "device": "cpu"}


# ---- sharding and launching ----------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 12, 13, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_equal_distributed_sampler(n, world):
    for epoch in (0, 3):
        for rank in range(world):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                         seed=7)
            sampler.set_epoch(epoch)
            assert shard_indices(n, epoch, 7, rank, world).tolist() == list(sampler)


def test_shards_are_equal_disjoint_and_reshuffled_each_epoch():
    n, world = 1001, 4
    shards = [shard_indices(n, 0, 0, r, world) for r in range(world)]
    assert {len(s) for s in shards} == {251}  # ceil(1001 / 4): padded to equal sizes
    together = torch.cat(shards)
    assert set(together.tolist()) == set(range(n))
    assert len(together) - len(set(together.tolist())) == 3  # only the padding repeats
    assert not torch.equal(shard_indices(n, 1, 0, 0, world), shards[0])
    assert torch.equal(shard_indices(n, 0, 0, 0, world), shards[0])
    with pytest.raises(ConfigError):
        shard_indices(n, 0, 0, 4, world)


def test_launch_command_strips_nproc():
    argv = ["train", "--model", "kgcn", "--nproc", "4", "--set", "epochs=2", "--nproc=4"]
    assert strip_nproc(argv) == ["train", "--model", "kgcn", "--set", "epochs=2"]
    command = launch_command(2, argv)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[3:5] == ["--nproc-per-node", "2"]
    assert command[-7:] == ["-m", "mmkgrec", "train", "--model", "kgcn", "--set", "epochs=2"]
    with pytest.raises(ConfigError):
        launch_command(0, argv)


def test_single_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="already started"):
        launch(2, ["train"])


# ---- two processes vs one ------------------------------------------------------------------------
def test_two_cpu_ranks_match_one_process_and_checkpoint_loads(tmp_path):
    out = tmp_path / "ddp"
    overrides = [arg for key, value in DDP_OPTIONS.items()
                 for arg in ("--set", f"{key}={json.dumps(value)}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMKGREC_DEBUG": "1"}
    env.pop("WORLD_SIZE", None)
    command = launch_command(2, ["train", "--model", "mkgcn", "--dataset", "synthetic-tiny",
                                 "--protocol", "ctr", "--seed", "0", "--out", str(out),
                                 *overrides])
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == DDP_OPTIONS["epochs"]
    log = (out / "log.jsonl").read_text().splitlines()
    assert len(log) == DDP_OPTIONS["epochs"]  # written by rank 0 only

    spec = RunSpec(model="mkgcn", dataset="synthetic-tiny", protocol="ctr", seed=0,
                   train_options=DDP_OPTIONS)
    single = run_experiment(spec, tmp_path / "single", progress=False).metrics
    assert "world_size" not in single
    assert abs(metrics["valid"]["auc"] - single["valid"]["auc"]) <= AUC_TOLERANCE
    assert single["valid"]["auc"] > 0.75  # both actually learned (chance is 0.5)

    run = load_run(out)  # a single process reads the distributed checkpoint
    assert not any(key.startswith("module.") for key in run.model.state_dict())
    again = evaluate_ctr(run.model, run.split, "valid")
    assert again["auc"] == pytest.approx(metrics["valid"]["auc"], abs=1e-6)


# ---- scale: sparse embedding tables (SparseAdam) ------------------------------------------------
def _kgcn(tiny_topk):
    from mmkgrec.models import KGCN

    ds, data = tiny_topk
    torch.manual_seed(0)
    return KGCN(ds, data, KGCN.Config(dim=8, l2_scope="batch"), seed=0)


SPARSE = {"epochs": 4, "batch_size": 64, "lr": 0.02, "loss": "bpr", "negatives": "uniform",
          "patience": None, "device": "cpu", "ks": [10, 20], "sparse_embeddings": True}


def test_sparse_embeddings_train_with_row_sparse_gradients(tiny_topk):
    model = _kgcn(tiny_topk)
    seen = []

    def record(epoch, batch):
        if not seen:
            seen.extend((name, p.grad.is_sparse) for name, p in model.named_parameters()
                        if p.grad is not None)

    trainer = Trainer(model, tiny_topk[1], SPARSE, progress=False)
    result = trainer.fit(on_batch=record)
    flags = dict(seen)
    assert flags["user_emb.weight"] and flags["backbone.entity_emb.weight"]
    assert not flags["backbone.relation_emb.weight"]  # small table: dense Adam
    assert not any(m.sparse for m in model.modules() if isinstance(m, torch.nn.Embedding))
    dense = Trainer(_kgcn(tiny_topk), tiny_topk[1], {**SPARSE, "sparse_embeddings": False},
                    progress=False).fit()
    # Lazy Adam is not Adam, but both must learn alike on this data.
    assert result["valid"]["ndcg@20"] == pytest.approx(dense["valid"]["ndcg@20"], abs=0.05)
    assert result["valid"]["ndcg@20"] > 0


def test_sparse_embeddings_resume_equals_uninterrupted(tiny_topk, tmp_path):
    config = {**SPARSE, "epochs": 3}
    full = Trainer(_kgcn(tiny_topk), tiny_topk[1], config, tmp_path / "a", progress=False).fit()
    Trainer(_kgcn(tiny_topk), tiny_topk[1], {**config, "epochs": 2}, tmp_path / "b",
            progress=False).fit()
    optimizer = json.loads((tmp_path / "b" / "last" / "optimizer.json").read_text())
    assert optimizer["class"] == "MixedAdam"
    resumed = Trainer(_kgcn(tiny_topk), tiny_topk[1], config, tmp_path / "b",
                      progress=False).fit(resume=True)
    assert resumed["valid"] == full["valid"] and resumed["test"] == full["test"]


def test_sparse_embeddings_refuse_models_that_read_whole_tables(tiny_topk):
    from mmkgrec.models import LightGCN

    ds, data = tiny_topk
    model = LightGCN(ds, data, LightGCN.Config(dim=8, n_layers=1), seed=0)
    with pytest.raises(ConfigError, match="dense gradient"):
        Trainer(model, data, SPARSE, progress=False).fit()
    assert np.all([not m.sparse for m in model.modules() if isinstance(m, torch.nn.Embedding)])
