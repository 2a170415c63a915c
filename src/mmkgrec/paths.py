"""Where mmkgrec keeps files it downloads or derives: the one reader of ``$MMKGREC_CACHE``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$MMKGREC_CACHE``, else ``~/.cache/mmkgrec`` (read at call time, so tests may set it)."""
    return Path(os.environ.get("MMKGREC_CACHE", Path.home() / ".cache" / "mmkgrec"))


def cache_dir(kind: str) -> Path:
    """The cache folder of one kind of file: ``data`` (downloads, embeddings), ``mmap``, ..."""
    return cache_root() / kind
