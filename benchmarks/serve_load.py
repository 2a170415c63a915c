"""Load and fault test of `mmkgrec serve` on loopback: throughput and p50 / p99 latency of the
recommendation endpoint at 1, 8 and 32 concurrent clients, for exact and two-stage ranking;
concurrent feedback writes under that load counted back from SQLite; SIGKILL in the middle of a
write load (of one worker with --workers N > 1, which the server replaces; of the whole server
with one worker, which is then restarted), and a count of the acknowledged feedback found back.

    python benchmarks/serve_load.py [--run RUN_DIR] [--workers 2] [--modes exact,two-stage]
                                    [--levels 1,8,32] [--requests 2000] [--seconds 30]
                                    [--kill auto|worker|server|none] [--out DIR]

The server is a subprocess (`python -m mmkgrec.serve serve RUN_DIR --threads 1 --index auto
--workers N`) on a free 127.0.0.1 port; each request names its ranking (`retrieval=exact` or
`two-stage`). The recommendation clients are keep-alive connections of a minimal asyncio HTTP/1.1
client in this process (:class:`KeepAliveConnection`; the feedback phases use httpx), on the same
machine, so client and server share the CPU. Every loop is bounded in requests and in time. Default run:
the MKGCN topk run of benchmarks/retrieval.py (lastfm-kgcn). Writes DIR/load.json and load.md
(default DIR: benchmarks/results/serve).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

    def __init__(self, run_dir: Path, db: Path, extra: list[str], workers: int = 1):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.log = db.with_name(f"server-{self.port}.log")
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mmkgrec.serve", "serve", str(run_dir), "--port",
                 str(self.port), "--db", str(db), "--threads", "1", "--no-auth",  # loopback only
                 "--workers", str(workers), *extra],
                stdout=subprocess.DEVNULL, stderr=handle, env=env,
                start_new_session=True)  # its own process group: the workers are killed with it

    def wait(self, timeout: float = 300.0) -> float:
        """Seconds until the server answers (with --workers N: until all N are ready)."""
        import httpx

        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            if self.workers > 1 and "workers ready" not in self.log.read_text():
                time.sleep(0.2)
                continue
            try:
                if httpx.get(self.base + "/health", timeout=1.0).status_code == 200:
                    return time.perf_counter() - start
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def worker_pids(self) -> list[int]:
        """The pids of the workers the supervisor reported ready (--workers N > 1)."""
        import re

        found = re.findall(r"pids ([\d, ]+)\)", self.log.read_text())
        return [int(x) for x in found[-1].split(",")] if found else []

    def replacements(self) -> int:
        return self.log.read_text().count("starting a replacement")

    def sigkill(self) -> None:
        """SIGKILL the server and every worker (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        self.sigkill()
        self.process.wait(30)


def stats(latencies: list[float], wall: float, errors: int) -> dict:
    array = np.asarray(latencies) * 1000.0
    return {"requests": len(latencies), "errors": errors, "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(array, 50)), 2),
            "p99_ms": round(float(np.percentile(array, 99)), 2),
            "mean_ms": round(float(array.mean()), 2)}


class KeepAliveConnection:
    """One HTTP/1.1 keep-alive connection for GETs: asyncio streams, a request line and a Host
    header out, status line, Content-Length and body in. The load generator shares the 2 cores
    with the server, so it must cost little: with httpx's async client the same server measured
    276 req/s at 32 clients, ~1,000 with this one (the httpx client was the bottleneck)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, target: str) -> tuple[int, bytes]:
        """(status, body); reconnects once if the server closed the idle connection."""
        for attempt in (0, 1):
            await self.connect()
            assert self.reader is not None
            self.writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()
                if attempt:
                    raise
                continue
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            fields = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
            fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
            body = await self.reader.readexactly(int(fields.get(b"content-length", b"0")))
            if fields.get(b"connection", b"").lower() == b"close":
                self.close()
            return status, body
        raise ConnectionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def recommendation_load(base: str, users: list[str], concurrency: int, requests: int,
                              seconds: float, seed: int, mode: str | None = None) -> dict:
    """``concurrency`` connections share ``requests`` GETs (random users), stopping at
    ``seconds``; ``mode``: the ranking each request asks for (None: the server's default).
    All connections are opened before the clock starts."""
    from urllib.parse import quote, urlsplit

    address = urlsplit(base)
    rng = np.random.default_rng(seed)
    picks = iter(rng.choice(users, size=requests).tolist())
    latencies: list[float] = []
    errors = 0
    query = "?k=20" + (f"&retrieval={mode}" if mode else "")
    connections = [KeepAliveConnection(address.hostname or "127.0.0.1", address.port or 80)
                   for _ in range(concurrency)]

    async def worker(connection: KeepAliveConnection, deadline: float):
        nonlocal errors
        for user in picks:
            if time.perf_counter() > deadline:
                return
            start = time.perf_counter()
            try:
                status, _ = await connection.get(f"/users/{quote(user, safe='')}/recommendations"
                                                 + query)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                connection.close()
                continue
            if status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    await asyncio.gather(*(c.connect() for c in connections))
    start = time.perf_counter()
    await asyncio.gather(*(worker(c, start + seconds) for c in connections))
    wall = time.perf_counter() - start
    for connection in connections:
        connection.close()
    return {"mode": mode or "default", "concurrency": concurrency,
            **stats(latencies, wall, errors)}


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
            try:
                response = await client.post("/feedback", json=body)
            except httpx.TransportError:  # not acknowledged: the count-back does not expect it
                errors["write"] += 1
                continue
            if response.status_code == 201:
                write_latencies.append(time.perf_counter() - start)
                acknowledged.append((body["user_id"], body["item_id"], body["value"]))
            else:
                errors["write"] += 1

    async def reader(client):
        while writing and time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                response = await client.get(f"/users/{rng.choice(users)}/recommendations",
                                            params={"k": 20})
            except httpx.TransportError:
                errors["read"] += 1
                continue
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
                    server.sigkill()

    async with httpx.AsyncClient(base_url=server.base, timeout=10.0,
                                 limits=httpx.Limits(max_connections=writers)) as client:
        await asyncio.gather(*(writer(client, w) for w in range(writers)))
    server.process.wait(30)
    return {"acknowledged": acknowledged, "in_flight_at_kill": in_flight_at_kill["n"],
            "exit_code": server.process.returncode}


async def writes_while_a_worker_is_killed(server: Server, items: list[str], writers: int,
                                          kill_after: int, limit: int, seconds: float,
                                          tag: str) -> dict:
    """``--workers N``: writers post feedback; after ``kill_after`` acknowledgements one worker
    gets SIGKILL while the writers keep sending (a request that fails on the dead worker's
    connection is not retried: it was never acknowledged); the server stays up."""
    import httpx

    sequence = iter(range(limit))
    acknowledged: list[tuple[str, str, float]] = []
    failed = {"transport": 0, "status": 0}
    deadline = time.perf_counter() + seconds
    victim = server.worker_pids()[0]
    killed = {"at": None}

    async def writer(client, w: int):
        for n in sequence:
            if time.perf_counter() > deadline:
                return
            body = {"user_id": f"{tag}-w{w}", "item_id": items[n % len(items)], "value": float(n + 1)}
            try:
                response = await client.post("/feedback", json=body)
            except httpx.TransportError:
                failed["transport"] += 1
                continue
            if response.status_code == 201:
                acknowledged.append((body["user_id"], body["item_id"], body["value"]))
                if len(acknowledged) == kill_after:
                    killed["at"] = time.perf_counter()
                    os.kill(victim, signal.SIGKILL)
            else:
                failed["status"] += 1

    async with httpx.AsyncClient(base_url=server.base, timeout=30.0,
                                 limits=httpx.Limits(max_connections=writers)) as client:
        await asyncio.gather(*(writer(client, w) for w in range(writers)))
    return {"acknowledged": acknowledged, "killed_pid": victim if killed["at"] else None,
            "killed_at": killed["at"], "failed": failed}


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


def synthetic_run(items: int, run_dir: Path, epochs: int, log) -> Path:
    """A run directory serving a synthetic catalogue of ``items`` songs (the generator config
    and training of ``benchmarks/retrieval.py synthetic``, sizes scaled with ``items``; valid /
    test cut to 8 users), trained once and reused."""
    if (run_dir / "best").is_dir():
        log(f"run {run_dir}")
        return run_dir
    import dataclasses

    from mmkgrec.data import split
    from mmkgrec.data.synthetic import SyntheticConfig, generate
    from mmkgrec.train.run import RunSpec, run_experiment

    config = SyntheticConfig(
        n_users=5_000, n_items=items, n_artists=max(10, items // 50),
        n_albums=max(20, items // 12), n_genres=24, n_tags=400, interactions_per_user=40,
        candidates=min(2_000, items), modalities={"audio": 16, "text": 16, "image": 16, "sentiment": 4})
    start = time.perf_counter()
    ds = generate(config, seed=0)
    full = split(ds, protocol="topk", seed=0)
    keep = np.unique(full.valid["user"].to_numpy())[:8]
    small = dataclasses.replace(
        full, valid=full.valid[full.valid["user"].isin(keep)].reset_index(drop=True),
        test=full.test[full.test["user"].isin(keep)].reset_index(drop=True))
    train_options = {"epochs": epochs, "eval_every": epochs, "patience": None,
                     "eval_batch_users": 1, "sparse_embeddings": True}
    spec = RunSpec(model="mkgcn", dataset="synthetic-custom", protocol="topk", seed=0,
                   train_options=train_options)
    run_experiment(spec, run_dir, data=(ds, small), progress=False)
    log(f"generated and trained {run_dir} ({ds.n_items:,} items) in "
        f"{time.perf_counter() - start:.0f} s")
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run directory to serve (default: the lastfm MKGCN run)")
    parser.add_argument("--requests", type=int, default=2000, help="GETs per concurrency level")
    parser.add_argument("--seconds", type=float, default=30.0, help="time cap per phase")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--modes", default="exact,two-stage",
                        help="rankings to measure (comma-separated: exact, two-stage)")
    parser.add_argument("--index", default="auto", help="server --index (two-stage needs one)")
    parser.add_argument("--candidates", type=int, default=200, help="server --candidates")
    parser.add_argument("--workers", type=int, default=1, help="server --workers")
    parser.add_argument("--kill", choices=["auto", "worker", "server", "none"], default="auto",
                        help="SIGKILL phase: one worker (auto with --workers > 1), the whole "
                             "server then a restart (auto with one worker), or none")
    parser.add_argument("--kill-after", type=int, default=300,
                        help="acknowledged writes before the SIGKILL")
    parser.add_argument("--synthetic", type=int, metavar="ITEMS",
                        help="serve a synthetic catalogue of ITEMS songs instead of --run "
                             "(generated and trained once into --synthetic-dir)")
    parser.add_argument("--synthetic-dir", type=Path, default=OUT / "runs" / "synthetic-1m")
    parser.add_argument("--synthetic-epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for load.json / load.md")
    args = parser.parse_args()
    kill = args.kill if args.kill != "auto" else ("worker" if args.workers > 1 else "server")
    if kill == "worker" and args.workers < 2:
        parser.error("--kill worker needs --workers 2 or more")
    start = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {text}", flush=True)

    if args.synthetic:
        run_dir = synthetic_run(args.synthetic, args.synthetic_dir, args.synthetic_epochs, log)
    else:
        run_dir = Path(args.run) if args.run else default_run(log)
    workdir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    db = workdir / "feedback.sqlite"
    import httpx

    options = ["--index", args.index, "--candidates", str(args.candidates)]
    server = Server(run_dir, db, options, args.workers)
    startup = server.wait()
    health = httpx.get(server.base + "/health").json()
    users = [u["user_id"] for u in httpx.get(server.base + "/users", params={"limit": 1000}).json()["users"]]
    items = [x["item_id"] for x in httpx.get(server.base + "/items", params={"limit": 1000}).json()["items"]]
    log(f"server up in {startup:.1f} s: {health['model']} on {health['dataset']}, "
        f"{health['items']} items, {args.workers} workers, index {health['index']}")
    load_before = [round(x, 2) for x in os.getloadavg()]
    result: dict = {"run": str(run_dir), "model": health["model"], "dataset": health["dataset"],
                    "items": health["items"], "index": health["index"],
                    "candidates": args.candidates, "workers": args.workers,
                    "server_start_s": round(startup, 1), "levels": []}
    try:
        for mode in args.modes.split(","):
            asyncio.run(recommendation_load(server.base, users, 4, 100, 10, 99, mode))  # warm-up
            for level in [int(x) for x in args.levels.split(",")]:
                row = asyncio.run(recommendation_load(server.base, users, level, args.requests,
                                                      args.seconds, level, mode))
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
        if kill == "worker":
            result["sigkill_worker"] = kill_a_worker(server, db, items, args.seconds,
                                                     args.kill_after, log)
        elif kill == "server":
            killed = asyncio.run(writes_until_killed(server, items, writers=16,
                                                     kill_after=args.kill_after,
                                                     limit=5000, seconds=args.seconds, tag="kill"))
    finally:
        server.kill()
    if kill == "server":
        result["sigkill"] = restart_and_count(run_dir, db, options, args.workers, killed,
                                              args.kill_after, log)
    result.update(measured_at=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv),
                  machine=f"{platform.machine()}, {os.cpu_count()} cores shared by server and "
                          f"clients; server: 1 torch thread per worker, {args.workers} workers",
                  sqlite="WAL, synchronous=FULL", load_average_before=load_before,
                  load_average_after=[round(x, 2) for x in os.getloadavg()])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, args.out)
    log(f"wrote {args.out / 'load.json'} and load.md")


def kill_a_worker(server: Server, db: Path, items: list[str], seconds: float, kill_after: int,
                  log) -> dict:
    """SIGKILL one worker mid-write-load; count the acknowledged rows back; wait for the
    replacement; every worker must then report the store's feedback count."""
    import httpx

    killed = asyncio.run(writes_while_a_worker_is_killed(server, items, writers=16,
                                                         kill_after=kill_after, limit=5000,
                                                         seconds=seconds, tag="kill"))
    stored = stored_rows(db, "kill")
    acknowledged = set(killed["acknowledged"])
    if killed["killed_pid"] is None:
        raise RuntimeError(f"fewer than {kill_after} writes were acknowledged within the time "
                           f"cap: no worker was killed (raise --seconds or lower --kill-after)")
    killed_at = killed["killed_at"]
    deadline = killed_at + 300
    while "replacement worker" not in server.log.read_text() and time.perf_counter() < deadline:
        time.sleep(0.2)
    replaced_s = time.perf_counter() - killed_at
    total = {httpx.get(server.base + "/health", timeout=30.0).json()["feedback_rows"]
             for _ in range(4 * server.workers)}
    with sqlite3.connect(db) as raw:
        in_store = int(raw.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])
    row = {"writers": 16, "kill_after_acknowledged": kill_after, "killed_pid": killed["killed_pid"],
           "acknowledged": len(acknowledged), "stored": len(stored),
           "lost": len(acknowledged - stored),
           "unacknowledged_but_stored": len(stored - acknowledged),
           "failed_requests": killed["failed"], "worker_replaced": server.replacements() >= 1,
           "replacement_seen_ready_within_s": round(replaced_s, 1),
           "server_alive": server.process.poll() is None,
           "feedback_rows_reported_by_workers": sorted(total), "feedback_rows_in_store": in_store}
    log(json.dumps(row))
    return row


def restart_and_count(run_dir: Path, db: Path, options: list[str], workers: int, killed: dict,
                      kill_after: int, log) -> dict:
    """After a SIGKILL of the whole server: count back, restart, check the probe user."""
    import httpx

    before_restart = stored_rows(db, "kill")
    server = Server(run_dir, db, options, workers)
    try:
        restart = server.wait()
        health = httpx.get(server.base + "/health").json()
        probe_user = killed["acknowledged"][0][0]
        liked = {i for u, i, _ in killed["acknowledged"] if u == probe_user}
        recs = httpx.get(f"{server.base}/users/{probe_user}/recommendations",
                         params={"k": 1000}).json()
        acknowledged = set(killed["acknowledged"])
        row = {
            "writers": 16, "kill_after_acknowledged": kill_after,
            "acknowledged": len(acknowledged), "in_flight_at_kill": killed["in_flight_at_kill"],
            "server_exit_code": killed["exit_code"], "stored_after_kill": len(before_restart),
            "lost": len(acknowledged - before_restart),
            "unacknowledged_but_stored": len(before_restart - acknowledged),
            "restart_s": round(restart, 1), "feedback_rows_after_restart": health["feedback_rows"],
            "probe_user_liked_items_after_restart": recs["liked_items"],
            "probe_user_liked_acknowledged": len(liked),
            "probe_user_liked_items_in_list": len(liked & {x["item_id"] for x in recs["items"]})}
        log(json.dumps(row))
        return row
    finally:
        server.kill()


def write_markdown(r: dict, out: Path) -> None:
    f = r["feedback_under_load"]
    lines = [
        "# Service load and fault test", "",
        (f"`{r['command']}` on {r['measured_at']}: {r['model']} on {r['dataset']} "
         f"({r['items']:,} items; index {r['index']}, {r['candidates']} candidates re-ranked in "
         f"two-stage), served by `python -m mmkgrec.serve serve --workers {r['workers']}` on "
         f"127.0.0.1 ({r['machine']}); clients: httpx async in one process on the same "
         f"machine. SQLite: {r['sqlite']}. Load average of the machine (1, 5, 15 min; other "
         f"jobs ran beside): {r['load_average_before']} before, {r['load_average_after']} "
         f"after."), "",
        "## GET /users/{id}/recommendations?k=20 (random users)", "",
        "| ranking | concurrent clients | requests | errors | throughput req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|"]
    for row in r["levels"]:
        lines.append(f"| {row['mode']} | {row['concurrency']} | {row['requests']} | "
                     f"{row['errors']} | {row['throughput_rps']} | {row['p50_ms']} | "
                     f"{row['p99_ms']} |")
    lines += ["", "## Feedback writes under load", "",
              (f"{f['writers']} writers posted distinct feedback rows while {f['readers']} clients "
               f"requested recommendations: {f['acknowledged']} acknowledged (201), "
               f"{f['stored']} found in SQLite afterwards, **{f['lost']} lost**. Writes: "
               f"{f['writes']['throughput_rps']} req/s, p50 {f['writes']['p50_ms']} ms, p99 "
               f"{f['writes']['p99_ms']} ms; reads meanwhile: {f['reads']['throughput_rps']} req/s, "
               f"p50 {f['reads']['p50_ms']} ms, p99 {f['reads']['p99_ms']} ms."), ""]
    if "sigkill_worker" in r:
        w = r["sigkill_worker"]
        lines += ["## SIGKILL of one worker mid-load", "",
                  (f"{w['writers']} writers posted feedback; at the {w['kill_after_acknowledged']}th "
                   f"acknowledgement worker {w['killed_pid']} got SIGKILL while they kept sending "
                   f"(failed requests: {w['failed_requests']}). Acknowledged: {w['acknowledged']}; "
                   f"in SQLite: {w['stored']} (**{w['lost']} acknowledged rows lost**, "
                   f"{w['unacknowledged_but_stored']} stored whose response never arrived). "
                   f"Server still up: {w['server_alive']}; replacement seen ready within "
                   f"{w['replacement_seen_ready_within_s']} s of the kill (checked once the "
                   f"writers stopped); feedback rows reported by "
                   f"the workers afterwards: {w['feedback_rows_reported_by_workers']} (store: "
                   f"{w['feedback_rows_in_store']})."), ""]
    if "sigkill" in r:
        k = r["sigkill"]
        lines += ["## SIGKILL of the server mid-load", "",
                  (f"{k['writers']} writers posted feedback; at the {k['kill_after_acknowledged']}th "
                   f"acknowledgement the server got SIGKILL (exit code {k['server_exit_code']}) "
                   f"with {k['in_flight_at_kill']} requests in flight. Acknowledged: "
                   f"{k['acknowledged']}; in SQLite after the kill: {k['stored_after_kill']} "
                   f"(**{k['lost']} acknowledged rows lost**, {k['unacknowledged_but_stored']} "
                   f"stored whose response never arrived). The restarted server (up in "
                   f"{k['restart_s']} s) reported {k['feedback_rows_after_restart']} feedback rows "
                   f"in all, and a killed-run user had "
                   f"{k['probe_user_liked_items_after_restart']} liked items in their history "
                   f"({k['probe_user_liked_acknowledged']} acknowledged), "
                   f"{k['probe_user_liked_items_in_list']} of them still in their list."), ""]
    (out / "load.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
