"""MMKG-CF: the collaborative KG graph, kNN content graphs, the closed gate, gradients through
open gates, new listeners, the defaults, beats popularity. The shared contract (pair scores =
full ranking, gradients, checkpoints, defaults): tests/test_model_contract.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from tests.conftest import assert_pair_scores_match_ranking

from mmkgrec.data.dataset import MMKG
from mmkgrec.models import default_config
from mmkgrec.models.lattice import LATTICE
from mmkgrec.models.mmkgcf import (
    MMKGCF,
    MMKGCFConfig,
    kg_item_edges,
    knn_edges,
    shared_link_edges,
)
from mmkgrec.models.pop import Pop
from mmkgrec.train.checkpoint import load_checkpoint, save_checkpoint
from mmkgrec.train.trainer import TrainConfig, Trainer


def test_graph_holds_train_plays_and_kg_edges_only(tiny_topk):
    """Dense check of Â: users x entities, train positives weight 1, KG pairs kg_weight,
    symmetric-normalised by weighted degree; valid / test pairs absent."""
    ds, sp = tiny_topk
    model = MMKGCF(ds, sp, MMKGCFConfig(dim=4, kg_weight=0.5, modalities=[]))
    n = ds.n_users + ds.n_entities
    a = np.zeros((n, n))
    train = sp.train_positives()
    a[train["user"], ds.n_users + train["item"]] = 1.0
    for h, _, t in ds.triples:
        if h != t:
            a[ds.n_users + h, ds.n_users + t] = a[ds.n_users + t, ds.n_users + h] = 0.5
    a = np.maximum(a, a.T)
    degree = a.sum(1)
    scale = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1e-12)), 0)
    np.testing.assert_allclose(model.adjacency.to_dense().numpy(), scale[:, None] * a * scale,
                               atol=1e-6)
    test = sp.positives("test")
    assert not model.adjacency.to_dense()[test["user"], ds.n_users + test["item"]].any()
    no_kg = MMKGCF(ds, sp, MMKGCFConfig(dim=4, kg_weight=0.0, modalities=[]))
    dense = no_kg.adjacency.to_dense()
    assert not dense[ds.n_users:, ds.n_users:].any()  # no entity-entity edge without the KG


def test_knn_graph_has_k_neighbours_per_present_item_and_none_for_absent():
    torch.manual_seed(0)
    features = torch.randn(30, 5)
    present = torch.ones(30, dtype=torch.bool)
    present[[3, 7]] = False
    rows, cols = knn_edges(features, present, 4)
    counts = np.bincount(rows, minlength=30)
    assert (counts[present.numpy()] == 4).all() and counts[[3, 7]].sum() == 0
    assert not np.isin(cols, [3, 7]).any() and not (rows == cols).any()
    unit = torch.nn.functional.normalize(features, dim=1)
    sims = (unit @ unit.T).numpy()
    sims[:, [3, 7]] = -np.inf
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims[0])[:4]
    assert set(cols[rows == 0]) == set(expected)


def test_closed_gate_means_content_changes_no_score(tiny_topk):
    ds, sp = tiny_topk
    assert ds.modalities  # synthetic-tiny has content
    config = MMKGCFConfig(dim=8, gate_init=0.0, learn_gates=False)
    base = MMKGCF(ds, sp, config, seed=0).eval()
    noisy = dataclasses.replace(ds, modalities={k: np.random.default_rng(1).normal(size=v.shape)
                                                .astype(np.float32)
                                                for k, v in ds.modalities.items()})
    other = MMKGCF(noisy, sp, config, seed=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(base.score_users(torch.arange(6)),
                                   other.score_users(torch.arange(6)))
    opened = MMKGCF(noisy, sp, config.model_copy(update={"gate_init": 0.5}), seed=0).eval()
    with torch.no_grad():  # control: an open gate lets the content in
        assert not torch.allclose(base.score_users(torch.arange(6)),
                                  opened.score_users(torch.arange(6)))


def test_gradients_reach_kg_entities_every_gate_and_projections_behind_open_gates(tiny_topk):
    ds, sp = tiny_topk
    model = MMKGCF(ds, sp, MMKGCFConfig(dim=8, gate_init=0.1), seed=0)
    users, items = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    model(users, items).sum().backward()
    assert model.entity_emb.weight.grad[ds.n_items:].abs().sum() > 0  # KG entities learn
    assert model.gates.grad.abs().min() > 0
    assert all(p.weight.grad.abs().sum() > 0 for p in model.projections)


def test_new_listener_is_the_mean_of_liked_items(tiny_topk):
    ds, sp = tiny_topk
    model = MMKGCF(ds, sp, MMKGCFConfig(dim=8), seed=0).eval()
    with torch.no_grad():
        _, items = model.final_embeddings()
        scores = model.score_histories(torch.tensor([[1, 2, 0]]), torch.tensor([[True, True, False]]))
        torch.testing.assert_close(scores[0], (items[1] + items[2]) / 2 @ items.T)


def test_default_config_starts_with_closed_gates_and_bpr():
    raw = default_config("mmkgcf")
    assert MMKGCFConfig(**raw["model"]).gate_init == 0.0
    assert TrainConfig.parse(**raw["train"]).loss == "bpr"


def test_short_training_beats_popularity(small_topk):
    ds, sp = small_topk
    pop = Trainer(Pop(ds, sp), sp, {"ks": [20], "device": "cpu"}).fit()
    model = MMKGCF(ds, sp, MMKGCFConfig(), seed=0)
    result = Trainer(model, sp, {"ks": [20], "loss": "bpr", "lr": 2e-2, "epochs": 3,
                                 "batch_size": 2048, "device": "cpu"}).fit()
    for stage in ("valid", "test"):
        assert result[stage]["ndcg@20"] > 1.3 * pop[stage]["ndcg@20"], stage



def expected_adjacency(ds, sp, kg_weight, user_facts=(), user_kg_weight=0.0, user_links=(),
                       social_weight=0.0):
    """Dense Â: users x entities, train positives 1, KG pairs kg_weight, user facts
    user_kg_weight, user-user links social_weight, symmetric-normalised by weighted degree."""
    n = ds.n_users + ds.n_entities
    a = np.zeros((n, n))
    train = sp.train_positives()
    a[train["user"], ds.n_users + train["item"]] = 1.0
    for h, _, t in ds.triples:
        if h != t and kg_weight:
            a[ds.n_users + h, ds.n_users + t] = a[ds.n_users + t, ds.n_users + h] = kg_weight
    for u, _, e in user_facts:
        a[u, ds.n_users + e] = user_kg_weight
    for u, v in user_links:
        a[u, v] = social_weight
    a = np.maximum(a, a.T)
    degree = a.sum(1)
    scale = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1e-12)), 0)
    return scale[:, None] * a * scale


def test_user_facts_are_user_entity_edges_of_their_weight_and_nothing_at_zero(tiny_topk):
    """User-side KG facts (here on pairs that are not train positives) enter Â as user-entity
    edges of weight user_kg_weight; at weight 0 (the default) they change nothing."""
    ds, sp = tiny_topk
    train = set(zip(sp.train_positives()["user"], sp.train_positives()["item"]))
    pairs = [(u, i) for u in range(ds.n_users) for i in range(ds.n_items) if (u, i) not in train]
    facts = np.array([(u, 0, i) for u, i in pairs[::7]], dtype=np.int64)  # [F, 3]
    assert len(facts) > 3
    with_facts = dataclasses.replace(ds, user_relations=np.array(["tagged"]), user_triples=facts)
    config = MMKGCFConfig(dim=8, kg_weight=0.5, modalities=[])
    base = MMKGCF(ds, sp, config, seed=0).eval()
    off = MMKGCF(with_facts, sp, config, seed=0).eval()
    on = MMKGCF(with_facts, sp, config.model_copy(update={"user_kg_weight": 2.0}), seed=0).eval()
    np.testing.assert_allclose(off.adjacency.to_dense().numpy(),
                               expected_adjacency(ds, sp, 0.5), atol=1e-6)
    np.testing.assert_allclose(on.adjacency.to_dense().numpy(),
                               expected_adjacency(ds, sp, 0.5, facts, 2.0), atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(off.score_users(torch.arange(6)), base.score_users(torch.arange(6)))
        assert not torch.allclose(on.score_users(torch.arange(6)), base.score_users(torch.arange(6)))


def test_user_links_are_user_user_edges_of_their_weight_and_nothing_at_zero(tiny_topk):
    """Friendships enter Â as user-user edges of weight social_weight (both directions from one
    stored link); at weight 0 (the default) they change nothing; on, friends' vectors mix."""
    ds, sp = tiny_topk
    links = MMKG.undirected_links(np.array([(u, (u * 3 + 1) % ds.n_users)
                                            for u in range(ds.n_users)]))  # [S, 2]
    with_links = dataclasses.replace(ds, user_links=links)
    config = MMKGCFConfig(dim=8, kg_weight=0.5, modalities=[])
    base = MMKGCF(ds, sp, config, seed=0).eval()
    off = MMKGCF(with_links, sp, config, seed=0).eval()
    on = MMKGCF(with_links, sp, config.model_copy(update={"social_weight": 2.0}), seed=0).eval()
    np.testing.assert_allclose(on.adjacency.to_dense().numpy(),
                               expected_adjacency(ds, sp, 0.5, user_links=links,
                                                  social_weight=2.0), atol=1e-6)
    users = torch.arange(ds.n_users)
    with torch.no_grad():
        torch.testing.assert_close(off.score_users(users), base.score_users(users))
        assert not torch.allclose(on.score_users(users), base.score_users(users))
        def friend_cosine(model):  # mean cosine of linked users' final vectors
            u, _ = model.final_embeddings()
            a, b = torch.from_numpy(links).T
            return torch.nn.functional.cosine_similarity(u[a], u[b]).mean()
        assert friend_cosine(on) > friend_cosine(base) + 0.05


