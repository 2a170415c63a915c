"""Validated configs: every options model is pydantic; invalid options become one ConfigError."""

from __future__ import annotations

import re
import sys
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from mmkgrec.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # the one shim: import tomllib from here

__all__ = ["describe", "file_slug", "parse_config", "tomllib"]

Config = TypeVar("Config", bound=BaseModel)


def describe(error: ValidationError) -> str:
    """One line naming each bad option: ``field: message; field: message``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}"
                     for e in error.errors())


def parse_config(cls: type[Config], what: str, options: dict) -> Config:
    """``cls(**options)``, or ConfigError("invalid <what>: ...") naming each bad option."""
    try:
        return cls(**options)
    except ValidationError as error:
        raise ConfigError(f"invalid {what}: {describe(error)}") from None


def file_slug(name: str) -> str:
    """A file-name-safe version of a dataset name (which may be a directory path)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).rstrip("/")).strip("_") or "dataset"
