"""The recommendation service: every endpoint and error through FastAPI's TestClient, against
tiny runs trained once per session (MKGCN with 2 hops, KGCN, popularity)."""

from __future__ import annotations

import csv
import itertools
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from mmkgrec.serve.app import create_app
from mmkgrec.serve.service import RecService
from mmkgrec.train.run import RunSpec, run_experiment

TINY = {"dim": 8, "n_heads": 2}


def _train(tmp_path_factory, model: str, options: dict):
    out = tmp_path_factory.mktemp(f"serve-{model}") / "run"
    run_experiment(RunSpec(model=model, dataset="synthetic-tiny", protocol="topk",
                           model_options=options, train_options={"epochs": 2}), out, progress=False)
    return out


@pytest.fixture(scope="session")
def mkgcn_dir(tmp_path_factory):
    return _train(tmp_path_factory, "mkgcn", {**TINY, "n_hops": 2})


@pytest.fixture(scope="session")
def kgcn_dir(tmp_path_factory):
    return _train(tmp_path_factory, "kgcn", {"dim": 8})


@pytest.fixture(scope="session")
def pop_dir(tmp_path_factory):
    return _train(tmp_path_factory, "pop", {})


#: the API key every test client sends (the mutating endpoints require one)
API_KEY = "test-key-0123456789abcdef"


def make_client(run_dir, db, **options) -> TestClient:
    """A client of a key-protected app, sending the key, as a loopback client (Host: localhost)."""
    service = RecService.from_run_dir(run_dir, db, **options)
    return TestClient(create_app(service, api_key=API_KEY), base_url="http://localhost",
                      headers={"X-API-Key": API_KEY})


@pytest.fixture()
def client(mkgcn_dir, tmp_path):
    with make_client(mkgcn_dir, tmp_path / "feedback.sqlite", index="flat", retrieval="exact") as c:
        yield c


def service_of(client: TestClient) -> RecService:
    return client.app.state.service


def ids(response) -> list[str]:
    return [item["item_id"] for item in response.json()["items"]]


# ---- recommendations ---------------------------------------------------------------------------
def test_health_openapi_and_page(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "mkgcn" and health["items"] == 120
    assert health["new_listeners"] and health["modalities"] == ["audio", "text", "image", "sentiment"]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/users/{user_id}/recommendations", "/recommendations", "/feedback",
                 "/items/{item_id}/similar", "/users/{user_id}/recommendations/{item_id}/explanation",
                 "/items", "/health", "/metrics"):
        assert path in paths, path
    page = client.get("/")
    assert page.status_code == 200 and "<title>mmkgrec" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_user_recommendations_are_the_models_exact_ranking(client):
    service = service_of(client)
    response = client.get("/users/u3/recommendations", params={"k": 10})
    assert response.status_code == 200
    body = response.json()
    items = body["items"]
    assert len(items) == 10 and [x["rank"] for x in items] == list(range(1, 11))
    assert all(x["name"] and "artist" in x["attributes"] for x in items)
    scores = [x["score"] for x in items]
    assert scores == sorted(scores, reverse=True)
    # the model's own ranking (score_users on the same seeded history), seen items masked
    model, ds = service.run.model, service.dataset
    with torch.inference_mode():
        model.prepare_ranking()
        logits = model.score_users(torch.tensor([3]))[0].clone()
        seen = ds.interactions.loc[ds.interactions["user"] == 3, "item"].to_numpy().copy()
        logits[seen] = -torch.inf
        expected = [ds.items[i] for i in torch.topk(logits, 10).indices.tolist()]
    assert ids(response) == expected
    assert not set(ids(response)) & set(ds.items[seen])
    everything = client.get("/users/u3/recommendations", params={"k": 1000, "exclude_seen": False})
    assert len(everything.json()["items"]) == 120


def test_two_stage_matches_exact_when_candidates_cover_the_catalogue(mkgcn_dir, tmp_path):
    with make_client(mkgcn_dir, tmp_path / "a.sqlite", index="flat", candidates=200) as client:
        exact = client.get("/users/u5/recommendations", params={"k": 15, "retrieval": "exact"})
        two = client.get("/users/u5/recommendations", params={"k": 15})
        assert two.json()["retrieval"] == "two-stage" and ids(two) == ids(exact)
    with make_client(mkgcn_dir, tmp_path / "b.sqlite", index="hnsw", candidates=20) as client:
        exact = {x["item_id"]: x["logit"] for x in client.get(
            "/users/u5/recommendations", params={"k": 1000, "retrieval": "exact"}).json()["items"]}
        two = client.get("/users/u5/recommendations", params={"k": 20}).json()["items"]
        assert len(two) <= 20
        for item in two:  # re-ranking is exact: same logit as the full ranking
            assert item["logit"] == pytest.approx(exact[item["item_id"]], abs=1e-5)


