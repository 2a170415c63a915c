"""Content-addressed cache of extracted features: one SQLite file, written as items finish.

Keys are sha256 hex strings: a vector's key hashes the extractor's name, version and options,
its fitted state (codebook, TF-IDF) and the item's input content (file bytes or text), so a
changed file, option or fit misses the cache and everything else hits it. Tables:

- ``vectors(key, vector)``: float32 bytes of one item's features;
- ``fits(key, state)``: a fitted state (safetensors bytes), keyed by the extractor config and the
  sorted input digests of the train items it was fitted on;
- ``files(path, size, mtime_ns, sha256)``: file digests, recomputed when size or mtime change.

Only the parent process writes (workers return results), each result batch in its own
transaction, so an interrupted run keeps everything finished before it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np

from mmkgrec.data.textio import sha256_of as file_sha256
from mmkgrec.errors import ExtractionError, MMKGRecError

CACHE_FILE = "features-cache.sqlite"


class MemoryCache:
    """No persistent cache (``--no-cache``): every vector is computed; file digests memoised."""

    def __init__(self) -> None:
        self._digests: dict[tuple[str, int, int], str] = {}

    def file_digest(self, path: Path | None) -> str:
        """sha256 of the file's bytes; ExtractionError when it is missing or unreadable."""
        if path is None:
            raise ExtractionError("no file given")
        try:
            stat = os.stat(path)
            if not Path(path).is_file():
                raise ExtractionError("not a regular file")
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            if key not in self._digests:
                self._digests[key] = self._stored_digest(key) or self._store_digest(key, path)
        except FileNotFoundError:
            raise ExtractionError("file not found") from None
        except PermissionError:
            raise ExtractionError("permission denied") from None
        except IsADirectoryError:
            raise ExtractionError("is a directory, not a file") from None
        return self._digests[key]

    def _stored_digest(self, key: tuple[str, int, int]) -> str | None:
        return None

    def _store_digest(self, key: tuple[str, int, int], path: Path) -> str:
        return file_sha256(path)

    def get_vectors(self, keys: list[str], width: int) -> dict[str, np.ndarray]:
        return {}

    def put_vectors(self, pairs: list[tuple[str, np.ndarray]]) -> None:
        pass

    def get_fit(self, key: str) -> bytes | None:
        return None

    def put_fit(self, key: str, state: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class FeatureCache(MemoryCache):
    """The persistent cache in ``directory/features-cache.sqlite``."""

    def __init__(self, directory: str | Path) -> None:
        super().__init__()
        self.path = Path(directory) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(
                "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL);"
                "CREATE TABLE IF NOT EXISTS fits (key TEXT PRIMARY KEY, state BLOB NOT NULL);"
                "CREATE TABLE IF NOT EXISTS files (path TEXT, size INTEGER, mtime_ns INTEGER, "
                "sha256 TEXT NOT NULL, PRIMARY KEY (path, size, mtime_ns));")
        except sqlite3.DatabaseError as error:
            raise MMKGRecError(f"{self.path}: not a usable feature cache ({error}); delete it or "
                               f"run with --no-cache") from None

    def _stored_digest(self, key: tuple[str, int, int]) -> str | None:
        row = self.db.execute("SELECT sha256 FROM files WHERE path=? AND size=? AND mtime_ns=?",
                              key).fetchone()
        return row[0] if row else None

    def _store_digest(self, key: tuple[str, int, int], path: Path) -> str:
        digest = file_sha256(path)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (*key, digest))
        return digest

    def get_vectors(self, keys: list[str], width: int) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys`` (rows of another width are ignored)."""
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self.db.execute(
                    f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk):
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape == (width,):
                    found[key] = vector
        return found

    def put_vectors(self, pairs: list[tuple[str, np.ndarray]]) -> None:
        if pairs:
            with self.db:  # one transaction per finished batch
                self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", [
                    (key, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for key, v in pairs])

    def get_fit(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT state FROM fits WHERE key=?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def put_fit(self, key: str, state: bytes) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO fits VALUES (?, ?)", (key, state))

    def close(self) -> None:
        self.db.close()