# ---- the latent content route (LATTICE's learned item-item graph) ------------------------------
def latent(ds, sp, seed=0, **options):
    return MMKGCF(ds, sp, MMKGCFConfig(dim=8, feat_dim=8, knn=4, content_route="latent",
                                       **options), seed=seed)


def test_latent_route_without_kg_is_lattice(tiny_topk):
    """With no KG edges and no user facts, MMKG-CF's latent route is LATTICE: the same weights
    give the same scores."""
    ds, sp = tiny_topk
    ours = latent(ds, sp, kg_weight=0.0, n_layers=2, lambda_coeff=0.7, item_layers=2).eval()
    lattice = LATTICE(ds, sp, LATTICE.Config(dim=8, feat_dim=8, knn_k=4, n_layers=2,
                                             lambda_coeff=0.7, item_layers=2), seed=3).eval()
    assert ours.gates is None and not ours.projections  # no gated route
    with torch.no_grad():
        ours.user_emb.weight.copy_(lattice.user_emb.weight)
        ours.entity_emb.weight[:ds.n_items] = lattice.item_emb.weight
        ours.latent.load_state_dict(lattice.latent.state_dict())
        torch.testing.assert_close(ours.score_users(torch.arange(ds.n_users)),
                                   lattice.score_users(torch.arange(ds.n_users)))


