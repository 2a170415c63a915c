"""Robust reading of delimited text files with file / line / problem errors.

Every loader goes through :func:`read_table`, so BOMs, CRLF line ends, latin-1 files, ragged rows,
empty files and non-numeric cells are handled (or reported) in one place.

Hostile input is refused rather than guessed at (see docs/data.md, "Field caps and strictness"):

- every field has a length cap (:data:`MAX_FIELD_CHARS` for ids and numbers,
  :data:`MAX_TEXT_CHARS` for free text, :data:`MAX_CELL_CHARS` for RecBole attribute and
  ``float_seq`` cells); a longer field is a :class:`~mmkgrec.errors.DataFormatError` naming
  file, line and column. Cells are kept as Python strings (``object`` arrays), never as
  fixed-width numpy strings of the longest cell;
- a data row that repeats the header (the column names, or the file's own first line) is an error;
- a line holding only spaces / tabs is an error (a blanked row would silently drop its item);
  empty lines are skipped;
- ``Column(minimum=...)`` refuses values below it (negative play counts, ratings).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mmkgrec.errors import DataFormatError

ColumnKind = Literal["str", "int", "float"]

MAX_FIELD_CHARS = 1024  # ids (users, items, entities, relations, tokens) and numbers
MAX_TEXT_CHARS = 131_072  # free text (names, URLs, tag values); the csv module's field limit
MAX_CELL_CHARS = 1 << 24  # a RecBole attribute or float_seq cell (2**20 values of <= 15 characters)


@dataclass(frozen=True)
class Column:
    """One expected column: its name (as in an optional header) and the kind of value it holds."""

    name: str
    kind: ColumnKind = "str"
    allow_empty: bool = False  # only for str columns (e.g. an optional URL)
    max_chars: int = MAX_FIELD_CHARS  # longest accepted field (before stripping)
    minimum: float | None = None  # only for numeric columns: smallest accepted value


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_text(path: str | Path, raw: bytes) -> tuple[str, str]:
    """Decode bytes as UTF-8 (BOM stripped), falling back to latin-1. Returns (text, encoding).

    NUL bytes are never valid in these text formats and are reported rather than guessed at.
    """
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise DataFormatError(path, "contains a NUL byte: this is not a text file", line)
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def split_lines(text: str) -> list[str]:
    """Split on LF, CRLF or CR only (not on the other characters str.splitlines treats as breaks)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_table(
    path: str | Path,
    columns: list[Column],
    *,
    sep: str = "\t",
    header: Literal["none", "required", "optional"] = "optional",
    extra_columns: bool = False,
) -> pd.DataFrame:
    """Read a delimited text file into a DataFrame with typed columns plus ``_line`` (1-based).

    Args:
        path: the file.
        columns: the expected leading columns, in order.
        sep: field separator.
        header: ``required`` -- the first line is a header (any names); ``optional`` -- it is a
            header when its cells equal the column names (case-insensitive); ``none`` -- no header.
        extra_columns: allow more cells than ``columns`` (they are dropped).

    Raises:
        DataFormatError: naming the file, the line and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    text, _ = decode_text(path, path.read_bytes())
    lines = split_lines(text)
    numbers = np.arange(1, len(lines) + 1)
    names = [c.name.strip().lower() for c in columns]
    header_cells: list[str] | None = None
    if header == "required" or (
        header == "optional"
        and lines
        and [c.strip().lower() for c in lines[0].split(sep)[: len(columns)]] == names
    ):
        header_cells = [c.strip().lower() for c in lines[0].split(sep)[: len(columns)]]
        lines, numbers = lines[1:], numbers[1:]
    body = pd.Series(lines, dtype=object)
    blank = (body.str.strip() == "").to_numpy(dtype=bool)
    spaces = blank & (body != "").to_numpy(dtype=bool)  # whitespace, not empty
    if spaces.any():
        i = int(np.argmax(spaces))
        raise DataFormatError(path, "the line holds only whitespace (a blanked row?); delete it "
                                    "or restore its fields", int(numbers[i]))
    body, numbers = body[~blank], numbers[~blank]
    if body.empty:
        raise DataFormatError(path, "no data rows (the file is empty or holds only a header)")

    n_cells = body.str.count(sep).to_numpy() + 1
    bad = n_cells < len(columns) if extra_columns else n_cells != len(columns)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataFormatError(
            path,
            f"expected {len(columns)} {'or more ' if extra_columns else ''}fields separated by "
            f"{sep!r}, found {n_cells[i]}: {_preview(body.iloc[i])}",
            int(numbers[i]),
        )
    cells = body.str.split(sep, n=len(columns), regex=False, expand=True).iloc[:, : len(columns)]
    for j, column in enumerate(columns):
        too_long = (cells.iloc[:, j].str.len() > column.max_chars).to_numpy(dtype=bool)
        if too_long.any():
            i = int(np.argmax(too_long))
            raise DataFormatError(
                path, f"field of {len(cells.iloc[i, j]):,} characters in column {column.name!r} "
                      f"exceeds the limit of {column.max_chars:,}: {_preview(cells.iloc[i, j])}",
                int(numbers[i]))
    stripped = [cells.iloc[:, j].str.strip().to_numpy(dtype=object) for j in range(len(columns))]
    _reject_header_rows(path, stripped, names, header_cells, numbers)
    frame = pd.DataFrame({"_line": numbers})
    for column, raw in zip(columns, stripped):
        frame[column.name] = _typed(path, column, raw, numbers)
    return frame


def _reject_header_rows(path: Path, stripped: list[np.ndarray], names: list[str],
                        header_cells: list[str] | None, numbers: np.ndarray) -> None:
    """A data row equal (case-insensitively) to the column names or to the file's header line."""
    first = pd.Series(stripped[0], dtype=object).str.lower()
    for want in (names, header_cells):
        if want is None or len(want) != len(names):
            continue
        candidate = (first == want[0]).to_numpy(dtype=bool)
        for j in range(1, len(want)):
            if not candidate.any():
                break
            candidate = candidate & (
                pd.Series(stripped[j], dtype=object).str.lower() == want[j]).to_numpy(dtype=bool)
        if candidate.any():
            i = int(np.argmax(candidate))
            row = "\t".join(str(col[i]) for col in stripped)
            raise DataFormatError(path, f"a header row among the data ({_preview(row)}): a header "
                                        f"line repeated, or files concatenated?", int(numbers[i]))


def _typed(path: Path, column: Column, raw: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    if column.kind == "str":
        empty = raw == ""
        if empty.any() and not column.allow_empty:
            i = int(np.argmax(empty))
            raise DataFormatError(path, f"empty value in column {column.name!r}", int(numbers[i]))
        return raw  # object array of str: never fixed-width
    values = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if column.kind == "int":
        bad |= values != np.round(values)
    if bad.any():
        i = int(np.argmax(bad))
        want = "an integer" if column.kind == "int" else "a finite number"
        raise DataFormatError(
            path, f"column {column.name!r} must be {want}, found {_preview(raw[i])}", int(numbers[i])
        )
    if column.minimum is not None and (values < column.minimum).any():
        i = int(np.argmax(values < column.minimum))
        raise DataFormatError(path, f"column {column.name!r} must be >= {column.minimum:g}, found "
                                    f"{_preview(raw[i])}", int(numbers[i]))
    return values.astype(np.int64) if column.kind == "int" else values


def preview(cell: object, limit: int = 60) -> str:
    """``repr(cell)`` cut to ``limit`` characters, for error messages."""
    text = repr(cell)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_preview = preview
