"""BPR-MF: scores are dot products, gradients touch only the batch rows, L2, seeding, the
RecBole-like defaults, beats popularity. The shared contract: tests/test_model_contract.py."""

from __future__ import annotations

import torch

from mmkgrec.models import default_config
from mmkgrec.models.bprmf import BPRMF, BPRMFConfig
from mmkgrec.models.pop import Pop
from mmkgrec.train.trainer import TrainConfig, Trainer


def test_shapes_and_scores_are_dot_products(tiny_topk):
    ds, sp = tiny_topk
    model = BPRMF(ds, sp, BPRMFConfig(dim=8))
    users, items = torch.tensor([0, 3, 59]), torch.tensor([1, 119, 1])
    logits = model(users, items)
    assert logits.shape == (3,)
    expected = (model.user_emb.weight[users] * model.item_emb.weight[items]).sum(-1)
    torch.testing.assert_close(logits, expected)
    assert model.score_users(users).shape == (3, ds.n_items)


def test_gradients_reach_only_the_batch_rows(tiny_topk):
    ds, sp = tiny_topk
    model = BPRMF(ds, sp, BPRMFConfig(dim=8))
    users, items = torch.tensor([2, 5]), torch.tensor([7, 9])
    (model(users, items).sum() + model.regularization(users, items)).backward()
    user_rows = model.user_emb.weight.grad.abs().sum(-1) > 0  # [U]
    item_rows = model.item_emb.weight.grad.abs().sum(-1) > 0  # [I]
    assert user_rows.nonzero().flatten().tolist() == [2, 5]
    assert item_rows.nonzero().flatten().tolist() == [7, 9]


def test_regularization_is_half_the_mean_squared_norm(tiny_topk):
    ds, sp = tiny_topk
    model = BPRMF(ds, sp, BPRMFConfig(dim=8))
    users, items = torch.tensor([0, 0, 4]), torch.tensor([1, 2, 3])
    p, q = model.user_emb.weight[users], model.item_emb.weight[items]
    expected = 0.5 * (p.pow(2).sum() + q.pow(2).sum()) / 3
    torch.testing.assert_close(model.regularization(users, items), expected)


def test_initialisation_follows_the_seed_not_the_global_rng(tiny_topk):
    ds, sp = tiny_topk
    torch.manual_seed(1)
    a = BPRMF(ds, sp, BPRMFConfig(dim=8), seed=3)
    torch.manual_seed(2)
    b = BPRMF(ds, sp, BPRMFConfig(dim=8), seed=3)
    c = BPRMF(ds, sp, BPRMFConfig(dim=8), seed=4)
    torch.testing.assert_close(a.user_emb.weight, b.user_emb.weight)
    assert not torch.equal(a.item_emb.weight, c.item_emb.weight)
    bound = (6 / (ds.n_items + 8)) ** 0.5  # xavier-uniform
    assert a.item_emb.weight.abs().max() <= bound


def test_default_config_pins_recbole_settings():
    raw = default_config("bprmf")
    assert BPRMFConfig(**raw["model"]).dim == 64
    train = TrainConfig.parse(**raw["train"])
    assert (train.loss, train.negatives, train.batch_size, train.lr) == (
        "bpr", "uniform", 2048, 1e-3)


def test_short_training_beats_popularity(small_topk):
    ds, sp = small_topk
    pop = Trainer(Pop(ds, sp), sp, {"ks": [20], "device": "cpu"}).fit()
    model = BPRMF(ds, sp, BPRMFConfig(), seed=0)
    result = Trainer(model, sp, {"ks": [20], "loss": "bpr", "lr": 1e-2, "epochs": 5,
                                 "batch_size": 2048, "device": "cpu"}).fit()
    for stage in ("valid", "test"):
        assert result[stage]["ndcg@20"] > 1.3 * pop[stage]["ndcg@20"], stage
        assert result[stage]["recall@20"] > pop[stage]["recall@20"], stage
