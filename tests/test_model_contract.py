"""The model contract (:class:`mmkgrec.models.base.Recommender`), checked for every model in the
registry: a newly registered model is picked up without editing this file.

Per model, on synthetic-tiny's topk split (and a copy without modalities) at tiny sizes:
output shapes; finite, non-zero gradients in every trainable parameter the training loss uses;
pair scores (``forward``) equal full-ranking scores (``score_users``) and the sampled-softmax
scores (``score_matrix``); a safetensors + JSON
checkpoint restores identical scores; the same seed gives the same scores after a short
training and another seed does not; the default config file parses for every protocol and
dataset. What only one model promises stays in its own ``test_model_<name>.py``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from importlib import resources

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from mmkgrec.data.registry import available_names
from mmkgrec.models import MODELS, default_config, model_class
from mmkgrec.train.checkpoint import load_checkpoint, save_checkpoint
from mmkgrec.train.trainer import TrainConfig, Trainer, seed_everything

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NAMES = sorted(MODELS)
TRAINABLE = [name for name in NAMES if MODELS[name].trainable]
PROTOCOLS = ("topk", "ctr", "cold")

# Tiny sizes, applied to whichever of these options a model has (on top of its topk defaults).
TINY = {"dim": 8, "kg_dim": 8, "feat_dim": 8, "hidden": 16, "layers": [8, 8], "n_heads": 2,
        "knn_k": 4, "knn": 4, "pretrain_epochs": 3, "beam_widths": [8, 4, 2],
        "kg_batch_size": 256, "ae_batch_size": 256, "modality_batch_size": 256}
SHORT_TRAINING = {"epochs": 2, "eval_every": 2, "patience": None, "batch_size": 256,
                  "lr": 1e-2, "ks": [20], "device": "cpu"}
PAIR_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}  # float32 reductions taken in another order

# Trainable parameters the training loss leaves without gradient by design (regular expressions
# on the parameter name -> why). Each must match a parameter, so an entry cannot outlive its cause.
FROZEN_PRETRAINED = "pretrained in start_epoch(0), then frozen for the policy gradient"
NO_GRADIENT = {
    "freedom": {r"projections\.\d+\.bias": "cancels in the modality BPR loss's <u, p+ - p->"},
    "mkgcn": {r"users\.empty_user": "the vector of users with no train history; tiny has none"},
    "mkrln": {r"(node|relation)_emb\.": FROZEN_PRETRAINED},
    "mmkgcf": {r"projections\.": "behind the modality gates, closed at gate_init 0"},
    "pgpr": {r"(node|relation)_emb\.": FROZEN_PRETRAINED},
}

# Known contract violations (src is not changed here): (check, model) -> what is wrong.
MKGCN_HISTORIES = ("MKGCN's forward reads the epoch's training history sample (history_size), "
                   "score_users a seeded evaluation sample (eval_history_size): ctr metrics "
                   "(forward) and topk ranking (score_users) see different users")
VIOLATIONS = {
    ("pairs", "mkgcn"): MKGCN_HISTORIES,
    ("checkpoint", "mkgcn"): (
        "MKGCN.prepare_ranking draws the evaluation histories from the constructor's seed "
        "(_eval_seed), which the checkpoint does not store: a model built with another seed "
        "and loaded ranks other histories (another order on tiny, ~5e-7; other items for users "
        "with more than eval_history_size train positives)"),
}


def models(check):
    """NAMES, with the known violations of ``check`` as strict xfails."""
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=VIOLATIONS[check, name]))
            if (check, name) in VIOLATIONS else name for name in NAMES]


# ---- building and training -------------------------------------------------------------------
def tiny_config(name: str, **overrides):
    cls = model_class(name)
    fields = cls.Config.model_fields
    base = default_config(name, protocol="topk")["model"]
    return cls.Config(**{**base, **{k: v for k, v in TINY.items() if k in fields}, **overrides})


def build(name, data, seed=0, config=None):
    """As ``mmkgrec train`` builds a model: global RNGs seeded, then the model's own seed."""
    ds, sp = data
    seed_everything(seed)
    return model_class(name)(ds, sp, config or tiny_config(name), seed=seed)


