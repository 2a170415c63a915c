"""Robust reading of delimited text files with file / line / problem errors.

Every loader goes through :func:`read_table`, so BOMs, CRLF line ends, latin-1 files, ragged rows,
empty files and non-numeric cells are handled (or reported) in one place.
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


@dataclass(frozen=True)
class Column:
    """One expected column: its name (as in an optional header) and the kind of value it holds."""

    name: str
    kind: ColumnKind = "str"
    allow_empty: bool = False  # only for str columns (e.g. an optional URL)


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
    if header == "required" or (
        header == "optional"
        and lines
        and [c.strip().lower() for c in lines[0].split(sep)[: len(columns)]]
        == [c.name.lower() for c in columns]
    ):
        lines, numbers = lines[1:], numbers[1:]
    body = pd.Series(lines, dtype=object)
    keep = body.str.strip() != ""
    body, numbers = body[keep.to_numpy()], numbers[keep.to_numpy()]
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
    frame = pd.DataFrame({"_line": numbers})
    for j, column in enumerate(columns):
        raw = cells.iloc[:, j].str.strip().to_numpy(dtype=object)
        frame[column.name] = _typed(path, column, raw, numbers)
    return frame


def _typed(path: Path, column: Column, raw: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    if column.kind == "str":
        empty = raw == ""
        if empty.any() and not column.allow_empty:
            i = int(np.argmax(empty))
            raise DataFormatError(path, f"empty value in column {column.name!r}", int(numbers[i]))
        return raw.astype(str)
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
    return values.astype(np.int64) if column.kind == "int" else values


def _preview(cell: object, limit: int = 60) -> str:
    text = repr(cell)
    return text if len(text) <= limit else text[: limit - 3] + "..."