def test_latent_route_pairs_equal_ranking_and_gradients_reach_the_learned_graph(tiny_topk):
    ds, sp = tiny_topk
    model = latent(ds, sp, kg_weight=0.5)
    assert_pair_scores_match_ranking(model)
    model.train()
    users, items = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    model(users, items).sum().backward()  # an epoch's first step: the graph carries gradient
    assert all(p.weight.grad.abs().sum() > 0 for p in model.latent.projections)
    assert model.latent.modal_weight.grad.abs().sum() > 0
    assert model.entity_emb.weight.grad[ds.n_items:].abs().sum() > 0  # KG entities learn


def test_latent_route_content_changes_scores_and_checkpoint_restores_them(tiny_topk, tmp_path):
    ds, sp = tiny_topk
    model = latent(ds, sp).eval()
    no_content = latent(ds, sp, modalities=[]).eval()
    assert no_content.latent is None
    with torch.no_grad():
        scores = model.score_users(torch.arange(6))
        assert not torch.allclose(scores, no_content.score_users(torch.arange(6)))
    save_checkpoint(tmp_path, model, model_name="mmkgcf", model_config=model.config.model_dump(),
                    train_config={}, split=sp, dataset=ds)
    restored = latent(ds, sp, seed=1).eval()
    load_checkpoint(tmp_path, restored, dataset=ds, split=sp)
    with torch.no_grad():
        assert not torch.allclose(latent(ds, sp, seed=1).eval().score_users(torch.arange(6)), scores)
        torch.testing.assert_close(restored.score_users(torch.arange(6)), scores)