def test_new_listener_from_liked_items(client):
    service = service_of(client)
    liked = ["s1", "s2", "s5"]
    response = client.post("/recommendations", json={"liked": liked, "k": 8})
    assert response.status_code == 200
    got = ids(response)
    assert len(got) == 8 and not set(got) & set(liked)
    model, ds = service.run.model, service.dataset
    index = torch.tensor([1, 2, 5]).unsqueeze(0)
    with torch.inference_mode():
        logits = model.score_histories(index, torch.ones_like(index, dtype=torch.bool))[0].clone()
        logits[index[0]] = -torch.inf
        assert got == [ds.items[i] for i in torch.topk(logits, 8).indices.tolist()]
    assert client.post("/recommendations", json={"liked": [1, "s2"]}).status_code == 404  # "1"
    assert client.post("/recommendations", json={"liked": ["nope"]}).json()["error"] == "not_found"


@pytest.mark.parametrize("body", [
    {}, {"liked": []}, {"liked": "s1"}, {"liked": [1.5]}, {"liked": ["s1"], "k": 0},
    {"liked": ["s1"], "k": 1001}, {"liked": ["s1"], "colour": "red"}, {"liked": [None]},
])
def test_malformed_recommendation_bodies_are_422(client, body):
    response = client.post("/recommendations", json=body)
    assert response.status_code == 422 and response.json()["error"] == "validation_error"


def test_not_found_and_invalid_parameters(client):
    for url in ("/users/nobody/recommendations", "/items/nope/similar",
                "/users/u3/recommendations/nope/explanation",
                "/users/nobody/recommendations/s1/explanation", "/no/such/route"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"] == "not_found" and response.json()["detail"], url
    for params in ({"k": 0}, {"k": 1001}, {"k": "ten"}, {"exclude_seen": "maybe"},
                   {"retrieval": "psychic"}):
        response = client.get("/users/u3/recommendations", params=params)
        assert response.status_code == 422, params
    assert client.get("/items/s1/similar", params={"k": 0}).status_code == 422
    assert client.post("/feedback", content=b"{not json", headers={
        "content-type": "application/json"}).status_code == 422


# ---- feedback ----------------------------------------------------------------------------------
def test_feedback_changes_recommendations_and_survives_a_restart(mkgcn_dir, tmp_path):
    db = tmp_path / "feedback.sqlite"
    with make_client(mkgcn_dir, db, retrieval="exact") as client:
        before = client.get("/users/u3/recommendations", params={"k": 1000}).json()["items"]
        top = before[0]["item_id"]
        response = client.post("/feedback", json={"user_id": "u3", "item_id": top, "value": 1})
        assert response.status_code == 201 and response.json()["stored"]
        after = client.get("/users/u3/recommendations", params={"k": 1000}).json()
        assert top not in [x["item_id"] for x in after["items"]]  # liked: excluded
        assert after["liked_items"] == 1
        old = {x["item_id"]: x["logit"] for x in before}
        changed = [abs(old[x["item_id"]] - x["logit"]) for x in after["items"]]
        assert max(changed) > 1e-4  # the user vector was rebuilt with the liked item
        disliked = after["items"][0]["item_id"]
        client.post("/feedback", json={"user_id": "u3", "item_id": disliked, "value": -1})
        third = client.get("/users/u3/recommendations", params={"k": 1000}).json()
        assert disliked not in [x["item_id"] for x in third["items"]] and third["liked_items"] == 1
    with make_client(mkgcn_dir, db, retrieval="exact") as client:  # a restart on the same DB
        again = client.get("/users/u3/recommendations", params={"k": 1000}).json()
        assert [x["item_id"] for x in again["items"]] == [x["item_id"] for x in third["items"]]
        assert client.get("/health").json()["feedback_rows"] == 2
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT user_id, item_id, value FROM feedback ORDER BY id").fetchall() == [
            ("u3", top, 1.0), ("u3", disliked, -1.0)]


