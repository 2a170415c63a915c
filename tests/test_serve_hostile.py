"""Hostile input and hostile clients (issue 15, sections 1 and 4): one request can never degrade
what other users get, and the HTTP edge refuses what it should (API key, Host / Origin,
body size and types, half-sent requests, connection limit).

In-process through FastAPI's TestClient, except the timeouts and the connection limit, which
run against `python -m mmkgrec.serve serve` on a free loopback port with raw sockets."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from mmkgrec.errors import ConfigError
from mmkgrec.serve.app import create_app
from mmkgrec.serve.service import RecService
from mmkgrec.serve.store import FeedbackStore
from test_serve import API_KEY, _free_port, _train, make_client, new_song

TINY = {"dim": 8, "n_heads": 2, "n_hops": 2}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _train(tmp_path_factory, "mkgcn", TINY)


@pytest.fixture()
def client(run_dir, tmp_path):
    with make_client(run_dir, tmp_path / "feedback.sqlite", index="flat", retrieval="exact") as c:
        yield c


def lists(client) -> dict:
    """Everything section 1 saw broken: u2's top 1 and top 5, a new listener's list, s1's
    similar items (item ids and the numbers shown)."""
    def pairs(response, key):
        assert response.status_code == 200, response.text
        return [(x["item_id"], x[key]) for x in response.json()["items"]]

    return {"k1": pairs(client.get("/users/u2/recommendations", params={"k": 1}), "logit"),
            "k5": pairs(client.get("/users/u2/recommendations", params={"k": 5}), "logit"),
            "two": pairs(client.get("/users/u2/recommendations",
                                    params={"k": 5, "retrieval": "two-stage"}), "logit"),
            "liked": pairs(client.post("/recommendations", json={"liked": ["s1", "s2"], "k": 5}),
                           "logit"),
            "similar": pairs(client.get("/items/s1/similar", params={"k": 5}), "similarity")}


def assert_whole(got: dict) -> None:
    assert len(got["k1"]) == 1 and len(got["k5"]) == 5 and len(got["two"]) == 5
    assert len(got["liked"]) == 5 and len(got["similar"]) == 5
    for rows in got.values():
        assert all(isinstance(v, float) and np.isfinite(v) for _, v in rows), rows


# ---- 1. one request cannot break every list ----------------------------------------------------
@pytest.mark.parametrize("value", [1e300, 3e38, -1e39])
def test_non_finite_after_scaling_features_are_refused_and_no_list_changes(client, value):
    before = lists(client)
    assert_whole(before)
    body = {"item_id": "poison", "links": [], "features": {"audio": [value] * 40}}
    response = client.post("/items", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_input" and "audio" in response.json()["detail"]
    after = lists(client)
    assert after == before  # every list exactly as it was
    assert client.get("/health").json()["new_items"] == 0
    assert client.get("/items/poison/similar").status_code == 404
    # with links too (the item would otherwise be servable), and as one of several features
    links = new_song(client.app.state.service, "poison")["links"]
    assert client.post("/items", json={**body, "links": links}).status_code == 422
    assert lists(client) == before
    assert FeedbackStore(client.app.state.service.store.path).items() == []  # nothing stored


def test_features_far_outside_the_train_range_are_refused(client):
    service = client.app.state.service
    mean, std = service.run.model.modality_stats[0]  # audio: the train statistics
    row = (mean + 1e5 * std).tolist()  # finite everywhere, 1e5 standard deviations out
    response = client.post("/items", json={"item_id": "far", "links": [], "features": {"audio": row}})
    assert response.status_code == 422 and "standard deviations" in response.json()["detail"]
    row = service.dataset.modalities["audio"][3].tolist()  # a real row is fine
    assert client.post("/items", json={"item_id": "near", "features": {"audio": row}}).status_code == 201
    assert_whole(lists(client))


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_score_never_reaches_a_ranking(client, monkeypatch, fill):
    """Should a score ever be NaN or infinite, that item ranks last and is dropped: k items
    still come back, all finite (exact and two-stage ranking, similar items)."""
    service = client.app.state.service
    scorer = service.catalogue.scorer  # every exact and two-stage score goes through it
    poisoned = [3, 7, 11, 50]
    score_queries = scorer.score_queries

    def poison(scores, items):
        scores = scores.clone()
        for j, item in enumerate(items):
            if item in poisoned:
                scores[0, j] = fill
        return scores

    monkeypatch.setattr(scorer, "score_queries", lambda u, items: poison(
        score_queries(u, items), range(scorer.n_items) if items is None else items[0].tolist()))
    names = {f"s{i}" for i in poisoned}
    for params in ({"k": 1}, {"k": 5}, {"k": 5, "retrieval": "two-stage"},
                   {"k": 1000, "exclude_seen": False}):
        items = client.get("/users/u2/recommendations", params=params).json()["items"]
        assert len(items) == min(params["k"], 120 - len(poisoned)), params
        assert not names & {x["item_id"] for x in items}
        assert all(np.isfinite(x["logit"]) and np.isfinite(x["score"]) for x in items)
        assert [x["rank"] for x in items] == list(range(1, len(items) + 1))
    liked = client.post("/recommendations", json={"liked": ["s1"], "k": 5}).json()["items"]
    assert len(liked) == 5 and not names & {x["item_id"] for x in liked}
    catalogue = service.catalogue
    with torch.inference_mode():
        saved = catalogue.item_unit[poisoned].clone()
        catalogue.item_unit[poisoned] = fill
    try:
        similar = client.get("/items/s1/similar", params={"k": 119}).json()["items"]
        assert len(similar) == 119 - len(poisoned) and not names & {x["item_id"] for x in similar}
        assert all(isinstance(x["similarity"], float) for x in similar)
    finally:
        with torch.inference_mode():
            catalogue.item_unit[poisoned] = saved


def test_stored_poisoned_items_are_quarantined_on_start(run_dir, tmp_path):
    """An item stored before these checks (or written by hand) that fails them is moved to
    quarantined_items on start, with the items linking to it; the rest are served."""
    db = tmp_path / "poisoned.sqlite"
    with make_client(run_dir, db, index="flat") as client:
        good = new_song(client.app.state.service, "good-1")
        assert client.post("/items", json=good).status_code == 201
        before = lists(client)
    store = FeedbackStore(db)
    store.add_item("bad-1", {"item_id": "bad-1", "name": None, "links": [],
                             "features": {"audio": [1e300] * 40}})
    store.add_item("bad-2", {"item_id": "bad-2", "name": None,
                             "links": [{"relation": "on_album", "entity": "bad-1"}], "features": {}})
    store.add_feedback("u2", "bad-1", 1.0)
    store.close()
    for _ in range(2):  # and again: the quarantine is durable, the second start finds nothing
        with make_client(run_dir, db, index="flat") as client:
            health = client.get("/health").json()
            assert health["new_items"] == 1
            got = lists(client)
            assert_whole(got)
            assert got["similar"] == before["similar"]
            assert got["k5"] == before["k5"]  # u2's like of bad-1 is skipped, nothing else changed
            notes = " ".join(health["notes"])
            if _ == 0:
                assert "2 stored items failed the checks and were quarantined" in notes
                assert "'bad-1'" in notes and "'bad-2'" in notes
            else:
                assert "quarantined" not in notes
            assert client.get("/items/bad-1/similar").status_code == 404
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT item_id FROM items").fetchall() == [("good-1",)]
        quarantined = dict(raw.execute("SELECT item_id, reason FROM quarantined_items").fetchall())
    assert set(quarantined) == {"bad-1", "bad-2"} and "not finite" in quarantined["bad-1"]
    assert "quarantined item" in quarantined["bad-2"]
    with make_client(run_dir, db, index="flat") as client:  # the id is free again
        assert client.post("/items", json=new_song(client.app.state.service, "bad-1")).status_code == 201


# ---- 4. the HTTP edge: API key --------------------------------------------------------------------
def test_create_app_needs_a_key_or_the_explicit_opt_out(run_dir, tmp_path):
    service = RecService.from_run_dir(run_dir, tmp_path / "a.sqlite")
    with pytest.raises(ConfigError, match="no_auth=True"):
        create_app(service)
    with pytest.raises(ConfigError):
        create_app(service, api_key=API_KEY, no_auth=True)
    for bad in ("short", "with a space in it 0123", "x" * 15):
        with pytest.raises(ConfigError, match="16"):
            create_app(service, api_key=bad)
    service.store.close()


def test_mutating_endpoints_need_the_key_reads_do_not(client):
    service = client.app.state.service
    feedback = {"user_id": "u3", "item_id": "s1", "value": 1}
    item = new_song(service, "keyed")
    for headers in ({"X-API-Key": ""}, {"X-API-Key": "wrong-key-0123456789"},
                    {"X-API-Key": API_KEY + "x"}, {"Authorization": "Bearer nope"},
                    {"Authorization": f"Basic {API_KEY}"}):
        plain = TestClient(client.app, base_url="http://localhost", headers=headers)
        for path, body in (("/feedback", feedback), ("/items", item),
                           ("/feedback", {"junk": True})):  # 401 before the body is looked at
            response = plain.post(path, json=body)
            assert response.status_code == 401, (headers, path)
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        assert plain.get("/users/u3/recommendations", params={"k": 3}).status_code == 200
        assert plain.post("/recommendations", json={"liked": ["s1"], "k": 3}).status_code == 200
    nobody = TestClient(client.app, base_url="http://localhost")
    assert "API key" in nobody.post("/feedback", json=feedback).json()["detail"]
    assert service.store.count() == 0 and client.get("/health").json()["new_items"] == 0
    bearer = TestClient(client.app, base_url="http://localhost",
                        headers={"Authorization": f"Bearer {API_KEY}"})
    assert bearer.post("/feedback", json=feedback).status_code == 201
    assert client.post("/items", json=item).status_code == 201  # X-API-Key
    assert service.store.count() == 1 and client.get("/health").json()["api_key_required"]
    schema = client.get("/openapi.json").json()
    assert schema["paths"]["/feedback"]["post"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert "401" in schema["paths"]["/items"]["post"]["responses"]
    assert "security" not in schema["paths"]["/recommendations"]["post"]


def test_no_auth_is_an_explicit_choice(run_dir, tmp_path):
    service = RecService.from_run_dir(run_dir, tmp_path / "open.sqlite")
    with TestClient(create_app(service, no_auth=True), base_url="http://localhost") as open_client:
        response = open_client.post("/feedback", json={"user_id": "u3", "item_id": "s1", "value": 1})
        assert response.status_code == 201
        assert not open_client.get("/health").json()["api_key_required"]
        post = open_client.get("/openapi.json").json()["paths"]["/feedback"]["post"]
        assert "security" not in post and "401" not in post["responses"]


def test_serve_command_needs_a_key_file_the_variable_or_no_auth(run_dir, tmp_path, capsys,
                                                               monkeypatch):
    from mmkgrec.serve.cli import main, resolve_api_key

    monkeypatch.delenv("MMKGREC_API_KEY", raising=False)
    for extra, message in (([], "need an API key"),
                           (["--api-key-file", str(tmp_path / "missing")], "--api-key-file"),
                           (["--no-auth", "--api-key-file", str(tmp_path / "k")], "contradict")):
        with pytest.raises(SystemExit) as info:
            main(["serve", str(run_dir), "--port", "1", *extra])
        assert info.value.code == 2
        assert message in capsys.readouterr().err.replace("\n", " ")
    key_file = tmp_path / "key"
    key_file.write_text("short\n")
    with pytest.raises(SystemExit):
        main(["serve", str(run_dir), "--port", "1", "--api-key-file", str(key_file)])
    assert "16 visible ASCII" in capsys.readouterr().err.replace("\n", " ")
    key_file.write_text(f"  {API_KEY}\n")
    assert resolve_api_key(key_file, False) == API_KEY
    monkeypatch.setenv("MMKGREC_API_KEY", "from-the-environment-0123")
    assert resolve_api_key(None, False) == "from-the-environment-0123"
    assert resolve_api_key(key_file, False) == API_KEY  # the file wins
    assert resolve_api_key(None, True) is None


# ---- 4. Host and Origin ------------------------------------------------------------------------------
def test_host_header_allow_list_stops_dns_rebinding(client):
    app = client.app

    def get(host, **kw):
        return TestClient(app, base_url=f"http://{host}", **kw).get("/health")

    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
        assert get(host).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil"):
        response = get(host)
        assert response.status_code == 400, host
        assert response.json()["error"] == "invalid_host"
    long = TestClient(app, base_url="http://localhost", headers={"host": "a" * 5000}).get("/health")
    assert long.status_code == 400 and len(long.text) < 400  # not echoed in full
    for path in ("/users/u3/recommendations", "/", "/static/app.js", "/no/such/route"):
        assert TestClient(app, base_url="http://evil.example").get(path).status_code == 400


def test_allowed_hosts_can_be_widened(run_dir, tmp_path):
    service = RecService.from_run_dir(run_dir, tmp_path / "h.sqlite")
    app = create_app(service, no_auth=True, allowed_hosts=["recs.example.org", "localhost"])
    assert TestClient(app, base_url="http://recs.example.org").get("/health").status_code == 200
    assert TestClient(app, base_url="http://127.0.0.1").get("/health").status_code == 400
    anyone = create_app(service, no_auth=True, allowed_hosts=["*"])
    assert TestClient(anyone, base_url="http://whatever.example").get("/health").status_code == 200
    service.store.close()


def test_cross_site_origins_cannot_post(client):
    feedback = {"user_id": "u3", "item_id": "s1", "value": 1}
    for origin in ("http://evil.example", "null", "http://localhost.evil.example:8000", "junk"):
        response = client.post("/feedback", json=feedback, headers={"Origin": origin})
        assert response.status_code == 403 and response.json()["error"] == "forbidden_origin"
    assert client.post("/feedback", json=feedback,
                       headers={"Origin": "http://localhost:8000"}).status_code == 201
    # a read from a foreign page is not refused here (the browser keeps its response to itself)
    assert client.get("/health", headers={"Origin": "http://evil.example"}).status_code == 200
    assert client.app.state.service.store.count() == 1


# ---- 4. bodies: media type, size, ids, strict types ---------------------------------------------------
def test_bodies_must_be_json(client):
    body = json.dumps({"user_id": "u3", "item_id": "s1", "value": 1})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                         None):
        headers = {"content-type": content_type} if content_type else {}
        response = client.post("/feedback", content=body, headers=headers)
        assert response.status_code == 415, content_type
        assert response.json()["error"] == "unsupported_media_type"
    assert client.post("/feedback", content=body, headers={
        "content-type": "application/json; charset=utf-8"}).status_code == 201


def test_body_size_is_capped(run_dir, tmp_path):
    service = RecService.from_run_dir(run_dir, tmp_path / "cap.sqlite")
    app = create_app(service, api_key=API_KEY, max_body_bytes=2000)
    with TestClient(app, base_url="http://localhost", headers={"X-API-Key": API_KEY}) as small:
        fits = {"liked": ["s1"] * 100, "k": 5}
        assert len(json.dumps(fits)) < 2000 and small.post("/recommendations", json=fits).status_code == 200
        big = {"liked": ["s1"] * 1000, "k": 5}
        response = small.post("/recommendations", json=big)
        assert response.status_code == 413 and response.json()["error"] == "body_too_large"
        assert response.headers["connection"] == "close"

        def chunks():  # no Content-Length: counted while it streams in
            yield b'{"liked": ['
            for _ in range(1000):
                yield b'"s1", '
            yield b'"s2"]}'

        response = small.post("/recommendations", content=chunks(),
                              headers={"content-type": "application/json"})
        assert response.status_code == 413
        text = small.get("/metrics").text  # refusals are counted
        assert 'route="(unmatched)",status="413"} 2.0' in text


def test_oversized_ids_are_refused_without_echo(run_dir, tmp_path):
    """A 10 MB item_id: 413 under the default cap; with the cap lifted, 422 that does not echo it
    (nor does any other error), and the same for path ids and modality names."""
    huge = "x" * 10_000_000
    with make_client(run_dir, tmp_path / "default.sqlite") as client:
        response = client.post("/feedback", json={"user_id": "u3", "item_id": huge, "value": 1})
        assert response.status_code == 413 and len(response.content) < 300
    service = RecService.from_run_dir(run_dir, tmp_path / "lifted.sqlite")
    app = create_app(service, api_key=API_KEY, max_body_bytes=50_000_000)
    with TestClient(app, base_url="http://localhost", headers={"X-API-Key": API_KEY}) as client:
        long = "y" * 5000
        cases = [
            ("/feedback", {"user_id": "u3", "item_id": huge, "value": 1}),
            ("/feedback", {"user_id": huge, "item_id": "s1", "value": 1}),
            ("/recommendations", {"liked": [huge, long]}),
            ("/items", {"item_id": huge, "links": [{"relation": "by_artist", "entity": "artist:1"}]}),
            ("/items", {"item_id": "ok", "links": [{"relation": long, "entity": "artist:1"}]}),
            ("/items", {"item_id": "ok", "links": [{"relation": "by_artist", "entity": huge}]}),
            ("/items", {"item_id": "ok", "features": {long: [1.0]}}),
            ("/items", {"item_id": "ok", "name": huge, "links": []}),
        ]
        for path, body in cases:
            response = client.post(path, json=body)
            assert response.status_code == 422, (path, response.text[:200])
            assert len(response.content) < 1000, (path, len(response.content))
        for path in (f"/items/{long}/similar", f"/users/{long}/recommendations",
                     f"/users/u3/recommendations/{long}/explanation"):
            response = client.get(path)
            assert response.status_code == 422 and len(response.content) < 1000, path
        # ids within the limits that do not exist: 404 naming them, still short
        at_limit = "z" * 200
        for path, body in (("/feedback", {"user_id": "u3", "item_id": at_limit, "value": 1}),
                           ("/recommendations", {"liked": [at_limit] * 1000})):
            response = client.post(path, json=body)
            assert response.status_code == 404 and len(response.content) < 3000, path
        relations = [{"relation": f"r{i}-" + "q" * 400, "entity": "artist:1"} for i in range(1000)]
        response = client.post("/items", json={"item_id": "ok", "links": relations})
        assert response.status_code == 404 and len(response.content) < 3000
        assert service.store.count() == 0


@pytest.mark.parametrize("path,body", [
    ("/feedback", {"user_id": "u3", "item_id": "s1", "value": True}),
    ("/feedback", {"user_id": "u3", "item_id": "s1", "value": "1"}),
    ("/feedback", {"user_id": "u3", "item_id": "s1", "value": None}),
    ("/feedback", {"user_id": "u3", "item_id": True, "value": 1}),
    ("/feedback", {"user_id": 3, "item_id": "s1", "value": 1}),
    ("/feedback", {"user_id": "u3", "item_id": 1.0, "value": 1}),
    ("/recommendations", {"liked": ["s1"], "k": True}),
    ("/recommendations", {"liked": ["s1"], "k": "5"}),
    ("/recommendations", {"liked": ["s1"], "k": 5.0}),
    ("/recommendations", {"liked": [True]}),
    ("/items", {"item_id": "t1", "features": {"audio": ["1.0"] * 40}}),
    ("/items", {"item_id": "t1", "features": {"audio": [True] * 40}}),
    ("/items", {"item_id": "t1", "name": 5, "links": [{"relation": "by_artist", "entity": "artist:1"}]}),
    ("/items", {"item_id": "t1", "links": [{"relation": 1, "entity": "artist:1"}]}),
    ("/items", {"item_id": "t1", "links": [{"relation": "by_artist", "entity": False}]}),
    ("/items", {"item_id": 7, "links": [{"relation": "by_artist", "entity": "artist:1"}]}),
    ("/items", {"item_id": "t1", "features": {f"m{i}": [0.0] for i in range(65)}}),
])
def test_types_are_strict(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert isinstance(response.json()["detail"], list)
    assert client.app.state.service.store.count() == 0


def test_json_oddities_are_client_errors(client):
    headers = {"content-type": "application/json"}
    for raw in (b'{"user_id": "u3", "item_id": "s1", "value": NaN}',
                b'{"user_id": "u3", "item_id": "s1", "value": Infinity}',
                b'{"user_id": "u3", "item_id": "s1", "value": 1e999}',
                b'{"user_id": "u3", "item_id": ' + b"9" * 5000 + b', "value": 1}',
                b"[" * 100_000 + b"]" * 100_000,
                b'{"user_id": "u3", "item_id": "s1", "value": 1, "value": "x"}',
                b"\xff\xfe{}", b'"just a string"', b"null"):
        response = client.post("/feedback", content=raw, headers=headers)
        assert response.status_code in (400, 422), (raw[:40], response.status_code)
        assert set(response.json()) == {"error", "detail"}
    items = {"item_id": "t1", "features": {"audio": [float("nan")] * 40}}
    response = client.post("/items", content=json.dumps(items), headers=headers)  # NaN literal
    assert response.status_code == 422
    assert client.app.state.service.store.count() == 0


# ---- 4. half-sent requests and the connection limit (a real server) ---------------------------------
@pytest.fixture(scope="module")
def live_server(run_dir, tmp_path_factory):
    """`python -m mmkgrec.serve serve` with a key file, short timeouts and 3 connections."""
    import httpx

    workdir = tmp_path_factory.mktemp("live")
    key_file = workdir / "api-key"
    key_file.write_text(API_KEY + "\n")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MMKGREC_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "mmkgrec.serve", "serve", str(run_dir), "--port", str(port),
         "--db", str(workdir / "live.sqlite"), "--api-key-file", str(key_file),
         "--body-timeout", "0.5", "--header-timeout", "1.5", "--max-connections", "3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    try:
        while True:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "server did not become healthy"
            try:
                if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield port
    finally:
        process.kill()
        process.wait(10)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    return sock


def _read_all(sock: socket.socket, limit: float = 5.0) -> tuple[bytes, bool]:
    """(everything the server sent, whether it closed the connection) within ``limit`` seconds."""
    data, deadline = b"", time.time() + limit
    sock.settimeout(0.2)
    while time.time() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def test_live_server_needs_the_key(live_server):
    import httpx

    base = f"http://127.0.0.1:{live_server}"
    body = {"user_id": "live", "item_id": "s1", "value": 1}
    assert httpx.post(f"{base}/feedback", json=body).status_code == 401
    assert httpx.post(f"{base}/feedback", json=body, headers={"X-API-Key": API_KEY}).status_code == 201
    assert httpx.get(f"{base}/health", headers={"Host": "evil.example"}).status_code == 400


def test_a_half_sent_body_gets_408_and_the_connection_closed(live_server):
    with _connect(live_server) as sock:
        start = time.time()
        sock.sendall(b"POST /feedback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                     b"\r\nX-API-Key: " + API_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n"
                     b'{"user_id"')
        data, closed = _read_all(sock)
        assert data.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in data and closed
        assert time.time() - start < 4.0


def test_a_half_sent_head_is_closed(live_server):
    for first in (b"", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"):
        with _connect(live_server) as sock:
            start = time.time()
            if first:
                sock.sendall(first)
            data, closed = _read_all(sock)
            assert closed and data == b"", first
            assert 1.0 < time.time() - start < 4.5
    with _connect(live_server) as sock:  # a later request on a kept-alive connection, half-sent
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
                data.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200")
        start = time.time()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 12")  # the keep-alive timer stops here
        data, closed = _read_all(sock, 6.0)
        assert closed and data == b"" and 1.0 < time.time() - start < 4.5


def test_the_connection_limit_answers_503_and_recovers(live_server):
    idle = [_connect(live_server) for _ in range(2)]  # two connections that never send a byte
    try:
        time.sleep(0.2)
        with _connect(live_server) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data, _ = _read_all(sock, 3.0)
        assert data.startswith(b"HTTP/1.1 503"), data[:100]
        time.sleep(2.0)  # the idle ones are closed by the header timeout
        for sock in idle:
            assert _read_all(sock, 1.0)[1]
        with _connect(live_server) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data, _ = _read_all(sock, 3.0)
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
    finally:
        for sock in idle:
            sock.close()
