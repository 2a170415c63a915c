"""RecBole atomic files (https://recbole.io/docs/user_guide/data/atomic_files.html), read and written.

A dataset directory ``DIR/`` holds tab-separated files that share one stem ``NAME`` (normally the
directory name). Each starts with a header of ``field:type`` cells, type one of ``token``,
``token_seq``, ``float``, ``float_seq`` (sequence values are space-separated). Fields are matched by
the name before the colon:

- ``NAME.inter`` (required): ``user_id:token item_id:token [rating:float] [timestamp:float]``.
  Without the value field (``rating`` unless told otherwise) every row has value 1.0. Other
  fields are ignored (and counted in ``notes``).
- ``NAME.kg``: ``head_id:token relation_id:token tail_id:token``.
- ``NAME.link``: ``item_id:token entity_id:token``; its rows give the item catalogue order.
- ``NAME.item``: ``item_id:token`` and more. ``float_seq`` columns are modalities (an empty cell:
  the item lacks that modality); ``token`` / ``token_seq`` / ``float`` columns are ``item_attrs``
  text, kept verbatim.
- ``NAME.mmkgrec.json`` (written by us, ignored by RecBole): dataset name, threshold, modality
  widths and item attribute columns -- what the atomic files cannot say -- and the interaction
  and triple counts (``counts``; optional when reading: older sidecars lack it), which catch a
  truncated file.

Items are those of ``.link`` in its order, then the unlinked items of ``.inter``, then those of
``.item``, by first appearance. An unlinked item's entity is ``item:<id>`` (its own id when there is
no ``.link`` file), as :func:`~mmkgrec.data.dataset.build_mmkg` does.

Files that load but are broken are refused (docs/data.md, "Field caps and strictness"): a
``.link`` without a ``.kg``; a ``.kg`` with triples and a header-only ``.link``, or no ``.link`` when
no item id occurs in the triples; a ``.link`` none of whose entities is in the KG; a relation
column holding entity ids (swapped columns); negative values; with a sidecar (files we wrote),
any of ``.kg`` / ``.link`` / ``.item`` missing or not listing every item.

Positive threshold: the ``threshold`` argument, else the sidecar's, else 0.0. RecBole counts every
interaction as a positive when no ``threshold`` option is set; 0.0 does the same for non-negative
values (play counts, stars, the 1.0 of rating-less files).

Writing puts every item in ``.link`` (catalogue order) and in ``.item``, and the triples and
interactions in stored order, so that ``read_recbole`` gives back an identical dataset. What the
files cannot hold is refused with :class:`~mmkgrec.errors.MMKGRecError` rather than altered: text
with a tab, line break, NUL or leading/trailing whitespace, empty ids, users without interactions,
entities outside every triple (the native format holds any dataset).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmkgrec.data.dataset import MMKG, build_mmkg, file_provenance
from mmkgrec.data.formats.checks import check_links_reach_kg, check_relation_column
from mmkgrec.data.textio import (
    MAX_CELL_CHARS,
    MAX_FIELD_CHARS,
    Column,
    decode_text,
    preview,
    read_table,
    split_lines,
)
from mmkgrec.errors import ConfigError, DataFormatError, DatasetNotFoundError, MMKGRecError

TYPES = ("token", "token_seq", "float", "float_seq")
SUFFIXES = (".inter", ".kg", ".link", ".item")
SIDECAR = ".mmkgrec.json"
SIDECAR_FORMAT, SIDECAR_VERSION = "mmkgrec-recbole", 1
RESERVED = ("item", "item_id", "_line")  # .item field names that cannot be attributes
MAX_WIDTH = 1 << 20  # widest modality a sidecar may declare
_UNWRITABLE = re.compile(r"[\t\n\r\x00]")


@dataclass(frozen=True)
class Field:
    """One header cell ``name:type``."""

    name: str
    type: str


# ---- reading ---------------------------------------------------------------------------------
def read_recbole(directory: str | Path, name: str | None = None, threshold: float | None = None,
                 *, value_field: str = "rating") -> MMKG:
    """Read RecBole atomic files into an MMKG (see the module docstring for the conventions).

    Args:
        directory: the dataset directory.
        name: the file stem ``NAME``; by default the one stem of the directory's atomic files.
        threshold: positives are ``value >= threshold``; default: the sidecar's, else 0.0.
        value_field: the ``.inter`` field holding the value (``rating``; e.g. ``count``).

    Returns:
        The dataset, named as in the sidecar, else by the stem.

    Raises:
        DataFormatError: a malformed file (naming it, the line and the problem).
        DatasetNotFoundError: no atomic files in ``directory``.
    """
    if value_field in ("user_id", "item_id", "timestamp"):
        raise ConfigError(f"value_field {value_field!r} names another field of .inter")
    directory = Path(directory)
    stem = name or find_stem(directory)
    paths = {suffix: directory / f"{stem}{suffix}" for suffix in SUFFIXES}
    if not paths[".inter"].is_file():
        raise DataFormatError(paths[".inter"], "file not found (a RecBole dataset needs NAME.inter)")
    sidecar_path = directory / f"{stem}{SIDECAR}"
    sidecar = read_sidecar(sidecar_path) if sidecar_path.is_file() else {}
    notes: list[str] = []
    if sidecar:  # written by write_recbole, which always writes all four files
        for suffix in (".kg", ".link", ".item"):
            if not paths[suffix].is_file():
                raise DataFormatError(paths[suffix], f"file not found, but {sidecar_path.name} says "
                                      f"mmkgrec wrote this dataset (with every atomic file): files "
                                      f"changed since written")

    # Interactions.
    fields, inter = read_atomic(paths[".inter"], {"user_id": "token", "item_id": "token"},
                                {value_field: "float", "timestamp": "float"}, allow_empty=False,
                                minimum={value_field: 0.0})
    interactions = pd.DataFrame({
        "user": inter["user_id"], "item": inter["item_id"],
        "value": inter[value_field] if value_field in inter else np.ones(len(inter)),
        "_line": inter["_line"],
    })
    if "timestamp" in inter:
        interactions["timestamp"] = inter["timestamp"]
    ignored = [f.name for f in fields if f.name not in ("user_id", "item_id", value_field, "timestamp")]
    if ignored:
        notes.append(f"{paths['.inter'].name}: ignored fields {', '.join(ignored)}")
    unread = sorted(p.name for p in directory.glob(f"{stem}.*") if p.is_file()
                    and p.name[len(stem):] not in (*SUFFIXES, SIDECAR))
    if unread:  # e.g. RecBole's .user (user features), .net (social links): not part of the MMKG
        notes.append(f"ignored atomic files: {', '.join(unread)} (mmkgrec reads .inter, .kg, "
                     f".link and .item)")

    # Triples, links, item table (each optional).
    links: pd.DataFrame | None = None
    triples: pd.DataFrame | None = None
    item_table: pd.DataFrame | None = None
    item_fields: list[Field] = []
    if paths[".kg"].is_file():
        _, table = read_atomic(
            paths[".kg"], {"head_id": "token", "relation_id": "token", "tail_id": "token"})
        triples = table[["head_id", "relation_id", "tail_id"]].rename(
            columns={"head_id": "head", "relation_id": "relation", "tail_id": "tail"})
    elif paths[".link"].is_file():
        raise DataFormatError(paths[".kg"], f"file not found, but {paths['.link'].name} links items "
                                            f"to KG entities (the KG would have 0 triples)")
    if paths[".link"].is_file():
        _, table = read_atomic(paths[".link"], {"item_id": "token", "entity_id": "token"})
        links = table[["item_id", "entity_id", "_line"]].rename(
            columns={"item_id": "item", "entity_id": "entity"})
        if links.empty and triples is not None and len(triples):
            raise DataFormatError(paths[".link"], f"no data rows, but {paths['.kg'].name} has "
                                  f"{len(triples):,} triples: every item would be cut off from the KG")
    if triples is not None:
        linked = None if links is None else links["entity"].to_numpy(dtype=object)
        check_relation_column(paths[".kg"], triples, linked)
        if linked is not None:
            check_links_reach_kg(paths[".kg"], paths[".link"], linked, triples)
    if paths[".item"].is_file():
        item_fields, item_table = read_atomic(paths[".item"], {"item_id": "token"})
        if any(f.name == "item" for f in item_fields):
            raise DataFormatError(paths[".item"], "field name 'item' is reserved", 1)
        repeated = item_table["item_id"].duplicated().to_numpy()
        if repeated.any():
            i = int(np.argmax(repeated))
            raise DataFormatError(paths[".item"], f"item {item_table['item_id'].iloc[i]!r} appears twice",
                                  int(item_table["_line"].iloc[i]))

    seen = [interactions["item"].to_numpy()]
    if item_table is not None:
        seen.append(item_table["item_id"].to_numpy())
    catalogue = _catalogue(links, np.concatenate(seen), paths[".link"], notes)
    if links is None and triples is not None and len(triples):
        ends = pd.Index(pd.unique(np.concatenate([triples["head"].to_numpy(dtype=object),
                                                   triples["tail"].to_numpy(dtype=object)])))
        in_kg = int(pd.Index(catalogue["item"].to_numpy(dtype=object)).isin(ends).sum())
        if in_kg == 0:
            raise DataFormatError(paths[".link"], f"file not found, and no item id occurs in the "
                                  f"{len(triples):,} triples of {paths['.kg'].name}: without it "
                                  f"every item is cut off from the KG")
        notes.append(f"no {paths['.link'].name}: items are their own KG entities; {in_kg} of "
                     f"{len(catalogue)} items occur in {paths['.kg'].name}")
    text_fields = [f.name for f in item_fields if f.type != "float_seq" and f.name != "item_id"]
    attr_columns = text_fields or None
    if sidecar:  # it tells "no attributes" from "zero attribute columns"
        stored = sidecar["item_attr_columns"]
        if (stored or None) != attr_columns:
            raise DataFormatError(sidecar_path, f"lists item attribute columns {stored} but "
                                  f"{paths['.item'].name} has {text_fields}: files changed since written")
        attr_columns = stored
    item_attrs = None
    if attr_columns is not None:
        table = item_table if item_table is not None else pd.DataFrame({"item_id": np.array([], str)})
        item_attrs = table[["item_id", *attr_columns]].rename(columns={"item_id": "item"})

    if threshold is None:
        threshold = sidecar.get("threshold")
    if threshold is None:
        threshold = 0.0
        notes.append("no threshold given or stored: every interaction with value >= 0 is a positive")
    dataset = build_mmkg(
        sidecar.get("name", stem), interactions, threshold=threshold, links=catalogue,
        triples=triples, keep_unlinked_items=True, item_attrs=item_attrs,
        source={"interactions": paths[".inter"], "links": paths[".link"], "kg": paths[".kg"],
                "items": paths[".item"]})
    if sidecar:  # write_recbole lists every item in .link and in .item
        for suffix, table in ((".link", links), (".item", item_table)):
            listed = 0 if table is None else len(table)
            if listed != dataset.n_items:
                declared = (f" ({sidecar_path.name} declares modalities "
                            f"{sorted(sidecar['modalities'])})" if suffix == ".item"
                            and sidecar["modalities"] else "")
                raise DataFormatError(paths[suffix], f"lists {listed:,} of the {dataset.n_items:,} "
                                      f"items{declared}, but mmkgrec writes every item to it: files "
                                      f"changed since written")
        counts = sidecar.get("counts", {})
        for suffix, key, found in ((".inter", "interactions", len(dataset.interactions)),
                                   (".kg", "triples", len(dataset.triples))):
            if key in counts and counts[key] != found:
                raise DataFormatError(paths[suffix], f"holds {found:,} {key} but {sidecar_path.name} "
                                      f"says {counts[key]:,}: files changed since written")
    elif links is not None and len(links) and triples is not None and not len(triples):
        notes.append(f"{paths['.kg'].name} holds no triples: the {len(links)} links of "
                     f"{paths['.link'].name} lead to an empty KG")
    dataset.notes += notes
    if sidecar:
        dataset.provenance.append(file_provenance(sidecar_path, "mmkgrec sidecar"))
    seq_fields = [f.name for f in item_fields if f.type == "float_seq"]
    dims = sidecar.get("modalities")
    if dims is not None and sorted(dims) != sorted(seq_fields):
        raise DataFormatError(sidecar_path, f"lists modalities {sorted(dims)} but {paths['.item'].name} "
                                            f"has {sorted(seq_fields)}: files changed since written")
    if seq_fields:
        _attach_modalities(dataset, item_table, seq_fields, dims or {}, paths[".item"])
    return dataset


def _catalogue(links: pd.DataFrame | None, seen_items: np.ndarray, link_path: Path,
               notes: list[str]) -> pd.DataFrame:
    """Every item with its entity: linked ones, then the others of ``seen_items`` by first appearance.

    An unlinked item's entity is ``item:<id>`` (its own id when there is no link file at all).
    """
    link_items = links["item"].to_numpy() if links is not None else np.array([], dtype=str)
    link_entities = links["entity"].to_numpy() if links is not None else np.array([], dtype=str)
    link_lines = links["_line"].to_numpy() if links is not None else np.array([], dtype=np.int64)
    candidates = pd.unique(pd.Series(seen_items, dtype=object))
    extra = candidates[~pd.Index(candidates).isin(link_items)].astype(str)  # [n_unlinked]
    extra_entities = np.char.add("item:", extra) if links is not None else extra
    clash = pd.Series(extra_entities, dtype=object).isin(link_entities).to_numpy()  # [n_unlinked]
    if clash.any():
        i = int(np.argmax(clash))
        j = int(np.argmax(link_entities == extra_entities[i]))
        raise DataFormatError(link_path, f"entity {extra_entities[i]!r} is also the entity of "
                              f"unlinked item {extra[i]!r} (an item IS an entity)", int(link_lines[j]))
    if links is not None and len(extra):
        notes.append(f"{len(extra)} items have no KG link; each became its own entity")
    return pd.DataFrame({
        "item": np.concatenate([link_items, extra]).astype(str),
        "entity": np.concatenate([link_entities, extra_entities]).astype(str),
        "_line": np.concatenate([link_lines, np.full(len(extra), -1)]).astype(np.int64),
    })


def _attach_modalities(dataset: MMKG, item_table: pd.DataFrame, fields: list[str],
                       dims: dict[str, int], path: Path) -> None:
    """Add each ``float_seq`` column of the item table as a modality (empty cell = absent)."""
    rows = pd.Index(dataset.items).get_indexer(item_table["item_id"])  # [n_rows] item ids
    for field in fields:
        parsed = parse_float_seq(path, field, item_table[field].to_numpy(),
                                 item_table["_line"].to_numpy(), dims.get(field))
        if parsed is None:
            dataset.notes.append(f"{path.name}: float_seq column {field!r} is empty; skipped")
            continue
        values, present = parsed  # [n_rows, d], [n_rows]
        matrix = np.zeros((dataset.n_items, values.shape[1]), dtype=np.float32)  # [n_items, d]
        mask = np.zeros(dataset.n_items, dtype=bool)  # [n_items]
        matrix[rows[present]] = values[present]
        mask[rows[present]] = True
        dataset.add_modality(field, matrix, mask)


def find_stem(directory: Path) -> str:
    """The one stem of the atomic files in ``directory``."""
    if not directory.is_dir():
        raise DatasetNotFoundError(f"{directory}: not a directory")
    stems = sorted({p.name[: -len(s)] for s in SUFFIXES for p in directory.glob(f"*{s}") if p.is_file()})
    if not stems:
        raise DatasetNotFoundError(f"{directory}: no RecBole atomic files (NAME.inter, ...)")
    if len(stems) > 1:
        raise DataFormatError(directory, f"atomic files of several datasets ({', '.join(stems)}); "
                                         f"pass name= to choose one")
    return stems[0]


def read_atomic(path: Path, required: dict[str, str], optional: dict[str, str] | None = None,
                allow_empty: bool = True, minimum: dict[str, float] | None = None,
                ) -> tuple[list[Field], pd.DataFrame]:
    """Read one atomic file: its header fields and a table with one column per field plus ``_line``.

    ``required`` / ``optional`` map field names to the type they must have (their cells are capped
    at MAX_FIELD_CHARS); ``minimum`` gives float fields a smallest value. Other fields are read as
    text (empty cells allowed, capped at MAX_CELL_CHARS). A file with only a header gives an
    empty table when ``allow_empty``.
    """
    text, _ = decode_text(path, path.read_bytes())
    lines = split_lines(text)
    fields = parse_header(path, lines[0], required, optional or {})
    kinds = {**required, **(optional or {})}
    columns = [Column(f.name, "float", minimum=(minimum or {}).get(f.name))
               if kinds.get(f.name) == "float"
               else Column(f.name, "str", allow_empty=f.name not in required,
                           max_chars=MAX_FIELD_CHARS if f.name in kinds else MAX_CELL_CHARS)
               for f in fields]
    if allow_empty and all(line == "" for line in lines[1:]):
        empty = {c.name: np.array([], dtype=str) for c in columns}
        return fields, pd.DataFrame({**empty, "_line": np.array([], dtype=np.int64)})
    return fields, read_table(path, columns, header="required")


def parse_header(path: Path, header: str, required: dict[str, str], optional: dict[str, str]) -> list[Field]:
    """Parse and check a ``name:type`` header line (errors point at line 1)."""
    fields = []
    for cell in header.split("\t"):
        if len(cell) > MAX_FIELD_CHARS:
            raise DataFormatError(path, f"header cell of {len(cell):,} characters exceeds the limit "
                                        f"of {MAX_FIELD_CHARS:,}: {preview(cell)}", 1)
        parts = cell.strip().split(":")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise DataFormatError(path, f"malformed header cell {preview(cell.strip())} "
                                        f"(expected name:type)", 1)
        field = Field(parts[0].strip(), parts[1].strip())
        if field.type not in TYPES:
            raise DataFormatError(path, f"field {field.name!r} has unknown type {field.type!r} "
                                        f"(expected one of {', '.join(TYPES)})", 1)
        fields.append(field)
    names = [f.name for f in fields]
    repeated = sorted({n for n in names if names.count(n) > 1})  # a handful of header cells
    if repeated:
        raise DataFormatError(path, f"field {repeated[0]!r} appears twice in the header", 1)
    if "_line" in names:
        raise DataFormatError(path, "field name '_line' is reserved", 1)
    for field in fields:
        want = required.get(field.name) or optional.get(field.name)
        if want and field.type != want:
            raise DataFormatError(path, f"field {field.name!r} must have type {want}, not {field.type}", 1)
    missing = [n for n in required if n not in names]
    if missing:
        raise DataFormatError(path, f"missing required field {missing[0]}:{required[missing[0]]} "
                                    f"(header: {header.strip()!r})", 1)
    return fields


def parse_float_seq(path: Path, field: str, cells: np.ndarray, lines: np.ndarray,
                    dim: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Parse a ``float_seq`` column: ``[n_rows, d]`` float32 values and a ``[n_rows]`` presence mask.

    An empty cell is an absent row; present rows must all hold ``dim`` (default: the first present
    row's count) finite values. Returns None when every cell is empty and ``dim`` is unknown.
    """
    tokens = pd.Series(cells, dtype=object).str.split()  # [n_rows] lists of str
    widths = tokens.str.len().to_numpy()
    present = widths > 0
    if not present.any() and dim is None:
        return None
    width = int(dim if dim is not None else widths[present][0])
    bad = present & (widths != width)
    if bad.any():
        i = int(np.argmax(bad))
        expected = "the sidecar says" if dim is not None else "its first row holds"
        raise DataFormatError(path, f"column {field!r} holds {widths[i]} values but {expected} {width}",
                              int(lines[i]))
    flat = tokens[present].explode()  # [n_present * width]
    values = pd.to_numeric(flat, errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(over="ignore"):
        values = values.astype(np.float32).reshape(-1, width)  # [n_present, width]
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(present)[np.argmax(~finite)])
        raise DataFormatError(path, f"column {field!r} must hold finite float32 numbers, found "
                              f"{cells[i][:60]!r}", int(lines[i]))
    matrix = np.zeros((len(cells), width), dtype=np.float32)  # [n_rows, width]
    matrix[present] = values
    return matrix, present


