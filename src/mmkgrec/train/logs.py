"""What a training run shows and writes: the epoch progress bar, log.jsonl, curve.png."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path


def append_log(directory: Path | None, record: dict) -> None:
    """One JSON line in ``directory/log.jsonl`` (None: not the writing rank, nothing)."""
    if directory is not None:
        with open(directory / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def rewrite_log(directory: Path | None, log: list[dict]) -> None:
    """After a resume: the log as of the checkpoint (drops records of the lost epoch)."""
    if directory is None:
        return
    text = "".join(json.dumps(record) + "\n" for record in log)
    (directory / "log.jsonl").write_text(text, encoding="utf-8")


@contextmanager
def epoch_progress(enabled: bool, description: str, total: int):
    """A transient rich progress bar for one epoch (or nothing); yields an ``advance()``."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def plot_curve(path: Path, log: list[dict], monitor: str) -> None:
    """PNG of the training loss and the validation metric vs epoch (Agg, no pyplot state)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axis = figure.subplots()
    trained = [r for r in log if "loss" in r]
    axis.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], "o-", color="tab:blue")
    axis.set_xlabel("epoch")
    axis.set_ylabel("training loss", color="tab:blue")
    validated = [r for r in log if "valid" in r]
    right = axis.twinx()
    right.plot([r["epoch"] for r in validated], [r["valid"][monitor] for r in validated], "s-",
               color="tab:orange")
    right.set_ylabel(f"valid {monitor}", color="tab:orange")
    figure.savefig(path, dpi=100)
