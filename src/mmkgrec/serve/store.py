"""Durable feedback and registered items in an embedded SQLite database.

The database runs in WAL mode with ``synchronous=FULL``: every acknowledged write is committed
and fsynced to the write-ahead log before the HTTP response leaves, so neither a killed server
process nor a power cut loses it. (``NORMAL`` would survive a killed process too, since a commit
then only waits for the OS to have the WAL page, but could lose the last transactions on an OS
crash or power cut; a recommender's feedback is cheap to fsync at this rate, so FULL is used.)

Tables::

    feedback(id, user_id, item_id, value, created)   one row per POST /feedback, append-only
    items(id, item_id, payload, created)             one row per POST /items (JSON payload)
    quarantined_items(id, item_id, payload, reason, created)
                                                     stored items that failed the checks on start

Writes go through one connection guarded by a lock (SQLite has one writer at a time anyway);
reads open no extra state. Nothing here is pickled: payloads are JSON text.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time
from pathlib import Path

from mmkgrec.errors import MMKGRecError

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    value REAL NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_user ON feedback(user_id);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantined_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL,
    created REAL NOT NULL
);
"""


class FeedbackStore:
    """Append-only feedback log and registered items in one SQLite file (``":memory:"`` for tests)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise MMKGRecError(f"feedback database {self.path}: folder {parent} does not exist")
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.open()

    def open(self) -> None:
        """(Re)connect after :meth:`close` (an app whose lifespan restarts); no-op when open."""
        with self._lock:
            if self._db is not None:
                return
            if self.path == ":memory:" and getattr(self, "_was_open", False):
                raise MMKGRecError("an in-memory feedback database cannot be reopened")
            try:
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                     timeout=30.0)
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(SCHEMA)
            except sqlite3.DatabaseError as error:
                raise MMKGRecError(f"feedback database {self.path}: {error}") from None
            if self.path != ":memory:" and str(mode).lower() != "wal":
                db.close()
                raise MMKGRecError(f"feedback database {self.path}: cannot switch to WAL mode ({mode})")
            self._db, self._was_open = db, True

    @property
    def _conn(self) -> sqlite3.Connection:
        """The open connection (callers hold ``_lock``)."""
        if self._db is None:
            raise MMKGRecError(f"feedback database {self.path} is closed")
        return self._db

    # ---- writes --------------------------------------------------------------------------------
    def add_feedback(self, user_id: str, item_id: str, value: float) -> int:
        """Store one feedback event durably (committed and fsynced on return); its row id."""
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO feedback(user_id, item_id, value, created) VALUES (?, ?, ?, ?)",
                (user_id, item_id, float(value), time.time()))
            return int(cursor.lastrowid or 0)

    def add_item(self, item_id: str, payload: dict) -> int:
        """Store a registered item's request (links, features, name) as JSON; its row id."""
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO items(item_id, payload, created) VALUES (?, ?, ?)",
                (item_id, json.dumps(payload, separators=(",", ":")), time.time()))
            return int(cursor.lastrowid or 0)

    def quarantine_item(self, item_id: str, reason: str) -> None:
        """Move a registered item to ``quarantined_items`` (with the reason), in one transaction:
        it is no longer replayed, and its id is free to be registered again."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO quarantined_items(item_id, payload, reason, created) "
                    "SELECT item_id, payload, ?, ? FROM items WHERE item_id = ?",
                    (reason, time.time(), item_id))
                self._conn.execute("DELETE FROM items WHERE item_id = ?", (item_id,))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def quarantined(self) -> list[tuple[str, str]]:
        """Quarantined items (item_id, reason) in quarantine order."""
        with self._lock:
            return self._conn.execute(
                "SELECT item_id, reason FROM quarantined_items ORDER BY id").fetchall()

    # ---- reads ---------------------------------------------------------------------------------
    def feedback(self) -> list[tuple[int, str, str, float, float]]:
        """Every feedback row (id, user_id, item_id, value, created) in write order."""
        with self._lock:
            return self._conn.execute(
                "SELECT id, user_id, item_id, value, created FROM feedback ORDER BY id").fetchall()

    def items(self) -> list[tuple[str, dict]]:
        """Registered items (item_id, payload) in registration order."""
        with self._lock:
            rows = self._conn.execute("SELECT item_id, payload FROM items ORDER BY id").fetchall()
        return [(item_id, json.loads(payload)) for item_id, payload in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def export_feedback(db_path: str | Path, out: str | Path) -> int:
    """Write the feedback log of ``db_path`` as an interactions file for the next training.

    Tab-separated with a header ``user_id  item_id  rating  timestamp`` (original ids; the
    format `apply_presplit` and the TSV readers take): one row per (user, item), the LATEST
    value sent for it, in order of first feedback. Returns the number of rows written.
    """
    db_path = Path(db_path)
    if not db_path.is_file():
        raise MMKGRecError(f"{db_path}: no such feedback database")
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        rows = db.execute(
            "SELECT user_id, item_id, value, created, id FROM feedback ORDER BY id").fetchall()
        db.close()
    except sqlite3.DatabaseError as error:
        raise MMKGRecError(f"{db_path}: not a feedback database ({error})") from None
    latest: dict[tuple[str, str], tuple[float, float]] = {}
    for user_id, item_id, value, created, _ in rows:  # dict keeps first-insertion order
        latest[(user_id, item_id)] = (value, created)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["user_id", "item_id", "rating", "timestamp"])
        for (user_id, item_id), (value, created) in latest.items():
            writer.writerow([user_id, item_id, repr(float(value)), f"{created:.3f}"])
    return len(latest)
