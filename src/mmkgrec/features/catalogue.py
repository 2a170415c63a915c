"""The catalogue a music service has: one row per item with its audio, lyrics, cover and tags.

A catalogue is a ``.csv`` (comma), ``.tsv`` (tab) or ``.parquet`` file with a header and the
column ``item_id`` plus any of:

=============== =================================================================================
``audio_path``  audio file (wav, flac, ogg, opus, mp3, aiff, au, caf; m4a / aac / wma need ffmpeg)
``lyrics``      lyrics text (lines separated by newlines; quote the cell in CSV)
``lyrics_path`` a ``.txt`` / ``.lrc`` file of lyrics (used when ``lyrics`` is empty or absent)
``image_path``  cover image (jpg, jpeg, png, webp, bmp, gif, tif, tiff)
``tags``        tags separated by ``|`` or ``;`` (both work, also mixed; whitespace is stripped,
                commas stay inside a tag: ``"hip hop|90s; chill, late night"`` is three tags)
``title``       track title
``artist``      artist name
=============== =================================================================================

Other columns are ignored (and listed in ``Catalogue.notes``); empty cells mean "no content".
Relative paths resolve against the catalogue file's folder. Only local paths are accepted: a
URL (``scheme://...``) is an error, nothing is ever fetched. Every problem raises
:class:`~mmkgrec.errors.DataFormatError` naming the catalogue file and the line (CSV / TSV:
the physical line, header = 1; Parquet: the 1-based row number stands for the line).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from mmkgrec.data.textio import decode_text
from mmkgrec.errors import DataFormatError, ExtractionError

COLUMNS = ("item_id", "audio_path", "lyrics", "lyrics_path", "image_path", "tags", "title", "artist")
PATH_COLUMNS = ("audio_path", "lyrics_path", "image_path")
CATALOGUE_EXTENSIONS = {".csv": ",", ".tsv": "\t", ".parquet": None, ".pq": None}
AUDIO_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif",
                              ".aiff", ".au", ".caf", ".w64", ".m4a", ".aac", ".wma", ".mp4"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
LYRICS_EXTENSIONS = frozenset({".txt", ".lrc"})
EXTENSIONS = {"audio_path": AUDIO_EXTENSIONS, "image_path": IMAGE_EXTENSIONS,
              "lyrics_path": LYRICS_EXTENSIONS}
TAG_SEPARATORS = re.compile(r"[|;]")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class CatalogueItem:
    """One catalogue row, with paths resolved. Empty cells are None / ()."""

    item_id: str
    line: int  # CSV/TSV: physical line of the row (header = 1); Parquet: 1-based row
    audio_path: Path | None = None
    image_path: Path | None = None
    lyrics: str | None = None
    lyrics_path: Path | None = None
    tags: tuple[str, ...] = ()
    title: str | None = None
    artist: str | None = None

    def has(self, column: str) -> bool:
        """Whether the item has content for ``column`` (``lyrics`` counts ``lyrics_path`` too)."""
        if column == "lyrics":
            return bool(self.lyrics) or self.lyrics_path is not None
        value = getattr(self, column)
        return bool(value) if not isinstance(value, Path) else True

    def lyrics_text(self) -> str:
        """The lyrics: the ``lyrics`` cell, else the ``lyrics_path`` file's text, else ""."""
        if self.lyrics:
            return self.lyrics
        if self.lyrics_path is None:
            return ""
        try:
            raw = self.lyrics_path.read_bytes()
        except OSError as error:
            raise ExtractionError(f"cannot read lyrics file: {error.strerror or error}") from None
        try:
            return decode_text(self.lyrics_path, raw)[0]
        except DataFormatError as error:
            raise ExtractionError(error.problem) from None


@dataclass
class Catalogue:
    """A validated catalogue: its file, folder and items in file order."""

    path: Path
    items: list[CatalogueItem]
    columns: tuple[str, ...]  # the known columns present in the file
    notes: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def ids(self) -> list[str]:
        return [item.item_id for item in self.items]

    def __len__(self) -> int:
        return len(self.items)