def train(name, data, seed=0):
    model = build(name, data, seed)
    options = {**default_config(name, protocol="topk")["train"], **SHORT_TRAINING, "seed": seed}
    Trainer(model, data[1], options, progress=False).fit(evaluate_test=False)
    return model.eval()


@torch.no_grad()
def ranking(model, users=None):
    model.eval()
    model.prepare_ranking()
    return model.score_users(torch.arange(model.n_users) if users is None else users)


def training_loss(model, users, positives, negatives):
    """The Trainer's objective without its L2 term (a parameter reached only by the penalty would
    decay, never learn): the model's own ``training_loss`` if it has one, else BPR over
    (positive, negative) + ``auxiliary_loss``."""
    custom = getattr(model, "training_loss", None)
    if custom is not None:
        return custom(users, positives, negatives)
    both_users, both_items = torch.cat([users, users]), torch.cat([positives, negatives])
    positive, negative = model(both_users, both_items).split(len(users))
    loss = -F.logsigmoid(positive - negative).mean()
    extra = model.auxiliary_loss()
    return loss if extra is None else loss + extra


@pytest.fixture(scope="module")
def no_modalities(tiny_topk):
    """synthetic-tiny without its modalities: a KG-only dataset such as lastfm-kgcn."""
    ds, sp = tiny_topk
    return dataclasses.replace(ds, modalities={}, modality_masks={}), sp


