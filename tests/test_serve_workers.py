"""Serving caches per catalogue version and several processes over one store (issue 13 §2):
POST /items invalidates the cache (the new song is in the next list, the old snapshot is left
as it was); feedback and items written through one service / process are applied by another
before it answers; `mmkgrec serve --workers 2` loses no acknowledged feedback when a worker
gets SIGKILL, and replaces the worker."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import torch

from mmkgrec.serve.service import RecService
from mmkgrec.serve.store import FeedbackStore
from test_serve import API_KEY, _free_port, ids, make_client, mkgcn_dir, new_song  # noqa: F401


def service_of(client) -> RecService:
    return client.app.state.service


def reference_scores(scorer, users: torch.Tensor) -> torch.Tensor:
    """Logits from the reference aggregation over the catalogue's own tables, no cache."""
    with torch.inference_mode():
        q = scorer.query_vectors(users)
        agg = scorer.backbone.aggregator
        v = agg.forward_all_items(q, scorer.base, scorer.backbone.relation_emb.weight,
                                  scorer.neighbors, scorer.relations, scorer.n_items)
        return torch.einsum("bd,bid->bi", q, v)


# ---- the cache per catalogue version -----------------------------------------------------------
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_post_items_refreshes_the_serving_cache(mkgcn_dir, tmp_path, monkeypatch, backend):  # noqa: F811
    monkeypatch.setenv("MMKGREC_KG_RANKING", backend)
    with make_client(mkgcn_dir, tmp_path / "c.sqlite", index="flat") as client:
        service = service_of(client)
        before, index_before = service.catalogue, service.retriever
        cache = before.scorer.plan if backend == "fused" else before.scorer.slots
        assert cache is not None  # built with the catalogue, before any request
        assert client.post("/items", json=new_song(service, "cached-1")).status_code == 201
        after = service.catalogue
        assert before.n_items == 120 and index_before.size == 120  # the old snapshot is intact
        assert after.n_items == 121 and service.retriever.size == 121
        for mode in ("exact", "two-stage"):
            listed = ids(client.get("/users/u3/recommendations",
                                    params={"k": 1000, "retrieval": mode}))
            assert "cached-1" in listed, mode
        users = torch.arange(4)
        with torch.inference_mode():
            cached = after.scorer.score_users(users)  # [4, 121] through the cache
        torch.testing.assert_close(cached, reference_scores(after.scorer, users),
                                   rtol=1e-4, atol=1e-5)
        if backend == "reference":  # only the new rows were computed, the rest copied
            agg, s = after.scorer.backbone.aggregator, after.scorer
            with torch.inference_mode():
                full = agg.first_round_slots(s.base, s.neighbors, s.n_items)
            torch.testing.assert_close(s.slots, full, rtol=1e-5, atol=1e-6)


def test_rankings_during_registrations_see_whole_catalogues(mkgcn_dir, tmp_path):  # noqa: F811
    """Lists requested while items are registered come from one catalogue version or the next:
    every request succeeds with k items, and the new songs are there once registered."""
    with make_client(mkgcn_dir, tmp_path / "r.sqlite", index="flat") as client:
        service = service_of(client)
        errors: list[str] = []
        stop = threading.Event()
        unseen = len(service.recommend_user("u3", 150)["items"])  # all but u3's own items

        def read():
            while not stop.is_set():
                for mode in ("exact", "two-stage"):
                    got = len(service.recommend_user("u3", 150, retrieval=mode)["items"])
                    if not unseen <= got <= unseen + 3:
                        errors.append(f"{mode}: {got} items")

        readers = [threading.Thread(target=read) for _ in range(3)]
        for thread in readers:
            thread.start()
        try:
            for j in range(3):
                assert client.post("/items", json=new_song(service, f"busy-{j}")).status_code == 201
        finally:
            stop.set()
            for thread in readers:
                thread.join(30)
        assert not errors
        listed = ids(client.get("/users/u3/recommendations", params={"k": 1000}))
        assert {"busy-0", "busy-1", "busy-2"} <= set(listed)