def test_feedback_errors_and_export(client, tmp_path):
    assert client.post("/feedback", json={"user_id": "u3", "item_id": "nope", "value": 1}).status_code == 404
    for body in ({"user_id": "u3", "item_id": "s1"}, {"user_id": "", "item_id": "s1", "value": 1},
                 {"user_id": "a/b", "item_id": "s1", "value": 1},
                 {"user_id": "u3", "item_id": "s1", "value": "lots"},
                 {"user_id": "u3", "item_id": "s1", "value": 1, "path": "/etc/passwd"}):
        assert client.post("/feedback", json=body).status_code == 422, body
    for item, value in (("s1", 1), ("s2", 3), ("s1", 0)):
        client.post("/feedback", json={"user_id": "u7", "item_id": item, "value": value})
    from mmkgrec.serve.cli import main

    out = tmp_path / "feedback.tsv"
    with pytest.raises(SystemExit) as info:
        main(["export-feedback", str(service_of(client).store.path), "--out", str(out)])
    assert info.value.code in (0, None)
    rows = list(csv.reader(out.open(), delimiter="\t"))
    assert rows[0] == ["user_id", "item_id", "rating", "timestamp"]
    assert [r[:3] for r in rows[1:]] == [["u7", "s1", "0.0"], ["u7", "s2", "3.0"]]  # latest value


def test_feedback_from_an_unknown_user_creates_a_cold_user(client):
    assert client.get("/users/newbie/recommendations").status_code == 404
    response = client.post("/feedback", json={"user_id": "newbie", "item_id": "s4", "value": 1})
    assert response.json()["new_user"] is True
    client.post("/feedback", json={"user_id": "newbie", "item_id": "s9", "value": 2})
    cold = client.get("/users/newbie/recommendations", params={"k": 10})
    assert cold.status_code == 200 and not cold.json()["known_user"]
    liked = client.post("/recommendations", json={"liked": ["s4", "s9"], "k": 10})
    assert ids(cold) == ids(liked)  # the same user, built from the same items
    users = client.get("/users", params={"limit": 1000}).json()
    assert users["total"] == 61 and users["users"][-1] == {"user_id": "newbie", "history": 0,
                                                           "known": False}


# ---- similar items, explanations ---------------------------------------------------------------
def test_similar_items_are_cosine_neighbours(client):
    service = service_of(client)
    response = client.get("/items/s10/similar", params={"k": 5})
    assert response.status_code == 200
    got = response.json()["items"]
    assert len(got) == 5 and "s10" not in [x["item_id"] for x in got]
    vectors = service.catalogue.item_vectors.numpy()
    cos = vectors @ vectors[10] / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(vectors[10]))
    cos[10] = -np.inf
    assert [x["item_id"] for x in got] == [f"s{i}" for i in np.argsort(-cos, kind="stable")[:5]]
    assert [x["similarity"] for x in got] == pytest.approx(np.sort(cos)[::-1][:5], abs=1e-5)


def test_explanation_paths_exist_in_the_kg(client):
    service = service_of(client)
    ds = service.dataset
    triples = {tuple(t) for t in ds.triples.tolist()}
    entity = {str(e): i for i, e in enumerate(ds.entities)}
    entity.update({str(item): i for i, item in enumerate(ds.items)})  # items are shown by item id
    history = set(service.train_items[service.train_indptr[3]:service.train_indptr[4]].tolist())
    checked = 0
    for item in ids(client.get("/users/u3/recommendations", params={"k": 5})):
        body = client.get(f"/users/u3/recommendations/{item}/explanation", params={"limit": 50}).json()
        assert body["item_id"] == item and body["n_paths"] >= len(body["paths"])
        assert sum(body["relation_weights"].values()) == pytest.approx(1.0, abs=1e-4)
        shares = body["modalities"]
        assert [m["modality"] for m in shares] == ["id", "audio", "text", "image", "sentiment"]
        assert sum(m["share"] for m in shares) == pytest.approx(1.0, abs=1e-4)
        assert all(m["share"] == 0 for m in shares if not m["present"])
        assert 0 < body["score"] < 1 and body["neighbourhood"]
        for path in body["paths"]:
            nodes = [entity[n["entity"]] for n in path["nodes"]]
            assert nodes[0] in history and nodes[-1] == entity[item]
            assert len(nodes) == path["hops"] + 1 and path["text"].startswith("you played")
            for (a, b), rel in zip(itertools.pairwise(nodes), path["relations"]):
                r = list(ds.relations).index(rel["relation"])
                assert (a, r, b) in triples or (b, r, a) in triples
                assert rel["weight"] == pytest.approx(body["relation_weights"][rel["relation"]], abs=1e-5)
            checked += 1
    assert checked > 0