@pytest.fixture(scope="module")
def trained(tiny_topk):
    """name -> that model after a short training with seed 0 (built once, shared read-only)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = train(name, tiny_topk)
        return cache[name]
    return get


def some_batch(sp, n=64, seed=0):
    """n train positives (users, items) and as many uniform negatives."""
    rng = np.random.default_rng(seed)
    rows = sp.train_positives().iloc[rng.choice(len(sp.train_positives()), n, replace=False)]
    users = torch.tensor(rows["user"].to_numpy(), dtype=torch.int64)
    items = torch.tensor(rows["item"].to_numpy(), dtype=torch.int64)
    return users, items, torch.as_tensor(rng.integers(0, sp.n_items, n), dtype=torch.int64)


# ---- the registry and the configs -------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registry_entry_is_named_and_rejects_unknown_options(name):
    cls = MODELS[name]
    assert cls.name == name and model_class(name) is cls
    with pytest.raises(ValidationError):
        cls.Config(not_an_option=1)


@pytest.mark.parametrize("name", TRAINABLE)
def test_trainable_model_has_a_config_file_restating_its_defaults(name):
    path = resources.files("mmkgrec.models").joinpath("configs", f"{name}.toml")
    assert path.is_file(), f"models/configs/{name}.toml is missing"
    assert model_class(name).Config(**default_config(name)["model"]) == model_class(name).Config()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", NAMES)
def test_default_config_parses_for_every_protocol_and_dataset(name, protocol):
    path = resources.files("mmkgrec.models").joinpath("configs", f"{name}.toml")
    datasets = tomllib.loads(path.read_text()).get("dataset", {}) if path.is_file() else {}
    assert set(datasets) <= set(available_names()), "an override for an unknown dataset"
    for dataset in (None, *datasets):
        raw = default_config(name, dataset=dataset, protocol=protocol)
        model_class(name).Config(**raw["model"])
        train = TrainConfig.parse(**raw["train"])
        # the Trainer refuses fixed negatives outside ctr: a default must not ask for them
        assert train.negatives != "fixed" or protocol == "ctr", (dataset, protocol)


# ---- shapes, gradients, pair scores -----------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_outputs_have_the_contract_shapes(name, tiny_topk):
    ds, sp = tiny_topk
    model = build(name, tiny_topk)
    model.train()
    model.start_epoch(0, np.random.default_rng(0))
    users, items, _ = some_batch(sp, n=7)
    logits = model(users, items)
    assert logits.shape == (7,) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    penalty = model.regularization(users, items)
    assert penalty.shape == () and torch.isfinite(penalty) and penalty >= 0
    extra = model.auxiliary_loss()
    assert extra is None or (extra.shape == () and torch.isfinite(extra))
    scores = ranking(model, users[:3])
    assert scores.shape == (3, ds.n_items) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_trainable_parameter(name, tiny_topk):
    model = build(name, tiny_topk)
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    if not model.trainable:
        assert not params, "a model fitted in closed form has nothing for the optimiser"
        return
    exempt = NO_GRADIENT.get(name, {})
    for pattern in exempt:
        assert any(re.match(pattern, k) for k in params), f"stale exception {pattern!r}"
    model.train()
    model.start_epoch(0, np.random.default_rng(0))
    loss = training_loss(model, *some_batch(tiny_topk[1]))
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    for key, param in params.items():
        if any(re.match(pattern, key) for pattern in exempt):
            continue
        assert param.grad is not None, f"{key}: no gradient"
        assert torch.isfinite(param.grad).all(), f"{key}: non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{key}: zero gradient"


def assert_pairs_equal_ranking(model):
    model.eval()
    users = torch.tensor([0, 1, 17, 33, model.n_users - 1])
    with torch.no_grad():
        fresh = model.score_users(users)
        cached = ranking(model, users)  # after prepare_ranking: the same scores
        pairs = model(users.repeat_interleave(model.n_items),
                      torch.arange(model.n_items).repeat(len(users))).reshape(len(users), -1)
    assert cached.shape == (len(users), model.n_items)
    torch.testing.assert_close(cached, fresh, **PAIR_TOLERANCE)
    torch.testing.assert_close(pairs, cached, **PAIR_TOLERANCE)


@pytest.mark.parametrize("name", models("pairs"))
def test_pair_scores_equal_full_ranking_scores_after_training(name, trained):
    assert_pairs_equal_ranking(trained(name))


@pytest.mark.parametrize("name", models("pairs"))
def test_pair_scores_equal_full_ranking_scores_without_modalities(name, no_modalities):
    assert_pairs_equal_ranking(build(name, no_modalities))


@pytest.mark.parametrize("name", NAMES)
def test_score_matrix_equals_pair_scores(name, trained):
    """The sampled-softmax loss's [B, M] scores are forward's over every (user, item) pair."""
    model = trained(name)
    users, items = torch.arange(min(6, model.n_users)), torch.arange(min(10, model.n_items))
    with torch.no_grad():
        matrix = model.score_matrix(users, items)
        pairs = model(users.repeat_interleave(len(items)), items.repeat(len(users)))
    assert matrix.shape == (len(users), len(items))
    torch.testing.assert_close(matrix, pairs.view(len(users), -1), **PAIR_TOLERANCE)


# ---- checkpoints and determinism --------------------------------------------------------------
@pytest.mark.parametrize("name", models("checkpoint"))
def test_checkpoint_round_trip_restores_identical_scores(name, tiny_topk, trained, tmp_path):
    ds, sp = tiny_topk
    model = trained(name)
    save_checkpoint(tmp_path, model, model_name=name,
                    model_config=model.config.model_dump(mode="json"),
                    train_config={}, split=sp, dataset=ds)
    _, meta = load_checkpoint(tmp_path)
    config = model_class(name).Config(**meta["model"]["config"])  # the config back from JSON
    assert config == model.config
    restored = build(name, tiny_topk, seed=5, config=config)
    expected = ranking(model)
    assert not torch.equal(ranking(restored), expected)  # another seed: other scores
    load_checkpoint(tmp_path, restored, dataset=ds, split=sp)
    torch.testing.assert_close(ranking(restored), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_the_same_scores_after_training(name, tiny_topk, trained):
    torch.testing.assert_close(ranking(train(name, tiny_topk)), ranking(trained(name)),
                               rtol=0, atol=0)
    assert not torch.equal(ranking(train(name, tiny_topk, seed=1)), ranking(trained(name)))
