"""The project's error types. Every user-facing failure is one of these (CLI: exit code 2)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


class MMKGRecError(Exception):
    """Base class of every error mmkgrec raises on purpose."""


class DataFormatError(MMKGRecError):
    """A data file is malformed. Names the file, the 1-based line (when known) and the problem."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class DatasetNotFoundError(MMKGRecError):
    """A dataset name or directory cannot be resolved."""


class ConfigError(MMKGRecError):
    """An invalid option or configuration value."""


class ChecksumError(MMKGRecError):
    """A downloaded or local file does not match its pinned sha256."""


class ExtractionError(MMKGRecError):
    """One item's input could not be turned into features (missing, corrupt, undecodable)."""


def run_command(command: Callable[[], object]) -> None:
    """Run a command-line entry point the way every ``mmkgrec`` command fails: our errors, I/O
    and value errors exit with code 2 and one paragraph on stderr; any other exception (a bug)
    also exits 2, naming itself as one. ``MMKGREC_DEBUG=1`` re-raises, with the traceback."""
    try:
        command()
    except Exception as error:
        if os.environ.get("MMKGREC_DEBUG"):
            raise
        from rich.console import Console

        ours = isinstance(error, (MMKGRecError, OSError, ValueError))
        text = (f"[bold red]error:[/] {error}" if ours else
                f"[bold red]internal error:[/] {type(error).__name__}: {error}. This is a bug in "
                f"mmkgrec; rerun with MMKGREC_DEBUG=1 for the traceback and report it.")
        Console(stderr=True).print(text, highlight=False, soft_wrap=True)
        sys.exit(2)
