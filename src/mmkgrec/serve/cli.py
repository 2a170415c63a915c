"""The serving commands: ``serve RUN_DIR`` and ``export-feedback DB --out FILE``.

Plain typer functions (no heavy import at module level) that ``mmkgrec.cli`` registers; also
runnable alone as ``python -m mmkgrec.serve serve RUN_DIR`` for benchmarks and tests.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path

import typer

from mmkgrec.errors import MMKGRecError


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
                                              "scored at once (default: the CPU count); the "
                                              "others queue."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve a trained run over HTTP: recommendations, new listeners, feedback, similar items,
    explanations, new items, a web page at /, OpenAPI at /docs, Prometheus at /metrics."""
    import torch

    torch.set_num_threads(threads)
    if index is not IndexKind.none:
        import faiss

        faiss.omp_set_num_threads(threads)
    import uvicorn

    from mmkgrec.serve.app import create_app
    from mmkgrec.serve.service import RecService

    if not run_dir.is_dir():
        raise MMKGRecError(f"{run_dir} is not a run directory (no such folder); pass the --out "
                           f"folder of `mmkgrec train`")
    service = RecService.from_run_dir(run_dir, db or run_dir / "feedback.sqlite", index=index.value,
                                      candidates=candidates, max_concurrent=max_concurrent)
    health = service.health()
    typer.echo(f"serving {health['model']} on {health['dataset']} ({health['items']} items, "
               f"{health['feedback_rows']} feedback rows, retrieval {health['retrieval']}) at "
               f"http://{host}:{port}/", err=True)
    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, workers=1)


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
    """Entry point of ``python -m mmkgrec.serve``: exit code 2 with one paragraph on user errors."""
    try:
        app(args=argv, prog_name="python -m mmkgrec.serve")
    except (MMKGRecError, OSError, ValueError) as error:
        if os.environ.get("MMKGREC_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