# ---- two services over one store ---------------------------------------------------------------
def test_two_services_over_one_store_apply_each_others_writes(mkgcn_dir, tmp_path):  # noqa: F811
    db = tmp_path / "shared.sqlite"
    with make_client(mkgcn_dir, db, index="flat", retrieval="exact") as a, \
            make_client(mkgcn_dir, db, index="flat", retrieval="exact") as b:
        top = ids(b.get("/users/u3/recommendations", params={"k": 5}))[0]
        assert a.post("/feedback", json={"user_id": "u3", "item_id": top, "value": 1}).status_code == 201
        seen_by_b = b.get("/users/u3/recommendations", params={"k": 20}).json()
        assert seen_by_b["liked_items"] == 1
        assert top not in [x["item_id"] for x in seen_by_b["items"]]
        assert seen_by_b == a.get("/users/u3/recommendations", params={"k": 20}).json()
        # a cold user created through b is known to a; a later dislike through a wins on b
        assert b.post("/feedback", json={"user_id": "cold", "item_id": "s7", "value": 1}).status_code == 201
        assert a.get("/users/cold/recommendations").status_code == 200
        a.post("/feedback", json={"user_id": "cold", "item_id": "s7", "value": -1})
        assert b.get("/users/cold/recommendations").json()["liked_items"] == 0
        # items: registered through either, numbered alike on both
        assert a.post("/items", json=new_song(service_of(a), "from-a")).status_code == 201
        assert b.post("/items", json=new_song(service_of(b), "from-a")).status_code == 409
        assert b.post("/items", json=new_song(service_of(b), "from-b")).status_code == 201
        assert "from-b" in ids(a.get("/users/u3/recommendations", params={"k": 1000}))
        assert "from-a" in ids(b.get("/users/u3/recommendations", params={"k": 1000}))
        assert list(service_of(a).catalogue.item_ids) == list(service_of(b).catalogue.item_ids)
        health_a, health_b = a.get("/health").json(), b.get("/health").json()
        assert health_a["catalogue_version"] == health_b["catalogue_version"] == 2
        assert health_a["feedback_rows"] == health_b["feedback_rows"] == 3
        assert a.post("/feedback", json={"user_id": "u3", "item_id": "from-b",
                                         "value": 1}).status_code == 201
        assert b.get("/users/u3/recommendations").json()["liked_items"] == 2


def test_the_store_reports_other_connections_commits(tmp_path):
    db = tmp_path / "v.sqlite"
    mine, other = FeedbackStore(db), FeedbackStore(db)
    version = mine.data_version()
    assert mine.data_version() == version  # nothing committed
    other.add_feedback("u", "s1", 1.0)
    assert mine.data_version() != version
    items, rows = mine.changes(0, 0)
    assert items == [] and [r[1:] for r in rows] == [("u", "s1", 1.0)]
    assert mine.changes(0, rows[-1][0]) == ([], [])
    mine.close()
    other.close()


# ---- real processes ----------------------------------------------------------------------------
def _spawn(run_dir, db, port, *extra, stderr=subprocess.DEVNULL):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMKGREC_API_KEY": API_KEY}
    return subprocess.Popen([sys.executable, "-m", "mmkgrec.serve", "serve", str(run_dir),
                             "--port", str(port), "--db", str(db), *extra],
                            stdout=subprocess.DEVNULL, stderr=stderr, env=env)


def _healthy(httpx, base, process, timeout=90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "server exited"
        try:
            if httpx.get(f"{base}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def _stop(process) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_feedback_through_one_process_changes_the_next_list_of_another(mkgcn_dir, tmp_path):  # noqa: F811
    import httpx

    db = tmp_path / "two.sqlite"
    ports = _free_port(), _free_port()
    processes = [_spawn(mkgcn_dir, db, port) for port in ports]
    base_a, base_b = (f"http://127.0.0.1:{port}" for port in ports)
    key = {"X-API-Key": API_KEY}
    try:
        for base, process in zip((base_a, base_b), processes):
            _healthy(httpx, base, process)
        before = httpx.get(f"{base_b}/users/u3/recommendations", params={"k": 10}).json()
        top = before["items"][0]["item_id"]
        response = httpx.post(f"{base_a}/feedback", headers=key,
                              json={"user_id": "u3", "item_id": top, "value": 1})
        assert response.status_code == 201
        after = httpx.get(f"{base_b}/users/u3/recommendations", params={"k": 10}).json()
        assert after["liked_items"] == before["liked_items"] + 1
        assert top not in [x["item_id"] for x in after["items"]]
        song = new_song_payload(mkgcn_dir)
        assert httpx.post(f"{base_b}/items", headers=key, json=song).status_code == 201
        listed = httpx.get(f"{base_a}/users/u3/recommendations", params={"k": 1000}).json()
        assert song["item_id"] in [x["item_id"] for x in listed["items"]]
    finally:
        for process in processes:
            _stop(process)


def new_song_payload(run_dir) -> dict:
    """The test_serve new song (links and audio of s0) without building a service."""
    from mmkgrec.train.run import load_run

    class _Service:
        dataset = load_run(run_dir).dataset

    return new_song(_Service, "proc-song")


def test_workers_lose_no_acknowledged_feedback_when_one_is_killed(mkgcn_dir, tmp_path):  # noqa: F811
    """`--workers 2`: feedback posted over several connections while one worker gets SIGKILL;
    every acknowledged row is in the store, the worker is replaced, and every worker then
    reports the same feedback count."""
    import httpx

    db, port = tmp_path / "workers.sqlite", _free_port()
    log = tmp_path / "supervisor.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as handle:
        process = _spawn(mkgcn_dir, db, port, "--workers", "2", stderr=handle)
    acknowledged: list[tuple[str, str, float]] = []
    failures: list[str] = []
    lock = threading.Lock()
    try:
        deadline = time.time() + 120
        while "workers ready" not in log.read_text() and time.time() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        pids = [int(p) for p in re.search(r"pids ([\d, ]+)\)", log.read_text()).group(1).split(",")]
        assert len(pids) == 2
        counter = iter(range(10_000))

        def write(w: int) -> None:
            http = httpx.Client(base_url=base, timeout=10.0, headers={"X-API-Key": API_KEY})
            for _ in range(60):
                with lock:
                    n = next(counter)
                body = {"user_id": f"w{w}", "item_id": f"s{n % 120}", "value": float(n + 1)}
                try:
                    response = http.post("/feedback", json=body)
                except httpx.TransportError:  # the killed worker's connection: reconnect
                    http.close()
                    http = httpx.Client(base_url=base, timeout=10.0, headers={"X-API-Key": API_KEY})
                    continue
                with lock:
                    if response.status_code == 201:
                        acknowledged.append((body["user_id"], body["item_id"], body["value"]))
                        if len(acknowledged) == 40:
                            os.kill(pids[0], signal.SIGKILL)
                    else:
                        failures.append(f"{response.status_code} {response.text[:200]}")
            http.close()

        writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(120)
        assert not failures and len(acknowledged) >= 40
        with sqlite3.connect(db) as raw:
            stored = set(raw.execute("SELECT user_id, item_id, value FROM feedback").fetchall())
        assert set(acknowledged) <= stored  # zero acknowledged rows lost
        deadline = time.time() + 120
        while "starting a replacement" not in log.read_text() and time.time() < deadline:
            time.sleep(0.2)
        assert "starting a replacement" in log.read_text() and process.poll() is None
        counts = set()
        for _ in range(8):  # fresh connections: whichever worker answers has synced
            counts.add(httpx.get(f"{base}/health", timeout=30.0).json()["feedback_rows"])
        assert counts == {len(stored)}
    finally:
        _stop(process)
    assert process.returncode == 0, log.read_text()


# ---- the request path: quick rankings on the event loop, known users' queries cached --------
def test_a_quick_request_waits_in_the_pool_while_the_scorer_is_busy(mkgcn_dir, tmp_path):  # noqa: F811
    """Two-stage rankings run on the event loop only when no lock is taken; with the scoring
    slot held (a long exact ranking in the pool) the request waits in the thread pool instead
    of blocking the loop, and then answers the same list."""
    from mmkgrec.serve.service import WouldBlock

    with make_client(mkgcn_dir, tmp_path / "q.sqlite", index="flat", max_concurrent=1) as client:
        service = service_of(client)
        path = "/users/u0/recommendations?k=5&retrieval=two-stage"
        assert service.quick("two-stage") and service.quick("exact")  # 120 items: both quick
        before = client.get(path)
        assert before.status_code == 200
        service._scoring.acquire()
        try:
            with pytest.raises(WouldBlock):
                service.recommend_user("u0", 5, True, "two-stage", wait=False)
            answer: list = []
            request = threading.Thread(target=lambda: answer.append(client.get(path)))
            request.start()
            time.sleep(0.3)
            assert request.is_alive() and not answer  # waiting for the slot, not refused
            assert client.get("/health").status_code == 200  # the loop still answers
        finally:
            service._scoring.release()
        request.join(10)
        assert answer and answer[0].status_code == 200
        assert ids(answer[0]) == ids(before)
        # a write by another process: the event loop does not apply it, the pool does
        other = RecService.from_run_dir(mkgcn_dir, tmp_path / "q.sqlite", index="flat")
        other.add_feedback("u0", ids(before)[0], 1.0)
        with pytest.raises(WouldBlock):
            service.recommend_user("u0", 5, True, "two-stage", wait=False)
        after = client.get(path).json()
        assert after["liked_items"] == before.json()["liked_items"] + 1
        assert ids(before)[0] not in [x["item_id"] for x in after["items"]]
        assert service.recommend_user("u0", 5, True, "two-stage", wait=False)["items"]  # synced
        other.store.close()


def test_known_users_queries_are_the_models_own(mkgcn_dir, tmp_path):  # noqa: F811
    with make_client(mkgcn_dir, tmp_path / "k.sqlite", index="flat") as client:
        catalogue = service_of(client).catalogue
        users = torch.arange(catalogue.n_users)
        with torch.inference_mode():
            expected = catalogue.scorer.query_vectors(users)
        torch.testing.assert_close(catalogue.known_queries(slice(0, catalogue.n_users)), expected)
        torch.testing.assert_close(catalogue.known_queries(slice(3, 4)), expected[3:4])


def test_connection_balance_pauses_a_worker_over_its_share(monkeypatch):
    from mmkgrec.serve import edge

    pauses: list[float] = []
    monkeypatch.setattr(edge.time, "sleep", pauses.append)
    counts = [5, 7]  # stale counts of a previous worker in slot 0 are reset
    balance = edge.ConnectionBalance(counts, 0, pause=0.002)
    assert counts == [0, 7]
    for _ in range(5):
        balance.opened()
    assert counts[0] == 5 and not pauses  # below the mean + 1: accepts freely
    counts[1] = 1
    balance.opened()  # 6 open here, 1 there: over the share
    assert pauses == [0.002]
    for _ in range(8):
        balance.closed()
    assert counts[0] == 0  # never negative


def test_startup_heap_is_frozen():
    import gc

    from mmkgrec.serve.edge import freeze_startup_heap

    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_fast_recommendation_path_answers_as_the_fastapi_route(mkgcn_dir, tmp_path):  # noqa: F811
    """Every query, well-formed or not, gets the same status and body with the fast path as
    through FastAPI alone; the well-formed ones are answered by the fast path (the route
    function is not reached) and still counted under the route's metrics label."""
    from fastapi.testclient import TestClient

    from mmkgrec.serve.app import create_app

    service = RecService.from_run_dir(mkgcn_dir, tmp_path / "f.sqlite", index="flat")
    fast = TestClient(create_app(service, api_key=API_KEY), base_url="http://localhost")
    slow = TestClient(create_app(service, api_key=API_KEY, fast_recommendations=False),
                      base_url="http://localhost")
    queries = ["", "?k=5", "?k=1000&exclude_seen=false", "?retrieval=two-stage&k=3",
               "?retrieval=exact", "?k=0", "?k=1001", "?k=05", "?k=abc", "?k=", "?k=%2B5",
               "?exclude_seen=yes", "?exclude_seen=1", "?retrieval=fuzzy", "?k=5&k=6",
               "?unknown=1"]
    paths = [f"/users/u0/recommendations{q}" for q in queries] + [
        "/users/nobody/recommendations", "/users/" + "x" * 201 + "/recommendations",
        "/users/a%2Fb/recommendations", "/users//recommendations"]
    for path in paths:
        a, b = fast.get(path), slow.get(path)
        assert (a.status_code, a.json()) == (b.status_code, b.json()), path
    route = next(r for r in fast.app.routes if getattr(r, "path", "") == "/users/{user_id}/recommendations")
    called: list = []
    original = route.dependant.call

    async def spy(*args, **kwargs):
        called.append(1)
        return await original(*args, **kwargs)

    route.dependant.call = spy
    try:
        assert fast.get("/users/u0/recommendations?k=4").status_code == 200
        assert not called  # answered before FastAPI's router
        assert fast.get("/users/u0/recommendations?k=0").status_code == 422
    finally:
        route.dependant.call = original
    metrics = fast.get("/metrics").text
    assert 'route="/users/{user_id}/recommendations",status="200"' in metrics
