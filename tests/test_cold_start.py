"""The item cold-start protocol: held-out items never leak into training, ranking is among them."""

import numpy as np
import pytest
import torch

from mmkgrec.data.split import Split, split
from mmkgrec.errors import ConfigError
from mmkgrec.evaluate.ranking import evaluate_topk, rank_stage
from mmkgrec.models.base import Recommender


@pytest.fixture(scope="module")
def tiny_dataset(tiny_topk):
    return tiny_topk[0]


@pytest.fixture(scope="module")
def cold(tiny_dataset):
    return split(tiny_dataset, "cold", seed=3)


def test_cold_items_have_no_train_interactions(tiny_dataset, cold):
    valid, test = cold.cold_items["valid"], cold.cold_items["test"]
    assert len(valid) and len(test) and not np.intersect1d(valid, test).size
    assert not np.isin(cold.train["item"], np.concatenate([valid, test])).any()
    assert cold.item_popularity()[np.concatenate([valid, test])].sum() == 0
    # every positive of a cold item is in its stage: nothing is lost
    assert len(cold.train) + len(cold.valid) + len(cold.test) == len(tiny_dataset.positives())
    assert set(cold.test["item"]) <= set(test) and set(cold.valid["item"]) <= set(valid)


def test_cold_split_is_seeded_and_round_trips(tiny_dataset, cold, tmp_path):
    assert split(tiny_dataset, "cold", seed=3).fingerprint() == cold.fingerprint()
    assert split(tiny_dataset, "cold", seed=4).fingerprint() != cold.fingerprint()
    cold.save(tmp_path)
    loaded = Split.load(tmp_path, tiny_dataset)
    assert loaded.fingerprint() == cold.fingerprint()
    np.testing.assert_array_equal(loaded.candidate_items("test"), cold.candidate_items("test"))


def test_temporal_cold_split_is_refused(tiny_dataset):
    with pytest.raises(ConfigError):
        split(tiny_dataset, "cold", temporal=True)


class ByIdScorer(Recommender):
    """Scores item i as i: without the candidate mask the top items would be the last ids."""

    def __init__(self, n_items):
        torch.nn.Module.__init__(self)
        self.n_items = n_items

    def score_users(self, users):
        return torch.arange(self.n_items, dtype=torch.float32).expand(len(users), -1).clone()


def test_ranking_considers_only_the_stage_cold_items(cold):
    cold = cold.with_candidates("held-out")
    users, _, _ = cold.ground_truth("test")
    top = rank_stage(ByIdScorer(cold.n_items), cold, "test", users, 5, 64, "cpu")
    chosen = top[top >= 0]
    assert np.isin(chosen, cold.cold_items["test"]).all()
    assert (top[:, 0] == cold.cold_items["test"].max()).all()
    metrics, _ = evaluate_topk(ByIdScorer(cold.n_items), cold, "test", ks=(len(cold.cold_items["test"]),))
    assert metrics[f"recall@{len(cold.cold_items['test'])}"] == pytest.approx(1.0)  # all candidates


def test_content_lets_mkgcn_rank_new_items(tiny_dataset, cold):
    """With content, new items get informative vectors: MKGCN beats its KG-only self on cold items."""
    from mmkgrec.train.run import RunSpec, run_experiment

    def recall(options):  # mean test Recall@5 over three cold splits
        return np.mean([run_experiment(RunSpec(
            model="mkgcn", dataset="synthetic-tiny", protocol="cold", seed=seed,
            model_options={"dim": 16, **options}, train_options={"epochs": 8}), None
        ).metrics["test"]["recall@5"] for seed in (0, 1, 3)])

    with_content, kg_only = recall({}), recall({"modalities": []})
    assert with_content > kg_only + 0.1, (with_content, kg_only)


@pytest.mark.parametrize("strategy", ["uniform", "ratio"])
def test_negatives_never_name_a_cold_item(cold, strategy):
    from mmkgrec.graph.negatives import NegativeSampler

    sampler = NegativeSampler(cold, strategy, rng=0)
    held_out = np.concatenate(list(cold.cold_items.values()))
    _, items, labels = sampler.epoch_pairs()
    assert not np.isin(items[labels == 0], held_out).any()
    assert sampler.probabilities()[held_out].sum() == 0


def test_popularity_breaks_ties_at_random_not_by_item_id(tiny_dataset, cold):
    """Every cold item has zero train positives: pop must not rank them by id order."""
    from mmkgrec.models.pop import Pop

    users, _, _ = cold.ground_truth("test")
    firsts = {int(rank_stage(Pop(tiny_dataset, cold, seed=s), cold, "test", users[:1], 1, 8, "cpu")[0, 0])
              for s in range(6)}
    assert len(firsts) > 1  # the top cold item changes with the seed
    counts = cold.item_popularity()
    top = Pop(tiny_dataset, cold).logits.argsort(descending=True).numpy()
    assert (np.diff(counts[top]) <= 0).all()  # jitter never reorders different counts


@pytest.mark.parametrize("candidates", ["new", "held-out", "all"])
def test_cold_candidate_sets_mask_exactly_what_they_say(cold, candidates):
    """new: every item without a train positive competes (both stages' held-out songs and songs
    nobody played); held-out: the stage's own; all: every item. Ranking returns exactly them."""
    chosen_split = cold.with_candidates(candidates)
    untrained = np.flatnonzero(cold.item_popularity() == 0)
    expected = {"new": untrained, "held-out": cold.cold_items["test"],
                "all": np.arange(cold.n_items)}[candidates]
    allowed = chosen_split.candidate_items("test")
    np.testing.assert_array_equal(np.arange(cold.n_items) if allowed is None else allowed, expected)
    assert set(cold.cold_items["valid"]) <= set(untrained)  # new: the other stage competes too
    users, _, _ = cold.ground_truth("test")
    n = len(expected)
    top = rank_stage(ByIdScorer(cold.n_items), chosen_split, "test", users[:1], n + 5, 64, "cpu")
    exclusions = set(cold.test["item"][cold.test["user"] == users[0]]) | set()  # stage items stay
    known = set(cold.train["item"][cold.train["user"] == users[0]]) | set(
        cold.valid["item"][cold.valid["user"] == users[0]])
    assert set(top[0][top[0] >= 0]) == set(expected) - known
    assert exclusions <= set(top[0][top[0] >= 0])


def test_candidate_set_must_fit_the_protocol(cold, tiny_topk):
    with pytest.raises(ConfigError, match="does not fit"):
        cold.with_candidates("positive")
    with pytest.raises(ConfigError, match="does not fit"):
        tiny_topk[1].with_candidates("new")
