"""The MKGCN paper's raw format (QuXiaolong0812/mkgcn, data/music-d).

Files: ``userID2itemID4ratings.tsv`` (userID, itemID, rating = play count; header),
``itemID2entityID.txt`` (itemID, entityID; header), ``kg.txt`` (head, relation, tail; header)
and, optionally, ``modals/modal_{k}.tsv`` (``itemID f1 f2 ...``; one file per modality, each with
its own width; items absent from a file have that modality missing). Positives are plays >= 5.

Strictness as for KGCN (:mod:`mmkgrec.data.formats.kgcn`): integer entity ids, plays >= 0, no
swapped KG columns; modality files refuse whitespace-only lines and over-long fields too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmkgrec.data.dataset import MMKG, build_mmkg, file_provenance
from mmkgrec.data.formats.checks import require_entity_ids
from mmkgrec.data.formats.kgcn import check_kg, read_kg
from mmkgrec.data.textio import (
    MAX_FIELD_CHARS,
    Column,
    decode_text,
    preview,
    read_table,
    split_lines,
)
from mmkgrec.errors import DataFormatError

FILES = ("userID2itemID4ratings.tsv", "itemID2entityID.txt", "kg.txt")
THRESHOLD = 5.0


def read_mkgcn(directory: str | Path, name: str = "music-d", threshold: float = THRESHOLD) -> MMKG:
    """Load a directory in the MKGCN raw format, with its ``modals/`` files when present."""
    directory = Path(directory)
    ratings_path, links_path, kg_path = (directory / f for f in FILES)
    ratings = read_table(ratings_path, [Column("userID"), Column("itemID"),
                                        Column("rating", "float", minimum=0)])
    links = read_table(links_path, [Column("itemID"), Column("entityID")])
    require_entity_ids(links_path, links, ["entityID"], "MKGCN")
    triples = read_kg(kg_path, "MKGCN")
    check_kg(kg_path, triples, links_path, links["entityID"])
    dataset = build_mmkg(
        name,
        ratings.rename(columns={"userID": "user", "itemID": "item", "rating": "value"}),
        threshold=threshold,
        links=links.rename(columns={"itemID": "item", "entityID": "entity"}),
        triples=triples,
        keep_unlinked_items=False,
        source={"interactions": ratings_path, "links": links_path, "kg": kg_path},
    )
    modal_dir = directory / "modals"
    for path in sorted(modal_dir.glob("modal_*.tsv"), key=lambda p: p.stem) if modal_dir.is_dir() else []:
        matrix, mask = read_modality_file(path, dataset.items)
        dataset.add_modality(path.stem, matrix, mask)
        dataset.provenance.append(file_provenance(path, f"modality {path.stem}"))
    return dataset


def read_modality_file(path: str | Path, items: np.ndarray, sep: str = "\t") -> tuple[np.ndarray, np.ndarray]:
    """Read ``item_id f1 ... fd`` rows into a ``[n_items, d]`` float32 matrix and a presence mask.

    Every row must have the same width; values must be finite; item ids must be known and unique.
    A first line whose first cell is not a known item id and whose other cells are not numbers is
    taken as a header.
    """
    path = Path(path)
    text, _ = decode_text(path, path.read_bytes()) if path.is_file() else (None, None)
    if text is None:
        raise DataFormatError(path, "file not found")
    lines = split_lines(text)
    numbers = np.arange(1, len(lines) + 1)
    body = pd.Series(lines, dtype=object)
    keep = (body.str.strip() != "").to_numpy()
    spaces = ~keep & (body != "").to_numpy(dtype=bool)
    if spaces.any():
        i = int(np.argmax(spaces))
        raise DataFormatError(path, "the line holds only whitespace (a blanked row?); delete it "
                                    "or restore its fields", int(numbers[i]))
    body, numbers = body[keep].reset_index(drop=True), numbers[keep]
    if body.empty:
        raise DataFormatError(path, "no data rows")
    cells = body.str.split(sep, regex=False)
    longest = cells.map(lambda row: max(map(len, row))).to_numpy()  # [n_rows] longest cell
    if (longest > MAX_FIELD_CHARS).any():
        i = int(np.argmax(longest > MAX_FIELD_CHARS))
        cell = max(cells.iloc[i], key=len)
        raise DataFormatError(path, f"field of {len(cell):,} characters exceeds the limit of "
                                    f"{MAX_FIELD_CHARS:,}: {preview(cell)}", int(numbers[i]))
    first = cells.iloc[0]
    not_numbers = pd.to_numeric(pd.Series(first[1:]), errors="coerce").isna().any()
    if first[0].strip() not in set(items) and not_numbers:
        cells, numbers = cells.iloc[1:].reset_index(drop=True), numbers[1:]
        if cells.empty:
            raise DataFormatError(path, "no data rows (only a header)")
    widths = cells.str.len().to_numpy() - 1
    if widths[0] < 1:
        raise DataFormatError(path, "a row needs an item id and at least one feature", int(numbers[0]))
    bad = widths != widths[0]
    if bad.any():
        i = int(np.argmax(bad))
        raise DataFormatError(
            path, f"row has {widths[i]} features but the first row has {widths[0]}", int(numbers[i]))
    ids = cells.str[0].str.strip().to_numpy(dtype=object)  # object: never fixed-width
    values = pd.DataFrame(cells.str[1:].tolist()).apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    with np.errstate(over="ignore"):
        values = values.astype(np.float32)  # values beyond float32 become inf and are rejected
    bad_rows = ~np.isfinite(values).all(axis=1)
    if bad_rows.any():
        i = int(np.argmax(bad_rows))
        raise DataFormatError(path, "feature values must be finite numbers (found NaN, inf or text)",
                              int(numbers[i]))
    rows = pd.Index(items).get_indexer(pd.Index(ids))
    if (rows < 0).any():
        i = int(np.argmax(rows < 0))
        raise DataFormatError(path, f"unknown item id {preview(str(ids[i]))}", int(numbers[i]))
    duplicated = pd.Series(rows).duplicated().to_numpy()
    if duplicated.any():
        i = int(np.argmax(duplicated))
        raise DataFormatError(path, f"item {str(ids[i])!r} appears twice", int(numbers[i]))
    matrix = np.zeros((len(items), widths[0]), dtype=np.float32)
    mask = np.zeros(len(items), dtype=bool)
    matrix[rows] = values
    mask[rows] = True
    return matrix, mask
