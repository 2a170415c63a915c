"""``mmkgrec serve --workers N``: N server processes on one listening socket and one SQLite store.

The supervisor (this module, in the parent process) creates the store's schema once, binds the
socket, and starts N workers (``spawn``: a fresh interpreter each, no torch state forked); each
loads the run, builds its :class:`~.service.RecService` and runs uvicorn on the inherited socket,
and the kernel spreads connections over them. Workers share nothing but the socket and the
store: a worker applies what others committed before it reads (see :mod:`.service`), so the
catalogue and every user's feedback are the same whichever worker answers. A worker that dies
after it was ready (a crash, SIGKILL) is replaced; one that fails to start stops the whole
server with its error (a bad run directory is not retried N times). SIGTERM / SIGINT stop the
workers gracefully (uvicorn finishes the requests in flight).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

#: seconds a stopping worker gets to finish its requests before it is killed
STOP_GRACE_S = 10.0
#: the listening socket's queue of connections not yet accepted (uvicorn's default)
LISTEN_BACKLOG = 2048


def worker_main(options: dict[str, Any], sock, ready, counts=None, slot: int = 0) -> None:
    """One worker: load the run, serve on ``sock``; ``ready`` is set once it can answer;
    ``counts`` / ``slot``: the shared open-connection counts and this worker's entry
    (:class:`~.edge.ConnectionBalance`)."""
    import torch

    torch.set_num_threads(options["threads"])
    if options["index"] != "none":
        import faiss

        faiss.omp_set_num_threads(options["threads"])
    import uvicorn

    from mmkgrec.errors import MMKGRecError
    from mmkgrec.serve.app import create_app
    from mmkgrec.serve.edge import ConnectionBalance, freeze_startup_heap, server_config
    from mmkgrec.serve.service import RecService

    try:
        service = RecService.from_run_dir(options["run_dir"], options["db"], index=options["index"],
                                          candidates=options["candidates"],
                                          max_concurrent=options["max_concurrent"])
        app = create_app(service, api_key=options["api_key"], no_auth=options["no_auth"],
                         allowed_hosts=options["hosts"], max_body_bytes=options["max_body_bytes"],
                         body_timeout=options["body_timeout"])
    except (MMKGRecError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    config = server_config(app, options["host"], options["port"],
                           max_connections=options["max_connections"],
                           header_timeout=options["header_timeout"], log_level=options["log_level"],
                           balance=None if counts is None else ConnectionBalance(counts, slot))
    config.backlog = 1  # asyncio accepts `backlog` connections per wake-up: one (see below)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            sock.listen(LISTEN_BACKLOG)  # the kernel's queue back to full length

    freeze_startup_heap()
    ready.set()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    Server(config).run(sockets=[sock])


def _exit_with_parent(parent: int) -> None:
    """Stop this worker (gracefully) once the supervisor is gone, e.g. killed by SIGKILL: no
    orphan keeps serving on the socket unsupervised."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    """Starts, watches and replaces the workers (see the module docstring)."""

    def __init__(self, options: dict[str, Any], workers: int, sock, log=print):
        self.options, self.n, self.sock, self.log = options, int(workers), sock, log
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[tuple[Any, Any]] = []  # (process, ready event)
        self.stopping = False
        self.counts = self.context.Array("i", self.n, lock=False)  # open connections per slot

    def _start(self, slot: int):
        ready = self.context.Event()
        process = self.context.Process(target=worker_main,
                                       args=(self.options, self.sock, ready, self.counts, slot),
                                       name="mmkgrec-serve-worker", daemon=False)
        process.start()
        return process, ready

    def run(self) -> int:
        """Serve until SIGTERM / SIGINT (exit code 0) or a worker fails to start (2)."""
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.workers = [self._start(slot) for slot in range(self.n)]
            announced, known = False, set()
            while not self.stopping:
                for slot, (process, ready) in enumerate(self.workers):
                    if process.is_alive():
                        continue
                    if not ready.is_set():
                        self.log(f"a worker failed to start (exit code {process.exitcode}); "
                                 f"stopping")
                        return 2
                    self.log(f"worker {process.pid} exited (exit code {process.exitcode}); "
                             f"starting a replacement")
                    self.workers[slot] = self._start(slot)
                if not announced and all(ready.is_set() for _, ready in self.workers):
                    announced = True
                    known = {p.pid for p, _ in self.workers}
                    self.log(f"{self.n} workers ready (pids "
                             f"{', '.join(str(p.pid) for p, _ in self.workers)})")
                elif announced:
                    for process, ready in self.workers:
                        if ready.is_set() and process.pid not in known:
                            known.add(process.pid)
                            self.log(f"replacement worker {process.pid} ready")
                time.sleep(0.2)
            return 0
        finally:
            self._terminate()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def _terminate(self) -> None:
        for process, _ in self.workers:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)  # uvicorn: graceful shutdown
        deadline = time.monotonic() + STOP_GRACE_S
        for process, _ in self.workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