def read_sidecar(path: Path) -> dict:
    """Read and check ``NAME.mmkgrec.json``."""
    text, _ = decode_text(path, path.read_bytes())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(path, f"invalid JSON: {error.msg}", error.lineno) from None
    except RecursionError:
        raise DataFormatError(path, "invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise DataFormatError(path, "expected a JSON object", 1)
    version = data.get("version")
    if data.get("format") != SIDECAR_FORMAT or type(version) is not int or version != SIDECAR_VERSION:
        raise DataFormatError(path, f"not a {SIDECAR_FORMAT} sidecar of version {SIDECAR_VERSION}")
    checks = {
        "name": lambda v: isinstance(v, str) and v != "",
        "threshold": lambda v: (isinstance(v, float) and v == v) or (type(v) is int and abs(v) < 2**53),
        "modalities": lambda v: isinstance(v, dict) and all(
            type(d) is int and 0 <= d <= MAX_WIDTH for d in v.values()),
        "item_attr_columns": lambda v: v is None or (
            isinstance(v, list) and all(isinstance(c, str) for c in v)),
    }
    for key, ok in checks.items():
        if key not in data or not ok(data[key]):
            raise DataFormatError(path, f"missing or invalid {key!r}")
    counts = data.get("counts", {})  # optional: sidecars before it lack it
    if not (isinstance(counts, dict) and set(counts) <= {"interactions", "triples"}
            and all(type(n) is int and n >= 0 for n in counts.values())):
        raise DataFormatError(path, "invalid 'counts' (expected non-negative integer interactions "
                                    "and triples)")
    return data


# ---- writing ---------------------------------------------------------------------------------
def write_recbole(dataset: MMKG, directory: str | Path, name: str | None = None) -> Path:
    """Write ``dataset`` as RecBole atomic files that :func:`read_recbole` reads back identically.

    Args:
        dataset: the dataset.
        directory: created if needed; files of the same stem are overwritten.
        name: the file stem; by default the directory name, as RecBole expects.

    Returns:
        The directory.

    Raises:
        MMKGRecError: the dataset holds something the files cannot represent (see module docstring).
    """
    dataset.validate()
    directory = Path(directory)
    stem = name or directory.name
    _check_representable(dataset)
    users, items, entities, relations = (np.asarray(a).astype(str) for a in (
        dataset.users, dataset.items, dataset.entities, dataset.relations))
    for what, ids in (("user", users), ("item", items), ("entity", entities), ("relation", relations)):
        _check_text(ids, f"{what} id", ids, allow_empty=False)

    inter = dataset.interactions
    inter_table = pd.DataFrame({
        "user_id:token": users[inter["user"].to_numpy()],
        "item_id:token": items[inter["item"].to_numpy()],
        "rating:float": inter["value"].to_numpy(np.float64),
    })
    if dataset.has_timestamps:
        inter_table["timestamp:float"] = inter["timestamp"].to_numpy(np.float64)
    t = dataset.triples  # [n_triples, 3]
    kg_table = pd.DataFrame({"head_id:token": entities[t[:, 0]], "relation_id:token": relations[t[:, 1]],
                             "tail_id:token": entities[t[:, 2]]})
    link_table = pd.DataFrame({"item_id:token": items, "entity_id:token": entities[: dataset.n_items]})

    item_table = pd.DataFrame({"item_id:token": items})
    attrs = dataset.item_attrs
    attr_columns = None if attrs is None else list(attrs.columns)
    names = (attr_columns or []) + list(dataset.modalities)
    for column in names:
        if (not isinstance(column, str) or column in RESERVED or not column or ":" in column
                or _UNWRITABLE.search(column) or column != column.strip() or names.count(column) > 1):
            raise MMKGRecError(f"item attribute / modality name {column!r} cannot be a RecBole field name")
    for column in attr_columns or []:
        assert attrs is not None  # attr_columns come from it
        text = attrs[column].astype(str).to_numpy()
        _check_text(text, f"item_attrs column {column!r} of item", items, allow_empty=True)
        item_table[f"{column}:token"] = text
    for modality, matrix in dataset.modalities.items():
        mask = dataset.modality_masks[modality]
        if matrix.shape[1] == 0:
            raise MMKGRecError(f"modality {modality!r} has width 0: not representable as float_seq")
        item_table[f"{modality}:float_seq"] = format_float_seq(matrix, mask)

    directory.mkdir(parents=True, exist_ok=True)
    for suffix, table in ((".inter", inter_table), (".kg", kg_table), (".link", link_table),
                          (".item", item_table)):
        write_tsv(table, directory / f"{stem}{suffix}")
    sidecar = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "name": dataset.name,
               "threshold": float(dataset.threshold), "modalities": dataset.modality_dims(),
               "item_attr_columns": attr_columns,
               "counts": {"interactions": len(inter_table), "triples": len(kg_table)}}
    (directory / f"{stem}{SIDECAR}").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return directory