def read_catalogue(path: str | Path) -> Catalogue:
    """Read and validate a catalogue file (see the module docstring for its format).

    Raises:
        DataFormatError: unknown extension, missing file, no ``item_id`` column, an empty or
            repeated id, a URL or an unknown media extension in a path column, a ragged row.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CATALOGUE_EXTENSIONS:
        raise DataFormatError(path, f"unknown catalogue extension {path.suffix or '(none)'!r}; "
                                    f"use .csv, .tsv or .parquet")
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    delimiter = CATALOGUE_EXTENSIONS[suffix]
    header, rows = _parquet_rows(path) if delimiter is None else _text_rows(path, delimiter)
    header = [h.strip() for h in header]
    seen: dict[str, int] = {}
    for h in header:
        if h in seen and h:
            raise DataFormatError(path, f"column {h!r} appears twice in the header", 1)
        seen[h] = 1
    if "item_id" not in header:
        raise DataFormatError(path, f"no item_id column (columns: {', '.join(header) or 'none'})", 1)
    known = tuple(c for c in COLUMNS if c in header)
    extra = [h for h in header if h not in COLUMNS]
    position = {c: header.index(c) for c in known}

    items: list[CatalogueItem] = []
    first_line: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) > len(header):
            raise DataFormatError(path, f"row has {len(cells)} cells but the header has "
                                        f"{len(header)}", line)
        cell = {c: (cells[i].strip() if i < len(cells) and cells[i] is not None else "")
                for c, i in position.items()}
        item_id = cell["item_id"]
        if not item_id:
            raise DataFormatError(path, "empty item_id", line)
        if item_id.lower() == "item_id":  # the column's own name: a header row among the items
            raise DataFormatError(path, "a header row among the items (item_id 'item_id'): a "
                                        "header line repeated, or catalogues concatenated?", line)
        if item_id in first_line:
            raise DataFormatError(path, f"item_id {item_id!r} repeats the one on line "
                                        f"{first_line[item_id]}", line)
        first_line[item_id] = line
        resolved = {c: _resolve(path, line, c, cell.get(c, "")) for c in PATH_COLUMNS}
        tags = tuple(t.strip() for t in TAG_SEPARATORS.split(cell.get("tags", "")) if t.strip())
        items.append(CatalogueItem(
            item_id=item_id, line=line, tags=tags,
            audio_path=resolved["audio_path"], image_path=resolved["image_path"],
            lyrics_path=resolved["lyrics_path"], lyrics=cell.get("lyrics") or None,
            title=cell.get("title") or None, artist=cell.get("artist") or None,
        ))
    if not items:
        raise DataFormatError(path, "the catalogue has no items")
    notes = [f"ignored columns: {', '.join(extra)}"] if extra else []
    return Catalogue(path=path.resolve(), items=items, columns=known, notes=notes)


def _resolve(catalogue: Path, line: int, column: str, value: str) -> Path | None:
    if not value:
        return None
    if _URL.match(value):
        raise DataFormatError(catalogue, f"{column} {value!r} is a URL; only local file paths are "
                                         f"read (nothing is downloaded)", line)
    target = Path(value).expanduser()
    if not target.is_absolute():
        target = catalogue.resolve().parent / target
    allowed = EXTENSIONS[column]
    if target.suffix.lower() not in allowed:
        raise DataFormatError(catalogue, f"{column} {value!r} has an unknown extension "
                                         f"{target.suffix or '(none)'!r} (known: "
                                         f"{', '.join(sorted(allowed))})", line)
    return target


def _text_rows(path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line, cells)]) of a CSV / TSV file; quoted cells may span lines."""
    text, _ = decode_text(path, path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not cells or all(not c.strip() for c in cells):
                continue
            if header is None:
                header = cells
            else:
                rows.append((line, cells))
    except csv.Error as error:
        raise DataFormatError(path, f"malformed {'CSV' if delimiter == ',' else 'TSV'}: {error}",
                              reader.line_num) from None
    if header is None:
        raise DataFormatError(path, "empty file: expected a header with an item_id column", 1)
    return header, rows


def _parquet_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DataFormatError(path, f"not a readable Parquet file: {error}") from None
    header = list(table.column_names)
    columns = [table.column(c).to_pylist() for c in header]
    rows = [(i + 1, ["" if col[i] is None else str(col[i]) for col in columns])
            for i in range(table.num_rows)]
    return header, rows