# ---- new items ---------------------------------------------------------------------------------
def new_song(service, item_id="fresh-1"):
    """Links copied from song s0 (its album, artist, tags) and s0's raw audio features."""
    ds = service.dataset
    rows = ds.triples[ds.triples[:, 0] == 0]
    links = [{"relation": str(ds.relations[r]), "entity": str(ds.entities[t])} for _, r, t in rows]
    return {"item_id": item_id, "name": "A Fresh Song", "links": links,
            "features": {"audio": ds.modalities["audio"][0].tolist()}}


def test_a_new_item_is_recommendable_at_once_and_after_a_restart(mkgcn_dir, tmp_path):
    db = tmp_path / "items.sqlite"
    with make_client(mkgcn_dir, db, index="flat") as client:
        service = service_of(client)
        body = new_song(service)
        response = client.post("/items", json=body)
        assert response.status_code == 201 and response.json()["modalities"] == ["audio"]
        assert client.post("/items", json=body).status_code == 409
        ranking = client.get("/users/u3/recommendations",
                             params={"k": 1000, "retrieval": "exact"}).json()["items"]
        assert "fresh-1" in [x["item_id"] for x in ranking] and len(ranking) > 0
        fresh = next(x for x in ranking if x["item_id"] == "fresh-1")
        assert fresh["name"] == "A Fresh Song"
        two = client.get("/users/u3/recommendations", params={"k": 1000}).json()["items"]
        assert "fresh-1" in [x["item_id"] for x in two]  # in the faiss index too
        similar = client.get("/items/fresh-1/similar", params={"k": 5})
        assert similar.status_code == 200 and len(similar.json()["items"]) == 5
        assert "fresh-1" in ids(client.get("/items/s0/similar", params={"k": 119}))
        why = client.get("/users/u3/recommendations/fresh-1/explanation").json()
        assert why["logit"] == pytest.approx(fresh["logit"], abs=1e-5)
        assert why["modalities"][1] == {"modality": "audio", "share": why["modalities"][1]["share"],
                                        "present": True} and not why["modalities"][2]["present"]
        for path in why["paths"]:  # the new item's links are real hops
            assert path["nodes"][-1]["entity"] == "fresh-1"
        assert client.post("/feedback", json={"user_id": "u3", "item_id": "fresh-1",
                                              "value": 1}).status_code == 201
        second = {**new_song(service, "fresh-2"), "links": [{"relation": "on_album", "entity": "fresh-1"}]}
        assert client.post("/items", json=second).status_code == 201  # linked to a new item
    with make_client(mkgcn_dir, db, index="flat") as client:
        again = client.get("/users/u3/recommendations", params={"k": 1000, "retrieval": "exact"}).json()
        assert client.get("/health").json()["new_items"] == 2 and again["liked_items"] == 1
        assert "fresh-1" not in [x["item_id"] for x in again["items"]]  # liked: excluded
        assert "fresh-2" in [x["item_id"] for x in again["items"]]


def test_new_item_errors(client):
    service = service_of(client)
    good = new_song(service, "x1")
    cases = [
        ({**good, "links": [{"relation": "sung_by", "entity": "artist:1"}]}, 404),
        ({**good, "links": [{"relation": "by_artist", "entity": "nobody"}]}, 404),
        ({**good, "features": {"audio": [0.0, 1.0]}}, 422),
        ({**good, "features": {"smell": [0.0]}}, 422),
        ({"item_id": "x1", "links": [], "features": {}}, 422),
        ({**good, "item_id": "s1"}, 409),
        ({**good, "item_id": "artist:1"}, 409),
        ({**good, "file": "/tmp/x"}, 422),
        ({**good, "links": [{"relation": "by_artist"}]}, 422),
    ]
    for body, status in cases:
        assert client.post("/items", json=body).status_code == status, body
    assert client.get("/health").json()["new_items"] == 0


