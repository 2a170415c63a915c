"""The serving commands: ``serve RUN_DIR`` and ``export-feedback DB --out FILE``.

Plain typer functions (no heavy import at module level) that ``mmkgrec.cli`` registers; also
runnable alone as ``python -m mmkgrec.serve serve RUN_DIR`` for benchmarks and tests.
"""

from __future__ import annotations

import os
import socket
from enum import Enum
from pathlib import Path

import typer

from mmkgrec.errors import MMKGRecError, run_command
from mmkgrec.serve.edge import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    default_allowed_hosts,
    freeze_startup_heap,
    server_config,
)

API_KEY_ENV = "MMKGREC_API_KEY"


class IndexKind(str, Enum):
    none = "none"
    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"


def serve(
    run_dir: Path = typer.Argument(..., help="A run directory (the --out of `mmkgrec train`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    db: Path | None = typer.Option(None, "--db", help="SQLite feedback database (created if "
                                      "absent; default: RUN_DIR/feedback.sqlite)."),
    index: IndexKind = typer.Option(IndexKind.none, "--index", help="faiss index for two-stage "
                                    "retrieval (mkgcn, kgcn); none = exact full ranking."),
    candidates: int = typer.Option(200, "--candidates", min=1, help="faiss candidates re-ranked "
                                   "exactly per request."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch / faiss threads per request."),
    max_concurrent: int | None = typer.Option(None, "--max-concurrent", min=1, help="requests "
                                              "scored at once per worker (default: the CPU "
                                              "count / --workers); the others queue."),
    workers: int = typer.Option(1, "--workers", min=1, help="server processes sharing the port "
                                "and the feedback database; each applies what the others "
                                "wrote before it answers."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="A file holding the API "
                                             "key that POST /feedback and POST /items require "
                                             "(X-API-Key or Authorization: Bearer); default: "
                                             f"the {API_KEY_ENV} environment variable."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve the mutating endpoints without "
                                 "a key: only for a server no one else can reach."),
    allowed_host: list[str] | None = typer.Option(None, "--allowed-host", help="A host name the "
                                                  "Host header may carry (repeatable; '*' = any). "
                                                  "Default: --host (unless 0.0.0.0 / ::), "
                                                  "localhost, 127.0.0.1, ::1."),
    max_body_bytes: int = typer.Option(MAX_BODY_BYTES, "--max-body-bytes", min=1,
                                       help="Largest request body (413 above)."),
    body_timeout: float = typer.Option(BODY_TIMEOUT_S, "--body-timeout", min=0.01,
                                       help="Seconds to receive a whole body (408 after)."),
    header_timeout: float = typer.Option(HEADER_TIMEOUT_S, "--header-timeout", min=0.01,
                                         help="Seconds to receive a request's head (closed after)."),
    max_connections: int = typer.Option(MAX_CONNECTIONS, "--max-connections", min=1,
                                        help="Open connections / requests at once, per worker "
                                        "(503 above)."),
) -> None:
    """Serve a trained run over HTTP: recommendations, new listeners, feedback, similar items,
    explanations, new items, a web page at /, OpenAPI at /docs, Prometheus at /metrics.

    The mutating endpoints need an API key (--api-key-file FILE or the MMKGREC_API_KEY
    variable) unless --no-auth is given; one of the two is required."""
    if not run_dir.is_dir():
        raise MMKGRecError(f"{run_dir} is not a run directory (no such folder); pass the --out "
                           f"folder of `mmkgrec train`")
    api_key = resolve_api_key(api_key_file, no_auth)
    hosts = list(allowed_host) if allowed_host else default_allowed_hosts(host)
    db_path = db or run_dir / "feedback.sqlite"
    if workers > 1:
        serve_workers(workers, run_dir=str(run_dir), db=str(db_path), host=host, port=port,
                      index=index.value, candidates=candidates, threads=threads,
                      max_concurrent=max_concurrent or max(1, (os.cpu_count() or 1) // workers),
                      log_level=log_level, api_key=api_key, no_auth=no_auth, hosts=hosts,
                      max_body_bytes=max_body_bytes, body_timeout=body_timeout,
                      header_timeout=header_timeout, max_connections=max_connections)
        return
    import torch

    torch.set_num_threads(threads)
    if index is not IndexKind.none:
        import faiss

        faiss.omp_set_num_threads(threads)
    import uvicorn

    from mmkgrec.serve.app import create_app
    from mmkgrec.serve.service import RecService

    service = RecService.from_run_dir(run_dir, db_path, index=index.value,
                                      candidates=candidates, max_concurrent=max_concurrent)
    app = create_app(service, api_key=api_key, no_auth=no_auth, allowed_hosts=hosts,
                     max_body_bytes=max_body_bytes, body_timeout=body_timeout)
    health = service.health()
    typer.echo(f"serving {health['model']} on {health['dataset']} ({health['items']} items, "
               f"{health['feedback_rows']} feedback rows, retrieval {health['retrieval']}) at "
               f"http://{host}:{port}/", err=True)
    if no_auth:
        typer.echo("--no-auth: anyone who can reach this server can post feedback and items",
                   err=True)
    if "*" not in hosts:
        typer.echo(f"answering to Host: {', '.join(hosts)} (--allowed-host to add names)", err=True)
    for note in health["notes"]:
        typer.echo(f"note: {note}", err=True)
    config = server_config(app, host, port, max_connections=max_connections,
                           header_timeout=header_timeout, log_level=log_level)
    freeze_startup_heap()
    uvicorn.Server(config).run()


def serve_workers(workers: int, **options) -> None:
    """``serve --workers N``: the store created once, one socket, N worker processes
    (:mod:`mmkgrec.serve.workers`); exit code 2 when a worker cannot start."""
    from mmkgrec.serve.edge import server_config
    from mmkgrec.serve.store import FeedbackStore
    from mmkgrec.serve.workers import Supervisor

    FeedbackStore(options["db"]).close()  # schema and WAL mode before the workers open it
    sock = server_config(None, options["host"], options["port"]).bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6):  # accepted sockets inherit it (Linux):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle + delayed-ACK wait
    typer.echo(f"serving with {workers} workers at http://{options['host']}:{options['port']}/ "
               f"(database {options['db']})", err=True)
    if options["no_auth"]:
        typer.echo("--no-auth: anyone who can reach this server can post feedback and items",
                   err=True)
    code = Supervisor(options, workers, sock, log=lambda text: typer.echo(text, err=True)).run()
    sock.close()
    if code:
        raise typer.Exit(code)


def resolve_api_key(api_key_file: Path | None, no_auth: bool) -> str | None:
    """The API key from ``--api-key-file`` (stripped) or ``MMKGREC_API_KEY``; None with
    ``--no-auth``. Neither, or a key together with --no-auth, is an error."""
    from mmkgrec.serve.app import check_api_key

    env = os.environ.get(API_KEY_ENV, "").strip()
    if no_auth:
        if api_key_file is not None:
            raise MMKGRecError("--no-auth and --api-key-file contradict each other; pick one")
        return None
    if api_key_file is not None:
        try:
            key = api_key_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise MMKGRecError(f"--api-key-file {api_key_file}: {error.strerror or error}") from None
        return check_api_key(key)
    if env:
        return check_api_key(env)
    raise MMKGRecError(f"POST /feedback and POST /items need an API key: pass --api-key-file FILE "
                       f"or set {API_KEY_ENV}; or --no-auth for a server only you can reach")


def export_feedback(
    db: Path = typer.Argument(..., help="The SQLite feedback database of `mmkgrec serve`."),
    out: Path = typer.Option(..., "--out", help="Interactions TSV to write."),
) -> None:
    """Export stored feedback as an interactions file (user_id, item_id, rating, timestamp;
    the latest value per pair) for the next training."""
    from mmkgrec.serve.store import export_feedback as export

    rows = export(db, out)
    typer.echo(f"wrote {rows} (user, item) rows to {out}")


app = typer.Typer(help="Serve a trained run; export its feedback.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.command("serve")(serve)
app.command("export-feedback")(export_feedback)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m mmkgrec.serve``: exit code 2 with one paragraph on errors
    (:func:`mmkgrec.errors.run_command`, as every ``mmkgrec`` command)."""
    run_command(lambda: app(args=argv, prog_name="python -m mmkgrec.serve"))
