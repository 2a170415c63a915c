"""CUDA path: training and full ranking on a GPU (``pytest -m cuda``; skipped without a GPU).

Run on a GPU machine by ``benchmarks/gpu_check.sh``. Scores computed on CUDA must equal the CPU
ones within float32 tolerance, and the top-K lists must agree except at near-ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmkgrec.evaluate.ranking import evaluate_topk, rank_stage
from mmkgrec.models import KGCN, MKGCN, LightGCN
from mmkgrec.train import Trainer, seed_everything

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

SMALL = {"mkgcn": {"dim": 16, "n_heads": 2, "n_hops": 1}, "kgcn": {"dim": 16},
         "lightgcn": {"dim": 16}}
CLASSES = {"mkgcn": MKGCN, "kgcn": KGCN, "lightgcn": LightGCN}
TRAIN = {"epochs": 2, "batch_size": 256, "lr": 0.01, "loss": "bpr", "patience": None,
         "ks": [10, 20]}


def _model(name, tiny_topk, seed=0):
    ds, data = tiny_topk
    seed_everything(seed)
    cls = CLASSES[name]
    return cls(ds, data, cls.Config(**SMALL[name]), seed=seed)


@pytest.mark.parametrize("name", ["mkgcn", "kgcn", "lightgcn"])
def test_trains_on_cuda(name, tiny_topk):
    model = _model(name, tiny_topk)
    result = Trainer(model, tiny_topk[1], {**TRAIN, "device": "cuda"}, progress=False).fit()
    assert result["device"].startswith("cuda")
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert np.isfinite(result["valid"]["ndcg@20"]) and result["valid"]["ndcg@20"] > 0


def test_auto_device_picks_cuda(tiny_topk):
    result = Trainer(_model("kgcn", tiny_topk), tiny_topk[1], {**TRAIN, "epochs": 1},
                     progress=False).fit()
    assert result["device"].startswith("cuda")


@pytest.mark.parametrize("name", ["mkgcn", "kgcn", "lightgcn"])
def test_full_ranking_on_cuda_equals_cpu(name, tiny_topk):
    ds, data = tiny_topk
    model = _model(name, tiny_topk)
    Trainer(model, data, {**TRAIN, "device": "cpu", "epochs": 1}, progress=False).fit()
    users = torch.arange(ds.n_users)
    model.cpu().eval()
    with torch.no_grad():
        model.prepare_ranking()
        cpu_scores = model.score_users(users)  # [U, I]
        cpu_top = rank_stage(model, data, "test", users.numpy(), 20, 64, "cpu")
        cpu_metrics, _ = evaluate_topk(model, data, "test", (10, 20), 64, "cpu")
        model.cuda()
        model.prepare_ranking()
        gpu_scores = model.score_users(users.cuda()).cpu()
        gpu_top = rank_stage(model, data, "test", users.numpy(), 20, 64, "cuda")
        gpu_metrics, _ = evaluate_topk(model, data, "test", (10, 20), 64, "cuda")
    torch.testing.assert_close(gpu_scores, cpu_scores, rtol=1e-4, atol=1e-4)
    assert (gpu_top == cpu_top).mean() > 0.98  # only near-ties may swap
    for key, value in cpu_metrics.items():
        assert gpu_metrics[key] == pytest.approx(value, abs=0.01), key


def test_sparse_embeddings_on_cuda(tiny_topk):
    ds, data = tiny_topk
    seed_everything(0)
    model = KGCN(ds, data, KGCN.Config(dim=16, l2_scope="batch"), seed=0)
    result = Trainer(model, data, {**TRAIN, "device": "cuda", "sparse_embeddings": True},
                     progress=False).fit()
    assert result["device"].startswith("cuda") and result["valid"]["ndcg@20"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for NCCL ranks")
def test_two_gpu_ranks_with_nccl(tmp_path):
    import json
    import os
    import subprocess

    from mmkgrec.train.distributed import launch_command

    command = launch_command(2, ["train", "--model", "kgcn", "--dataset", "synthetic-tiny",
                                 "--protocol", "topk", "--out", str(tmp_path / "run"),
                                 "--set", "epochs=2", "--set", "device=cuda"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["device"].startswith("cuda")