def format_float_seq(matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[n, d]`` float32 rows as space-separated shortest-repr text (exact); absent rows empty."""
    cells = np.full(len(matrix), "", dtype=object)  # [n]
    if mask.any():
        text = pd.DataFrame(matrix[mask]).to_csv(sep=" ", header=False, index=False, lineterminator="\n")
        cells[mask] = text.split("\n")[:-1]
    return cells


def write_tsv(table: pd.DataFrame, path: Path) -> None:
    """Write a table (floats in shortest round-trip form) as UTF-8 TSV with its header."""
    try:
        table.to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE, lineterminator="\n",
                     encoding="utf-8")
    except (UnicodeEncodeError, csv.Error) as error:
        raise MMKGRecError(f"{path}: cannot be written as RecBole atomic file: {error}") from error


def _check_text(values: np.ndarray, what: str, labels: np.ndarray, allow_empty: bool) -> None:
    """Refuse text a tab-separated cell would alter: tab, CR/LF, NUL, edge whitespace, emptiness."""
    text = pd.Series(values, dtype=object)
    bad = text.str.contains(_UNWRITABLE) | (text != text.str.strip())
    if not allow_empty:
        bad = bad | (text == "")
    bad = bad.to_numpy(dtype=bool)
    if bad.any():
        i = int(np.argmax(bad))
        raise MMKGRecError(
            f"{what} {str(labels[i])!r}: {str(values[i])!r} cannot be written to a RecBole atomic "
            f"file (tabs, line breaks, NUL, leading/trailing whitespace"
            f"{'' if allow_empty else ', empty ids'} "
            f"are not representable); write the native format instead")


def _check_representable(dataset: MMKG) -> None:
    """The id orders read_recbole rebuilds (first appearance) must be those of ``dataset``, and
    RecBole's files have no place for user-side KG facts or user-user links."""
    if len(dataset.user_triples) or len(dataset.user_relations):
        raise MMKGRecError(
            f"dataset {dataset.name!r}: {len(dataset.user_triples)} user-side KG facts have no "
            f"place in RecBole's atomic files (write the native format)")
    if len(dataset.user_links):
        raise MMKGRecError(
            f"dataset {dataset.name!r}: {len(dataset.user_links)} user-user links have no place in "
            f"RecBole's atomic files (write the native format)")
    users_seen = pd.unique(dataset.interactions["user"].to_numpy())
    if not np.array_equal(users_seen, np.arange(dataset.n_users)):
        raise MMKGRecError(
            f"dataset {dataset.name!r}: RecBole files number users by first appearance in .inter, and "
            f"users must each have an interaction; this dataset differs (write the native format)")
    ends = dataset.triples[:, [0, 2]].ravel()  # [2 * n_triples] head, tail, head, tail, ...
    if not np.array_equal(pd.unique(ends[ends >= dataset.n_items]),
                          np.arange(dataset.n_items, dataset.n_entities)):
        raise MMKGRecError(
            f"dataset {dataset.name!r}: non-item entities must appear in the triples, numbered by "
            f"first appearance, to be written to RecBole files (write the native format)")
    if not np.array_equal(pd.unique(dataset.triples[:, 1]), np.arange(dataset.n_relations)):
        raise MMKGRecError(
            f"dataset {dataset.name!r}: relations must appear in the triples, numbered by first "
            f"appearance, to be written to RecBole files (write the native format)")
