"""RecBole's reference rows: the pipe tables of recbole-splits/README.md."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmkgrec.data.registry import data_roots
from mmkgrec.errors import DataFormatError
from mmkgrec.experiments.spec import BenchmarkSpec

RECBOLE_DATASETS = ("lastfm-kgcn", "music-d")  # the datasets recbole-splits holds


def recbole_readme(spec: BenchmarkSpec) -> tuple[Path, dict[str, pd.DataFrame]] | None:
    """(path, tables by section) of recbole-splits/README.md, looked up at run time."""
    candidates = [Path(spec.presplit_root) / "README.md"] if spec.presplit_root else []
    candidates += [root / "recbole-splits" / "README.md" for root in data_roots(spec.source)]
    for path in candidates:
        if path.is_file():
            return path, markdown_tables(path)
    return None


def markdown_tables(path: str | Path) -> dict[str, pd.DataFrame]:
    """The pipe tables of a Markdown file, keyed by the last non-table line before each
    (heading marks stripped); cells as strings.

    Raises:
        DataFormatError: a table row has another number of cells than its header.
    """
    path = Path(path)
    tables: dict[str, pd.DataFrame] = {}
    section, header = "", None
    rows: list[list[str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines() + [""], 1):
        text = line.strip()
        if text.startswith("|"):
            cells = [c.strip() for c in text.strip("|").split("|")]
            if header is None:
                header, rows = cells, []
            elif all(set(c) <= set("-: ") for c in cells):
                continue  # the |---| line
            elif len(cells) != len(header):
                raise DataFormatError(path, f"table row has {len(cells)} cells, its header "
                                            f"{len(header)}", number)
            else:
                rows.append(cells)
            continue
        if header is not None:
            tables[section] = pd.DataFrame(rows, columns=header)
            header = None
        if text:
            section = text.lstrip("#").strip().strip("`*").strip()
    return tables


def recbole_rows(path: Path, tables: dict[str, pd.DataFrame], dataset: str) -> pd.DataFrame | None:
    """RecBole's rows for ``dataset`` with our column names (floats, NaN where not a number)."""
    table = tables.get(dataset)
    if table is None:
        return None
    names = {"model": "model", "s/epoch": "train_s_per_epoch", "s/test": "eval_s_test"}
    frame = table.rename(columns=lambda c: names.get(c.lower(), c.lower()))
    for column in frame.columns.drop("model", errors="ignore"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame
