"""Load and fault test of `mmkgrec serve` on loopback: throughput and p50 / p99 latency of the
recommendation endpoint at 1, 8 and 32 concurrent clients; concurrent feedback writes under that
load counted back from SQLite; SIGKILL of the server in the middle of a write load, restart,
and a check that no acknowledged feedback was lost.

    python benchmarks/serve_load.py [--run RUN_DIR] [--requests 2000] [--seconds 30]

The server is a subprocess (`python -m mmkgrec.serve serve RUN_DIR --threads 1`) on a free
127.0.0.1 port; the clients are httpx async clients in this process, on the same 2-core machine,
so client and server share the CPU. Every loop is bounded in requests and in time. Default run:
the MKGCN topk run of benchmarks/retrieval.py (lastfm-kgcn). Writes
benchmarks/results/serve/load.json and load.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "serve"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """The service as a subprocess on loopback."""

    def __init__(self, run_dir: Path, db: Path, extra: list[str]):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mmkgrec.serve", "serve", str(run_dir), "--port", str(self.port),
             "--db", str(db), "--threads", "1", "--no-auth", *extra],  # loopback only
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    def wait(self, timeout: float = 120.0) -> float:
        import httpx

        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.base + "/health", timeout=1.0).status_code == 200:
                    return time.perf_counter() - start
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)


def stats(latencies: list[float], wall: float, errors: int) -> dict:
    array = np.asarray(latencies) * 1000.0
    return {"requests": len(latencies), "errors": errors, "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(array, 50)), 2),
            "p99_ms": round(float(np.percentile(array, 99)), 2),
            "mean_ms": round(float(array.mean()), 2)}


async def recommendation_load(base: str, users: list[str], concurrency: int, requests: int,
                              seconds: float, seed: int) -> dict:
    """``concurrency`` workers share ``requests`` GETs (random users), stopping at ``seconds``."""
    import httpx

    rng = np.random.default_rng(seed)
    picks = iter(rng.choice(users, size=requests).tolist())
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(client):
        nonlocal errors
        for user in picks:
            if time.perf_counter() > deadline:
                return
            start = time.perf_counter()
            response = await client.get(f"/users/{user}/recommendations", params={"k": 20})
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"concurrency": concurrency, **stats(latencies, wall, errors)}


async def feedback_under_load(base: str, users: list[str], items: list[str], readers: int,
                              writers: int, writes: int, seconds: float, tag: str) -> dict:
    """``readers`` recommendation workers while ``writers`` post ``writes`` distinct feedback
    rows (user ``{tag}-w{worker}``, value = a unique sequence number)."""
    import httpx

    rng = np.random.default_rng(1)
    sequence = iter(range(writes))
    acknowledged: list[tuple[str, str, float]] = []
    write_latencies: list[float] = []
    read_latencies: list[float] = []
    errors = {"read": 0, "write": 0}
    deadline = time.perf_counter() + seconds
    writing = True

    async def writer(client, w: int):
        for n in sequence:
            if time.perf_counter() > deadline:
                return
            body = {"user_id": f"{tag}-w{w}", "item_id": items[n % len(items)], "value": float(n + 1)}
            start = time.perf_counter()
            response = await client.post("/feedback", json=body)
            if response.status_code == 201:
                write_latencies.append(time.perf_counter() - start)
                acknowledged.append((body["user_id"], body["item_id"], body["value"]))
            else:
                errors["write"] += 1

    async def reader(client):
        while writing and time.perf_counter() < deadline:
            start = time.perf_counter()
            response = await client.get(f"/users/{rng.choice(users)}/recommendations", params={"k": 20})
            if response.status_code == 200:
                read_latencies.append(time.perf_counter() - start)
            else:
                errors["read"] += 1

    limits = httpx.Limits(max_connections=readers + writers)
    async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits) as client:
        start = time.perf_counter()
        readers_ = [asyncio.create_task(reader(client)) for _ in range(readers)]
        await asyncio.gather(*(writer(client, w) for w in range(writers)))
        writing = False
        await asyncio.gather(*readers_)
        wall = time.perf_counter() - start
    return {"acknowledged": acknowledged, "writes": stats(write_latencies, wall, errors["write"]),
            "reads": stats(read_latencies, wall, errors["read"])}


async def writes_until_killed(server: Server, items: list[str], writers: int, kill_after: int,
                              limit: int, seconds: float, tag: str) -> dict:
    """Writers post feedback; after ``kill_after`` acknowledgements the server gets SIGKILL while
    the writers keep sending; every writer stops at its first transport error."""
    import httpx

    sequence = iter(range(limit))
    acknowledged: list[tuple[str, str, float]] = []
    in_flight_at_kill = {"n": 0}
    deadline = time.perf_counter() + seconds
    pending = {"n": 0}

    async def writer(client, w: int):
        for n in sequence:
            if time.perf_counter() > deadline:
                return
            body = {"user_id": f"{tag}-w{w}", "item_id": items[n % len(items)], "value": float(n + 1)}
            pending["n"] += 1
            try:
                response = await client.post("/feedback", json=body)
            except httpx.TransportError:
                return
            finally:
                pending["n"] -= 1
            if response.status_code == 201:
                acknowledged.append((body["user_id"], body["item_id"], body["value"]))
                if len(acknowledged) == kill_after:
                    in_flight_at_kill["n"] = pending["n"]
                    server.process.send_signal(signal.SIGKILL)

    async with httpx.AsyncClient(base_url=server.base, timeout=10.0,
                                 limits=httpx.Limits(max_connections=writers)) as client:
        await asyncio.gather(*(writer(client, w) for w in range(writers)))
    server.process.wait(30)
    return {"acknowledged": acknowledged, "in_flight_at_kill": in_flight_at_kill["n"],
            "exit_code": server.process.returncode}


def stored_rows(db: Path, tag: str) -> set[tuple[str, str, float]]:
    with sqlite3.connect(db) as raw:
        rows = raw.execute("SELECT user_id, item_id, value FROM feedback WHERE user_id LIKE ?",
                           (f"{tag}-%",)).fetchall()
    return {(u, i, float(v)) for u, i, v in rows}


def default_run(log) -> Path:
    run_dir = OUT / "runs" / "lastfm-kgcn-mkgcn"
    if not (run_dir / "best").is_dir():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "retrieval.py"), "lastfm"],
                       check=True)
    log(f"run {run_dir}")
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run directory to serve (default: the lastfm MKGCN run)")
    parser.add_argument("--requests", type=int, default=2000, help="GETs per concurrency level")
    parser.add_argument("--seconds", type=float, default=30.0, help="time cap per phase")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--index", default="none", help="server --index (none: exact ranking)")
    args = parser.parse_args()
    start = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {text}", flush=True)

    run_dir = Path(args.run) if args.run else default_run(log)
    workdir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    db = workdir / "feedback.sqlite"
    import httpx

    server = Server(run_dir, db, ["--index", args.index])
    startup = server.wait()
    health = httpx.get(server.base + "/health").json()
    users = [u["user_id"] for u in httpx.get(server.base + "/users", params={"limit": 1000}).json()["users"]]
    items = [x["item_id"] for x in httpx.get(server.base + "/items", params={"limit": 1000}).json()["items"]]
    log(f"server up in {startup:.1f} s: {health['model']} on {health['dataset']}, "
        f"{health['items']} items, retrieval {health['retrieval']}")
    load_before = [round(x, 2) for x in os.getloadavg()]
    result: dict = {"run": str(run_dir), "model": health["model"], "dataset": health["dataset"],
                    "items": health["items"], "retrieval": health["retrieval"],
                    "server_start_s": round(startup, 1), "levels": []}
    try:
        asyncio.run(recommendation_load(server.base, users, 4, 100, 10, seed=99))  # warm-up
        for level in [int(x) for x in args.levels.split(",")]:
            row = asyncio.run(recommendation_load(server.base, users, level, args.requests,
                                                  args.seconds, seed=level))
            result["levels"].append(row)
            log(json.dumps(row))
        mixed = asyncio.run(feedback_under_load(server.base, users, items, readers=24, writers=8,
                                                writes=1000, seconds=args.seconds, tag="load"))
        stored = stored_rows(db, "load")
        acknowledged = set(mixed["acknowledged"])
        result["feedback_under_load"] = {
            "readers": 24, "writers": 8, "acknowledged": len(acknowledged),
            "stored": len(stored), "lost": len(acknowledged - stored),
            "unacknowledged_but_stored": len(stored - acknowledged),
            "writes": mixed["writes"], "reads": mixed["reads"]}
        log(json.dumps(result["feedback_under_load"]))
        metrics = httpx.get(server.base + "/metrics").text
        result["metrics_sample"] = [line for line in metrics.splitlines()
                                    if line.startswith("mmkgrec_http_requests_total")][:6]
        killed = asyncio.run(writes_until_killed(server, items, writers=16, kill_after=300,
                                                 limit=5000, seconds=args.seconds, tag="kill"))
    finally:
        server.kill()
    before_restart = stored_rows(db, "kill")
    server = Server(run_dir, db, ["--index", args.index])
    try:
        restart = server.wait()
        health = httpx.get(server.base + "/health").json()
        probe_user = killed["acknowledged"][0][0]
        liked = {i for u, i, _ in killed["acknowledged"] if u == probe_user}
        recs = httpx.get(f"{server.base}/users/{probe_user}/recommendations",
                         params={"k": 1000}).json()
        acknowledged = set(killed["acknowledged"])
        result["sigkill"] = {
            "writers": 16, "kill_after_acknowledged": 300,
            "acknowledged": len(acknowledged), "in_flight_at_kill": killed["in_flight_at_kill"],
            "server_exit_code": killed["exit_code"], "stored_after_kill": len(before_restart),
            "lost": len(acknowledged - before_restart),
            "unacknowledged_but_stored": len(before_restart - acknowledged),
            "restart_s": round(restart, 1), "feedback_rows_after_restart": health["feedback_rows"],
            "probe_user_liked_items_after_restart": recs["liked_items"],
            "probe_user_liked_acknowledged": len(liked),
            "probe_user_liked_items_in_list": len(liked & {x["item_id"] for x in recs["items"]})}
        log(json.dumps(result["sigkill"]))
    finally:
        server.kill()
    result.update(measured_at=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv),
                  machine=f"{platform.machine()}, {os.cpu_count()} cores shared by server and "
                          f"clients; server: 1 torch thread, 1 uvicorn worker",
                  sqlite="WAL, synchronous=FULL", load_average_before=load_before,
                  load_average_after=[round(x, 2) for x in os.getloadavg()])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "load.json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result)
    log(f"wrote {OUT / 'load.json'} and load.md")


def write_markdown(r: dict) -> None:
    f, k = r["feedback_under_load"], r["sigkill"]
    lines = [
        "# Service load and fault test", "",
        (f"`{r['command']}` on {r['measured_at']}: {r['model']} on {r['dataset']} "
         f"({r['items']:,} items, {r['retrieval']} ranking), served by `python -m mmkgrec.serve "
         f"serve` on 127.0.0.1 ({r['machine']}); clients: httpx async in one process on the same "
         f"machine. SQLite: {r['sqlite']}. Load average of the machine (1, 5, 15 min; other "
         f"jobs ran beside): {r['load_average_before']} before, {r['load_average_after']} "
         f"after."), "",
        "## GET /users/{id}/recommendations?k=20 (random users)", "",
        "| concurrent clients | requests | errors | throughput req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|"]
    for row in r["levels"]:
        lines.append(f"| {row['concurrency']} | {row['requests']} | {row['errors']} | "
                     f"{row['throughput_rps']} | {row['p50_ms']} | {row['p99_ms']} |")
    lines += ["", "## Feedback writes under load", "",
              (f"{f['writers']} writers posted distinct feedback rows while {f['readers']} clients "
               f"requested recommendations: {f['acknowledged']} acknowledged (201), "
               f"{f['stored']} found in SQLite afterwards, **{f['lost']} lost**. Writes: "
               f"{f['writes']['throughput_rps']} req/s, p50 {f['writes']['p50_ms']} ms, p99 "
               f"{f['writes']['p99_ms']} ms; reads meanwhile: {f['reads']['throughput_rps']} req/s, "
               f"p50 {f['reads']['p50_ms']} ms, p99 {f['reads']['p99_ms']} ms."), "",
              "## SIGKILL mid-load", "",
              (f"{k['writers']} writers posted feedback; at the {k['kill_after_acknowledged']}th "
               f"acknowledgement the server got SIGKILL (exit code {k['server_exit_code']}) with "
               f"{k['in_flight_at_kill']} requests in flight. Acknowledged: {k['acknowledged']}; "
               f"in SQLite after the kill: {k['stored_after_kill']} (**{k['lost']} acknowledged "
               f"rows lost**, {k['unacknowledged_but_stored']} stored whose response never "
               f"arrived). The restarted server (up in {k['restart_s']} s) reported "
               f"{k['feedback_rows_after_restart']} feedback rows in all, and a killed-run user "
               f"had {k['probe_user_liked_items_after_restart']} liked items in their history "
               f"({k['probe_user_liked_acknowledged']} acknowledged), "
               f"{k['probe_user_liked_items_in_list']} of them still in their list."), ""]
    (OUT / "load.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
