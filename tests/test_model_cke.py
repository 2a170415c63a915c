"""CKE: item = offset + TransR structural embedding (+ denoising-AE codes), TransR shapes and
loss, corrupted tails, masked modalities, it beats pop. The shared contract (pair scores = full
ranking, gradients, checkpoints, defaults): tests/test_model_contract.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmkgrec.models import default_config
from mmkgrec.models.cke import CKE
from mmkgrec.models.pop import Pop
from mmkgrec.train.trainer import TrainConfig, Trainer


def build(ds, sp, seed=0, **overrides):
    torch.manual_seed(0)
    return CKE(ds, sp, CKE.Config(**overrides), seed=seed)


def bare(ds):
    return dataclasses.replace(ds, modalities={}, modality_masks={})


def test_shapes_and_item_vectors_are_offset_plus_structure_plus_codes(tiny_topk):
    ds, sp = tiny_topk
    model = build(ds, sp, dim=16, kg_dim=8)
    assert model.relation_proj.shape == (ds.n_relations, 16, 8)  # W_r [R, d, k]
    assert model.relation_emb.weight.shape == (ds.n_relations, 8)  # r [R, k]
    assert model.entity_emb.weight.shape == (ds.n_entities, 16)
    assert len(model.autoencoders) == len(ds.modalities) == 4
    items = torch.tensor([0, 3, 7])
    with torch.no_grad():
        expected = model.item_offset(items) + model.entity_emb(items)
        for k, ae in enumerate(model.autoencoders):
            present = getattr(model, f"present_{k}")[items].unsqueeze(1).float()
            expected += ae.encode(getattr(model, f"features_{k}")[items]) * present
        torch.testing.assert_close(model.item_vectors(items), expected)
        users = torch.tensor([0, 1, 2])
        assert model(users, items).shape == (3,)
        assert model.eval().score_users(users).shape == (3, ds.n_items)


@pytest.mark.parametrize("normalize", [False, True])
def test_transr_kg_loss_follows_the_formula(tiny_topk, normalize):
    ds, sp = tiny_topk
    model = build(ds, sp, dim=12, kg_dim=6, kg_normalize=normalize, kg_batch_size=5)
    heads, relations, tails, corrupted = model._kg_batches[:, :5]
    e, w, r = model.entity_emb.weight, model.relation_proj, model.relation_emb.weight
    with torch.no_grad():
        ph = torch.einsum("bd,bdk->bk", e[heads], w[relations])  # v_h W_r [5, k]
        pt = torch.einsum("bd,bdk->bk", e[tails], w[relations])
        pc = torch.einsum("bd,bdk->bk", e[corrupted], w[relations])
        rr = r[relations]
        if normalize:
            ph, pt, pc, rr = (F.normalize(x, dim=1) for x in (ph, pt, pc, rr))
        true, fake = (ph + rr - pt).pow(2).sum(1), (ph + rr - pc).pow(2).sum(1)
        norm = sum(x.pow(2).sum(1) for x in (ph, pt, pc, rr))
        expected = F.softplus(true - fake).mean() + model.config.kg_l2 * 0.5 * norm.mean()
        torch.testing.assert_close(model.kg_loss(), expected)


def test_epoch_triples_are_the_kg_with_corrupted_tails_that_are_not_triples(tiny_topk):
    ds, sp = tiny_topk
    model = build(ds, sp)
    heads, relations, tails, corrupted = model._kg_batches.numpy()
    got = sorted(zip(heads.tolist(), relations.tolist(), tails.tolist()))
    assert got == sorted(map(tuple, ds.triples.tolist()))  # every KG triple once, no user edges
    true = set(map(tuple, ds.triples.tolist()))
    fake = sum((h, r, t) in true for h, r, t in zip(heads, relations, corrupted))
    assert fake == 0 and corrupted.min() >= 0 and corrupted.max() < ds.n_entities
    before = model._kg_batches.clone()
    model.start_epoch(1, np.random.default_rng(1))
    assert not torch.equal(before, model._kg_batches)  # reshuffled every epoch


def test_kg_loss_decreases_and_can_be_switched_off(tiny_topk):
    ds, sp = tiny_topk
    model = build(ds, sp, kg_batch_size=256, ae_loss_weight=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = model.auxiliary_loss()  # the TransR loss only
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert build(ds, sp, kg_loss_weight=0.0, ae_loss_weight=0.0).auxiliary_loss() is None


def test_reconstruction_loss_learns_and_ignores_absent_items(tiny_topk):
    ds, sp = tiny_topk
    model = build(ds, sp, kg_loss_weight=0.0, ae_batch_size=ds.n_items, ae_noise=0.0)
    k = model.modality_names.index("image")
    ae, features = model.autoencoders[k], getattr(model, f"features_{k}")
    present = getattr(model, f"present_{k}")
    with torch.no_grad():
        base = ae.reconstruction_loss(features, present, 0.0)
        noisy = features.clone()
        noisy[~present] = 1e3  # garbage in the absent rows: no effect on the loss
        assert ae.reconstruction_loss(noisy, present, 0.0).item() == pytest.approx(base.item())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model.auxiliary_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_absent_modalities_change_nothing_and_no_modality_means_kg_only(tiny_topk):
    ds, sp = tiny_topk
    absent = ~ds.modality_masks["audio"]
    features = ds.modalities["audio"].copy()
    features[absent] = 1e3
    noisy = build(dataclasses.replace(ds, modalities={**ds.modalities, "audio": features}), sp)
    with torch.no_grad():
        torch.testing.assert_close(noisy.eval().score_users(torch.arange(6)),
                                   build(ds, sp).eval().score_users(torch.arange(6)))
    kg_only = build(bare(ds), sp)
    assert not len(kg_only.autoencoders) and kg_only._item_order is None
    assert kg_only.auxiliary_loss() is not None  # the TransR loss still trains
    with torch.no_grad():
        scores = kg_only.eval().score_users(torch.arange(4))
    assert scores.shape == (4, ds.n_items) and torch.isfinite(scores).all()


def test_short_training_beats_popularity(small_topk):
    ds, sp = small_topk
    pop = Trainer(Pop(ds, sp), sp, {"ks": [20]}).fit()["test"]
    model = build(ds, sp)
    result = Trainer(model, sp, {"loss": "bpr", "epochs": 4, "batch_size": 2048, "lr": 1e-2,
                                 "l2": 1e-4, "ks": [20]}).fit()["test"]
    assert result["ndcg@20"] > 1.2 * pop["ndcg@20"]
    assert result["recall@20"] > pop["recall@20"]


def test_default_training_is_recbole_like_bpr():
    train = TrainConfig(**default_config("cke")["train"])
    assert (train.loss, train.batch_size) == ("bpr", 2048)
