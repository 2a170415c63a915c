"""The project's error types. Every user-facing failure is one of these (CLI: exit code 2)."""

from __future__ import annotations

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