def test_kg_item_graph_joins_items_by_rare_shared_entities_only():
    """Items 0-4, entities 5-8. 0 and 1 share rare entity 5; 0-3 share entity 6; every item
    links to entity 8 (IDF 0); item 4 has only 8 and entity 7 (no other item), so no neighbour."""
    triples = np.array([[0, 0, 5], [5, 1, 1],  # either direction counts
                        [0, 0, 6], [1, 0, 6], [2, 0, 6], [3, 0, 6], [4, 0, 7],
                        *[[i, 0, 8] for i in range(5)]])
    rows, cols = kg_item_edges(triples, n_items=5, n_entities=9, k=1)
    neighbour = dict(zip(rows.tolist(), cols.tolist()))
    assert neighbour[0] == 1 and neighbour[1] == 0  # the rare shared entity beats the common one
    assert neighbour[2] == 3 and 4 not in neighbour and 4 not in cols  # 2, 3: only entity 6
    assert (rows != cols).all()
    rows, cols = kg_item_edges(triples, n_items=5, n_entities=9, k=10)
    assert np.bincount(rows, minlength=5).tolist() == [3, 3, 3, 3, 0]  # similarity > 0 only
    assert kg_item_edges(triples, 5, 9, k=0)[0].size == 0


def test_kg_item_graph_adds_one_hop_of_item_ego_embeddings(tiny_topk):
    """v_i = (baseline v_i) + (S_kg E^0_items)_i; pairs equal ranking; gradients reach items
    through S_kg; kg_item_knn = 0 builds no graph."""
    ds, sp = tiny_topk
    options = dict(dim=8, kg_weight=0.5, modalities=[])
    model = MMKGCF(ds, sp, MMKGCFConfig(kg_item_knn=3, **options)).eval()
    plain = MMKGCF(ds, sp, MMKGCFConfig(**options)).eval()
    assert plain.kg_item_graph is None and model.kg_item_graph._nnz() > 0
    with torch.no_grad():
        users, items = model.propagate()
        plain_users, plain_items = plain.propagate()
        hop = model.kg_item_graph.to_dense() @ model.entity_emb.weight[:ds.n_items]
    torch.testing.assert_close(users, plain_users)
    torch.testing.assert_close(items, plain_items + hop)
    assert_pair_scores_match_ranking(model)
    model.train()
    model(torch.tensor([0]), torch.tensor([0])).sum().backward()
    neighbours = model.kg_item_graph.to_dense()[0].nonzero().squeeze(1)
    assert model.entity_emb.weight.grad[neighbours].abs().sum(1).gt(0).all()


def test_tag_item_graph_joins_items_by_shared_tags_and_adds_their_one_hop(tiny_topk):
    """Tags from item_attrs["tags"] ('; '-separated): items 0 and 1 share a rare tag, 2 and 3
    another; the others share only the common 'rock'; item 5 has no tags, so no neighbour.
    v_i gains (S_tag E^0)_i."""
    ds, sp = tiny_topk
    tags = ["rock; shoegaze", "shoegaze ;rock", "rock; jazz", "jazz; rock", "rock", ""]
    tags += ["rock"] * (ds.n_items - len(tags))
    tagged = dataclasses.replace(ds, item_attrs=pd.DataFrame({"tags": tags}))
    links = tagged.item_tag_links
    n_tags = int(links[:, 1].max()) + 1
    assert n_tags == 3 and len(links) == 2 * 4 + (ds.n_items - 6) + 1
    rows, cols = shared_link_edges(links, ds.n_items, n_tags, k=1)
    neighbour = dict(zip(rows.tolist(), cols.tolist()))
    assert [neighbour[i] for i in range(4)] == [1, 0, 3, 2]  # the rare tag beats 'rock'
    assert 5 not in neighbour and 5 not in cols and (rows != cols).all()
    options = dict(dim=8, kg_weight=0.5, modalities=[])
    model = MMKGCF(tagged, sp, MMKGCFConfig(tag_item_knn=1, **options)).eval()
    plain = MMKGCF(tagged, sp, MMKGCFConfig(**options)).eval()
    assert plain.tag_item_graph is None and model.tag_item_graph._nnz() > 0
    untagged = dataclasses.replace(ds, item_attrs=None)
    assert MMKGCF(untagged, sp, MMKGCFConfig(tag_item_knn=1, **options)).tag_item_graph._nnz() == 0
    with torch.no_grad():
        hop = model.tag_item_graph.to_dense() @ model.entity_emb.weight[:ds.n_items]
        torch.testing.assert_close(model.propagate()[1], plain.propagate()[1] + hop)
    assert_pair_scores_match_ranking(model)
