"""MKRLN / PGPR behind the service: recommendations, the walked path of each recommended item
with every step's probability (each edge an edge of the train graph), new listeners whose walk
starts at their liked items, and the same list from the CLI and from HTTP."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")

from mmkgrec.train.run import load_run, recommend
from test_serve import _train, ids, make_client

FAST = {"pretrain_epochs": 20, "pretrain_lr": 1e-2, "dim": 16, "hidden": 32,
        "beam_widths": [10, 5, 3]}


@pytest.fixture(scope="module")
def mkrln_dir(tmp_path_factory):
    return _train(tmp_path_factory, "mkrln", FAST)


@pytest.fixture()
def client(mkrln_dir, tmp_path):
    with make_client(mkrln_dir, tmp_path / "feedback.sqlite") as c:
        yield c


def graph_node(service, graph, node: dict) -> int:
    """A served path node back to its id in the model's path graph."""
    ds = service.dataset
    if node["kind"] == "user":
        return graph.n_entities + list(ds.users).index(node["entity"])
    if node["kind"] == "item":
        return list(ds.items).index(node["entity"])
    if node["kind"] == "entity":
        return list(ds.entities).index(node["entity"])
    return graph.n_nodes  # the new listener's start


def check_walk(service, body, start_kind: str) -> list[int]:
    """The walked path of an explanation is valid: it starts where it should, ends at the item,
    every step's probability is in (0, 1] and their product is the path's, and every edge
    (listener's first step aside) is an edge of the TRAIN graph. Returns the path's node ids."""
    graph = service.run.model.path_graph()
    assert body["explainer"] == "walked-path" and body["n_paths"] == 1
    (path,) = body["paths"]
    assert path["kind"] == "walked" and path["nodes"][0]["kind"] == start_kind
    nodes = [graph_node(service, graph, n) for n in path["nodes"]]
    assert nodes[-1] == list(service.dataset.items).index(body["item_id"])
    probs = [step["probability"] for step in path["relations"]]
    assert len(probs) == path["hops"] == len(nodes) - 1 and all(0 < p <= 1 for p in probs)
    assert path["probability"] == pytest.approx(np.prod(probs), rel=1e-4)
    assert [s["weight"] for s in path["relations"]] == probs
    names = list(graph.relation_names)
    for t, step in enumerate(path["relations"]):
        a, b, r = nodes[t], nodes[t + 1], names.index(step["relation"])
        if start_kind == "listener" and t == 0:
            assert step["relation"] == "played"  # the first step goes to a liked item
            continue
        if r == graph.self_loop:
            assert a == b
        else:
            assert graph.has_edges([a], [r], [b])[0], (a, step["relation"], b)
    return nodes


def test_recommendations_equal_the_cli_and_come_with_walked_paths(client, mkrln_dir):
    service = client.app.state.service
    health = client.get("/health").json()
    assert health["model"] == "mkrln" and health["new_listeners"]
    got = ids(client.get("/users/u3/recommendations", params={"k": 8}))
    assert got == list(recommend(load_run(mkrln_dir), user="u3", k=8)["item_id"])
    model, split = service.run.model, service.run.split
    found = model.recommend_paths(np.array([3]), k=model.n_items)
    train = set(split.user_history()[1][split.user_history()[0][3]:split.user_history()[0][4]])
    walked = 0
    for item in got:
        body = client.get(f"/users/u3/recommendations/{item}/explanation").json()
        j = int(np.flatnonzero(found.items[0] == list(service.dataset.items).index(item))[0])
        if not found.has_path[0, j]:  # ranked by embedding score: KG paths after the fact
            assert body["explainer"] == "kg-paths"
            continue
        nodes = check_walk(service, body, "user")
        assert nodes == found.nodes[0, j].tolist()  # the model's own path, as walked
        assert nodes[0] == model.path_graph().n_entities + 3 and nodes[1] in train
        assert body["relation_weights"] == {} and body["modalities"] == []
        walked += 1
    assert walked > 0
    page = client.get("/static/app.js").text
    assert "walkedPath" in page and "probability" in page


def test_a_new_listener_walks_from_the_liked_items(client):
    service = client.app.state.service
    liked = ["s4", "s9", "s17"]
    for item in liked:
        assert client.post("/feedback", json={"user_id": "newbie", "item_id": item,
                                              "value": 1}).status_code == 201
    cold = client.get("/users/newbie/recommendations", params={"k": 10})
    assert cold.status_code == 200 and not cold.json()["known_user"]
    direct = client.post("/recommendations", json={"liked": liked, "k": 10})
    assert ids(cold) == ids(direct) and not set(liked) & set(ids(cold))
    assert ids(direct) == list(recommend(load_run(service.run.out_dir), liked=liked, k=10)["item_id"])
    liked_nodes = {list(service.dataset.items).index(x) for x in liked}
    walked = 0
    for item in ids(cold):
        body = client.get(f"/users/newbie/recommendations/{item}/explanation").json()
        if body["explainer"] != "walked-path":
            continue
        nodes = check_walk(service, body, "listener")
        assert nodes[1] in liked_nodes  # the walk started at a liked item
        walked += 1
    assert walked > 0


def test_pgpr_serves_walked_paths(tmp_path_factory, tmp_path):
    run_dir = _train(tmp_path_factory, "pgpr", FAST)
    with make_client(run_dir, tmp_path / "p.sqlite") as client:
        service = client.app.state.service
        got = ids(client.get("/users/u5/recommendations", params={"k": 5}))
        assert len(got) == 5
        bodies = [client.get(f"/users/u5/recommendations/{i}/explanation").json() for i in got]
        walked = [b for b in bodies if b["explainer"] == "walked-path"]
        assert walked
        for body in walked:
            check_walk(service, body, "user")
        assert client.post("/items", json={"item_id": "n1", "links": [
            {"relation": "by_artist", "entity": "artist:1"}]}).status_code == 409
