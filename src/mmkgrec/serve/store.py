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

Several server processes may share one file (``mmkgrec serve --workers N``): each keeps its
state in memory and calls :meth:`FeedbackStore.data_version` before it reads that state, a
``PRAGMA`` that changes when another connection (any process) committed; only then does it
read what is new (:meth:`FeedbackStore.changes`, by row id, in one read transaction). Row ids
are assigned in commit order (one writer at a time), so applying rows in id order gives every
process the store's "latest value per (user, item)".

Writes go through one connection guarded by a lock (SQLite has one writer at a time anyway);
reads use a second connection (in WAL mode readers never wait for a writer's fsync). Nothing
here is pickled: payloads are JSON text.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
        self._lock = threading.RLock()  # the write connection (re-entered by a read within a
        # transaction on ":memory:", whose one connection serves both)
        self._read_lock = threading.Lock()  # the read connection
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._writes = 0  # ":memory:" has no other connection: its data_version is this count
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
            reader = db
            if self.path != ":memory:":
                reader = sqlite3.connect(self.path, check_same_thread=False,
                                         isolation_level=None, timeout=30.0)
            self._db, self._reader, self._was_open = db, reader, True

    @property
    def _conn(self) -> sqlite3.Connection:
        """The open connection (callers hold ``_lock``)."""
        if self._db is None:
            raise MMKGRecError(f"feedback database {self.path} is closed")
        return self._db

    @property
    def _read(self) -> sqlite3.Connection:
        """The open read connection (callers hold ``_read_lock``; for ":memory:" also ``_lock``)."""
        if self._reader is None:
            raise MMKGRecError(f"feedback database {self.path} is closed")
        return self._reader

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self.path == ":memory:":  # one connection for both
            with self._lock, self._read_lock:
                yield self._read
        else:
            with self._read_lock:
                yield self._read

    # ---- writes --------------------------------------------------------------------------------
    def add_feedback(self, user_id: str, item_id: str, value: float) -> int:
        """Store one feedback event durably (committed and fsynced on return); its row id."""
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO feedback(user_id, item_id, value, created) VALUES (?, ?, ?, ?)",
                (user_id, item_id, float(value), time.time()))
            self._writes += 1
            return int(cursor.lastrowid or 0)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (fsynced) on the write connection: writes of every
        other connection and process wait until it ends; ROLLBACK on an exception (unless the
        caller committed already)."""
        with self._lock:
            db = self._conn
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db  # the caller may commit early (db.commit()), e.g. to publish under a lock
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            finally:
                self._writes += 1
            if db.in_transaction:
                db.execute("COMMIT")

    def add_item(self, item_id: str, payload: dict, db: sqlite3.Connection | None = None) -> int:
        """Store a registered item's request (links, features, name) as JSON; its row id.
        ``db``: the connection of an open :meth:`transaction` (committed when it ends)."""
        row = (item_id, json.dumps(payload, separators=(",", ":")), time.time())
        sql = "INSERT INTO items(item_id, payload, created) VALUES (?, ?, ?)"
        if db is not None:
            return int(db.execute(sql, row).lastrowid or 0)
        with self._lock:
            self._writes += 1
            return int(self._conn.execute(sql, row).lastrowid or 0)

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
            self._writes += 1

    def quarantined(self) -> list[tuple[str, str]]:
        """Quarantined items (item_id, reason) in quarantine order."""
        with self._reading() as db:
            return db.execute("SELECT item_id, reason FROM quarantined_items ORDER BY id").fetchall()

    # ---- reads ---------------------------------------------------------------------------------
    def feedback(self) -> list[tuple[int, str, str, float, float]]:
        """Every feedback row (id, user_id, item_id, value, created) in write order."""
        with self._reading() as db:
            return db.execute(
                "SELECT id, user_id, item_id, value, created FROM feedback ORDER BY id").fetchall()

    def items(self) -> list[tuple[str, dict]]:
        """Registered items (item_id, payload) in registration order."""
        return [(item_id, payload) for _, item_id, payload in self.changes(0, None)[0]]

    def data_version(self) -> int:
        """A number that changes whenever any other connection (this process's writer or another
        process) has committed since the last call: ``PRAGMA data_version`` (a few microseconds,
        no table read)."""
        if self.path == ":memory:":
            return self._writes
        with self._read_lock:
            return int(self._read.execute("PRAGMA data_version").fetchone()[0])

    def changes(self, items_after: int, feedback_after: int | None
                ) -> tuple[list[tuple[int, str, dict]], list[tuple[int, str, str, float]]]:
        """Rows committed since: (items (id, item_id, payload) with id > ``items_after``,
        feedback (id, user_id, item_id, value) with id > ``feedback_after``; none when None),
        each in id order, read in one transaction (a consistent snapshot: an item a feedback
        row names is in the same snapshot)."""
        with self._reading() as db:
            own = not db.in_transaction  # ":memory:" inside a write transaction: already one
            if own:
                db.execute("BEGIN")
            try:
                items = db.execute("SELECT id, item_id, payload FROM items WHERE id > ? "
                                   "ORDER BY id", (items_after,)).fetchall()
                feedback = [] if feedback_after is None else db.execute(
                    "SELECT id, user_id, item_id, value FROM feedback WHERE id > ? ORDER BY id",
                    (feedback_after,)).fetchall()
            finally:
                if own:
                    db.execute("COMMIT")
        return [(i, item_id, json.loads(payload)) for i, item_id, payload in items], feedback

    def count(self) -> int:
        with self._reading() as db:
            return int(db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def close(self) -> None:
        with self._lock, self._read_lock:
            if self._reader is not None and self._reader is not self._db:
                self._reader.close()
            if self._db is not None:
                self._db.close()
            self._db = self._reader = None


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