# ---- other models ------------------------------------------------------------------------------
def test_models_without_new_listeners_or_new_items_answer_409(kgcn_dir, pop_dir, tmp_path):
    with make_client(kgcn_dir, tmp_path / "k.sqlite", index="flat") as client:
        assert client.get("/users/u3/recommendations", params={"k": 5}).status_code == 200
        response = client.post("/recommendations", json={"liked": ["s1"]})
        assert response.status_code == 409 and "kgcn" in response.json()["detail"]
        client.post("/feedback", json={"user_id": "stranger", "item_id": "s1", "value": 1})
        assert client.get("/users/stranger/recommendations").status_code == 409
        assert client.post("/items", json={"item_id": "k1", "links": [
            {"relation": "by_artist", "entity": "artist:1"}]}).status_code == 201  # KG: fine
        assert "k1" in ids(client.get("/users/u3/recommendations", params={"k": 1000}))
        why = client.get("/users/u3/recommendations/s1/explanation").json()
        assert why["modalities"] == [] and why["relation_weights"]
    with make_client(pop_dir, tmp_path / "p.sqlite") as client:
        assert len(ids(client.get("/users/u3/recommendations", params={"k": 5}))) == 5
        assert client.post("/recommendations", json={"liked": ["s1"]}).status_code == 409
        assert client.post("/items", json={"item_id": "p1", "links": [
            {"relation": "by_artist", "entity": "artist:1"}]}).status_code == 409
        assert client.get("/items/s1/similar", params={"k": 3}).status_code == 200
        why = client.get("/users/u3/recommendations/s1/explanation").json()
        assert why["relation_weights"] == {} and all(p["weight"] is None for p in why["paths"])


def test_metrics_count_requests_in_prometheus_format(client):
    for _ in range(3):
        client.get("/users/u3/recommendations", params={"k": 5})
    client.get("/users/nobody/recommendations")
    text = client.get("/metrics").text
    assert ('mmkgrec_http_requests_total{method="GET",route="/users/{user_id}/recommendations",'
            'status="200"} 3.0') in text
    assert 'status="404"} 1.0' in text
    assert ('mmkgrec_http_request_duration_seconds_count{method="GET",'
            'route="/users/{user_id}/recommendations"} 4.0') in text
    assert "mmkgrec_catalogue_items 120.0" in text


# ---- command line, killed process --------------------------------------------------------------
def test_serve_command_rejects_a_bad_run_dir(tmp_path, capsys):
    from mmkgrec.serve.cli import main

    for target in (tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit) as info:
            main(["serve", str(target), "--port", "1", "--no-auth"])
        assert info.value.code == 2
        assert "run directory" in capsys.readouterr().err.replace("\n", " ")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(run_dir, db, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMKGREC_API_KEY": API_KEY}
    return subprocess.Popen([sys.executable, "-m", "mmkgrec.serve", "serve", str(run_dir),
                             "--port", str(port), "--db", str(db)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _wait_healthy(httpx, base, process, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "server exited"
        try:
            if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def test_sigkill_loses_no_acknowledged_feedback(mkgcn_dir, tmp_path):
    """SIGKILL the server while feedback is being posted; after a restart on the same DB every
    acknowledged (201) write is there and shapes the user's recommendations."""
    import threading

    import httpx

    db, port = tmp_path / "kill.sqlite", _free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start(mkgcn_dir, db, port)
    acknowledged = []
    try:
        _wait_healthy(httpx, base, process)
        killer = threading.Timer(0.0, lambda: process.send_signal(signal.SIGKILL))
        with httpx.Client(base_url=base, timeout=5.0, headers={"X-API-Key": API_KEY}) as http:
            for i in range(500):
                body = {"user_id": f"k{i % 4}", "item_id": f"s{i % 120}", "value": 1 + i}
                if i == 30:
                    killer.start()  # the kill lands while the next requests are in flight
                try:
                    if http.post("/feedback", json=body).status_code == 201:
                        acknowledged.append((body["user_id"], body["item_id"], float(body["value"])))
                except httpx.TransportError:
                    break
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert 30 <= len(acknowledged) < 500
    with sqlite3.connect(db) as raw:
        stored = set(raw.execute("SELECT user_id, item_id, value FROM feedback").fetchall())
    assert set(acknowledged) <= stored
    process = _start(mkgcn_dir, db, port)
    try:
        _wait_healthy(httpx, base, process)
        assert httpx.get(f"{base}/health").json()["feedback_rows"] == len(stored)
        liked = {item for user, item, _ in acknowledged if user == "k1"}
        recs = httpx.get(f"{base}/users/k1/recommendations", params={"k": 200}).json()
        assert recs["liked_items"] >= len(liked) > 0
        assert not liked & {x["item_id"] for x in recs["items"]}
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
