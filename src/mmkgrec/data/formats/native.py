"""mmkgrec's native format: a directory of Parquet files plus a ``dataset.json`` manifest.

It holds any valid MMKG exactly, with its provenance, notes and meta. Files (pyarrow, one row per id
in id order):

- ``users.parquet``, ``items.parquet``, ``entities.parquet``: ``id`` string (original ids).
- ``relations.parquet``: ``name`` string.
- ``interactions.parquet``: the interactions table as stored (``user`` int64, ``item`` int64,
  ``value`` float64[, ``timestamp`` float64]).
- ``triples.parquet``: ``head``, ``relation``, ``tail`` int64.
- ``user_triples.parquet`` (only with user-side facts): ``user``, ``relation``, ``entity`` int64;
  the relation names are the manifest's ``user_relations``.
- ``user_links.parquet`` (only with user-user links): ``user``, ``other`` int64, ``user < other``.
- ``item_attrs.parquet`` (only with item attributes): one string column per attribute.
- ``modality_<k>.parquet`` for the k-th modality of the manifest: ``vector``
  fixed_size_list<float32>[d] (left out when d = 0) and ``present`` bool.

``dataset.json``::

    {"format": "mmkgrec-native", "schema_version": 1, "name", "counts": {users, items, entities,
     relations, interactions, triples}, "threshold", "modalities": {name: d}, "has_timestamps",
     "item_attr_columns": [..] or null, "user_relations": [..] (optional), "provenance", "notes", "meta",
     "files": {file: sha256}, "fingerprint": MMKG.fingerprint()}

Reading checks, in order: the manifest's schema, each file's sha256, each file's columns, types and
row count against ``counts`` / ``modalities``, the dataset invariants, then the fingerprint. Every
failure is a :class:`~mmkgrec.errors.DataFormatError` naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from mmkgrec import paths
from mmkgrec.data.dataset import MMKG
from mmkgrec.data.formats.modality import is_vector_type, modality_table, table_vectors
from mmkgrec.data.textio import sha256_of
from mmkgrec.errors import DataFormatError, MMKGRecError

MANIFEST = "dataset.json"
FORMAT = "mmkgrec-native"
SCHEMA_VERSION = 1
MMAP_ENV = "MMKGREC_MMAP"  # read_native's default for mmap
MMAP_DIR = ".mmap"  # the .npy cache of memory-mapped loading, inside the dataset folder
MMAP_STAMP = "cache.json"
TRIPLE_COLUMNS = ("head", "relation", "tail")
USER_TRIPLE_COLUMNS = ("user", "relation", "entity")
USER_LINK_COLUMNS = ("user", "other")


class Counts(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "60" and true are not counts
    users: NonNegativeInt
    items: NonNegativeInt
    entities: NonNegativeInt
    relations: NonNegativeInt
    interactions: NonNegativeInt
    triples: NonNegativeInt
    user_triples: NonNegativeInt = 0  # absent in manifests written before user-side facts
    user_links: NonNegativeInt = 0  # absent in manifests written before user-user links


class Manifest(BaseModel):
    """The schema of ``dataset.json`` (version 1). Strict types: JSON's own types only (an
    integer is a float; no string for a number, no boolean for an integer)."""

    model_config = ConfigDict(strict=True)
    format: Literal["mmkgrec-native"]
    schema_version: Literal[1]
    name: str
    counts: Counts
    threshold: float
    modalities: dict[str, NonNegativeInt]
    has_timestamps: bool
    item_attr_columns: list[str] | None
    user_relations: list[str] = []
    provenance: list[dict]
    notes: list[str]
    meta: dict[str, int | float | str] = Field(strict=False)  # free-form counts, as written
    files: dict[str, str]
    fingerprint: str


# ---- writing ---------------------------------------------------------------------------------
def write_native(dataset: MMKG, directory: str | Path) -> Path:
    """Write ``dataset`` in the native format (see the module docstring).

    Args:
        dataset: a valid dataset.
        directory: created if needed; an earlier native dataset there is replaced.

    Returns:
        The directory.
    """
    dataset.validate()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # a half-written directory must not read as valid
    t = dataset.triples  # [n_triples, 3]
    tables = {
        "users.parquet": pa.table({"id": _strings(dataset.users)}),
        "items.parquet": pa.table({"id": _strings(dataset.items)}),
        "entities.parquet": pa.table({"id": _strings(dataset.entities)}),
        "relations.parquet": pa.table({"name": _strings(dataset.relations)}),
        "interactions.parquet": pa.Table.from_pandas(dataset.interactions, preserve_index=False),
        "triples.parquet": _int64_table(t, TRIPLE_COLUMNS),
    }
    if len(dataset.user_triples):
        tables["user_triples.parquet"] = _int64_table(dataset.user_triples, USER_TRIPLE_COLUMNS)
    if len(dataset.user_links):
        tables["user_links.parquet"] = _int64_table(dataset.user_links, USER_LINK_COLUMNS)
    attrs = dataset.item_attrs
    if attrs is not None and len(attrs.columns):
        if not all(isinstance(c, str) for c in attrs.columns):
            raise MMKGRecError(f"item_attrs column names must be strings, got {list(attrs.columns)}")
        tables["item_attrs.parquet"] = pa.table({c: _strings(attrs[c].astype(str).to_numpy())
                                                 for c in attrs.columns})
    for k, (name, matrix) in enumerate(dataset.modalities.items()):
        tables[f"modality_{k}.parquet"] = modality_table(matrix, dataset.modality_masks[name])
    for file, table in tables.items():
        pq.write_table(table, directory / file)

    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "name": dataset.name,
        "counts": _counts(dataset), "threshold": float(dataset.threshold),
        "modalities": dataset.modality_dims(), "has_timestamps": dataset.has_timestamps,
        "item_attr_columns": None if attrs is None else list(attrs.columns),
        "user_relations": [str(name) for name in dataset.user_relations],
        "provenance": dataset.provenance, "notes": dataset.notes, "meta": dataset.meta,
        "files": {file: sha256_of(directory / file) for file in tables},
        "fingerprint": dataset.fingerprint(),
    }
    try:
        text = json.dumps(manifest, indent=2, default=_json_scalar)
    except (TypeError, ValueError) as error:
        raise MMKGRecError(f"dataset {dataset.name!r}: provenance / notes / meta are not JSON: "
                           f"{error}") from None
    (directory / MANIFEST).write_text(text + "\n", encoding="utf-8")
    return directory


def _int64_table(rows: np.ndarray, columns: tuple[str, ...]) -> pa.Table:
    """[n, len(columns)] int64 rows as one int64 column each."""
    return pa.table({c: np.ascontiguousarray(rows[:, j], dtype=np.int64)
                     for j, c in enumerate(columns)})


def _int64_rows(table: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    """The inverse of :func:`_int64_table`: [n, len(columns)] int64."""
    return np.column_stack([_column(table, c) for c in columns]).astype(
        np.int64, copy=False).reshape(-1, len(columns))


def _strings(values: np.ndarray) -> pa.Array:
    values = np.asarray(values)
    if values.dtype.kind != "U":  # object text: no fixed-width copy of the longest cell
        values = pd.Series(values, dtype=object).astype(str).to_numpy(dtype=object)
    return pa.array(values, type=pa.string())


def _json_scalar(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON serialisable")


def _counts(dataset: MMKG) -> dict[str, int]:
    return {"users": dataset.n_users, "items": dataset.n_items, "entities": dataset.n_entities,
            "relations": dataset.n_relations, "interactions": len(dataset.interactions),
            "triples": len(dataset.triples), "user_triples": len(dataset.user_triples),
            "user_links": len(dataset.user_links)}


# ---- reading ---------------------------------------------------------------------------------
def read_native(directory: str | Path, mmap: bool | None = None, *,
                cache_dir: str | Path | None = None) -> MMKG:
    """Read a native-format directory, checking it against its manifest.

    Args:
        directory: a directory written by :func:`write_native`.
        mmap: memory-mapped loading (default: ``$MMKGREC_MMAP`` set to anything but ``0``).
            The Parquet files are opened memory-mapped, and the bulk numeric arrays
            (interaction columns, triples, modality matrices) are read-only ``numpy.memmap``
            views of an uncompressed ``.npy`` cache: pages load on first touch
            and are shared, through the OS page cache, by every process that maps them (DDP
            ranks, data-loader workers) instead of being decoded into each one's memory. The
            cache is written once, atomically, to ``<directory>/.mmap/`` (or ``cache_dir``; a
            folder under ``$MMKGREC_CACHE`` when the dataset folder is read-only) and rebuilt
            whenever the dataset's files change.
        cache_dir: where the ``.npy`` cache goes instead of ``<directory>/.mmap``.

    Returns:
        The dataset, identical to the one written (``equals``), with provenance, notes and meta
        (with ``mmap``, the same fingerprint; its arrays are read-only).

    Raises:
        DataFormatError: an unknown schema version, a missing / changed / malformed file (naming it).
    """
    if mmap is None:
        mmap = os.environ.get(MMAP_ENV, "0") not in ("", "0")
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    m = read_manifest(manifest_path)
    for file, digest in m.files.items():
        path = directory / file
        if not path.is_file():
            raise DataFormatError(path, "file not found (listed in dataset.json)")
        if sha256_of(path) != digest:
            raise DataFormatError(path, "files changed since written: sha256 differs from dataset.json")
    counts = m.counts

    def ids(file: str, column: str, rows: int) -> np.ndarray:
        table = _read_parquet(directory / file, {column: pa.types.is_string}, rows, mmap)
        return table.column(column).to_numpy(zero_copy_only=False).astype(str)

    users = ids("users.parquet", "id", counts.users)
    items = ids("items.parquet", "id", counts.items)
    entities = ids("entities.parquet", "id", counts.entities)
    relations = ids("relations.parquet", "name", counts.relations)
    if mmap:
        arrays = _mapped_arrays(directory, m, cache_dir)
    else:  # eager: private, writable arrays
        arrays = {key: a if a.flags.writeable else a.copy()
                  for key, a in _read_arrays(directory, m, memory_map=False).items()}
    interactions = pd.DataFrame({c[len("interactions."):]: a for c, a in arrays.items()
                                 if c.startswith("interactions.")}, copy=False)
    triples = arrays["triples"]  # [n_triples, 3]
    modalities = {name: arrays[f"modality.{k}"] for k, name in enumerate(m.modalities)}
    # Masks are tiny and models wrap them as tensors without copying: keep them private and
    # writable (a tensor over a read-only map would fault when a checkpoint is loaded into it).
    masks = {name: np.array(arrays[f"present.{k}"]) for k, name in enumerate(m.modalities)}

    item_attrs = None
    if m.item_attr_columns is not None:
        item_attrs = pd.DataFrame(index=pd.RangeIndex(counts.items))
        if m.item_attr_columns:
            table = _read_parquet(directory / "item_attrs.parquet",
                                  dict.fromkeys(m.item_attr_columns, pa.types.is_string),
                                  counts.items, mmap)
            for column in m.item_attr_columns:
                item_attrs[column] = table.column(column).to_numpy(zero_copy_only=False)
            item_attrs = item_attrs.astype(str)

    def optional_rows(file: str, columns: tuple[str, ...], count: int) -> np.ndarray:
        """[count, len(columns)] int64 from ``file``, which only exists when count > 0."""
        if not count:
            return np.zeros((0, len(columns)), dtype=np.int64)
        table = _read_parquet(directory / file, dict.fromkeys(columns, lambda t: t == pa.int64()),
                              count, mmap)
        return _int64_rows(table, columns)

    user_triples = optional_rows("user_triples.parquet", USER_TRIPLE_COLUMNS, counts.user_triples)
    user_links = optional_rows("user_links.parquet", USER_LINK_COLUMNS, counts.user_links)

    dataset = MMKG(
        name=m.name, users=users, items=items, entities=entities, relations=relations,
        interactions=interactions, threshold=m.threshold, triples=triples, modalities=modalities,
        modality_masks=masks, item_attrs=item_attrs, provenance=m.provenance, notes=m.notes,
        meta=m.meta, user_relations=np.array(m.user_relations, dtype=str),
        user_triples=user_triples, user_links=user_links,
    )
    try:
        dataset.validate()
    except MMKGRecError as error:
        raise DataFormatError(directory, str(error)) from None
    if dataset.fingerprint() != m.fingerprint:
        raise DataFormatError(manifest_path, "files changed since written: the data's fingerprint "
                                             "differs from the one recorded")
    return dataset


def _read_arrays(directory: Path, m: Manifest, memory_map: bool) -> dict[str, np.ndarray]:
    """The bulk numeric arrays, decoded from Parquet and checked against the manifest.

    Returns:
        ``interactions.<column>`` [n_interactions] (user, item int64; value, timestamp float64),
        ``triples`` [n_triples, 3] int64, ``modality.<k>`` [n_items, d_k] float32 and
        ``present.<k>`` [n_items] bool.
    """
    counts = m.counts

    def is_int64(t):
        return t == pa.int64()

    def is_float64(t):
        return t == pa.float64()

    interaction_types = {"user": is_int64, "item": is_int64, "value": is_float64}
    if m.has_timestamps:
        interaction_types["timestamp"] = is_float64
    path = directory / "interactions.parquet"
    table = _read_parquet(path, interaction_types, counts.interactions, memory_map)
    if table.column_names[:3] != ["user", "item", "value"]:
        raise DataFormatError(path, "columns must begin user, item, value")
    if ("timestamp" in table.column_names) != m.has_timestamps:
        raise DataFormatError(path, "timestamp column disagrees with dataset.json")
    arrays = {f"interactions.{c}": _column(table, c) for c in table.column_names}
    table = _read_parquet(directory / "triples.parquet", dict.fromkeys(TRIPLE_COLUMNS, is_int64),
                          counts.triples, memory_map)
    arrays["triples"] = _int64_rows(table, TRIPLE_COLUMNS)  # [n_triples, 3]
    for k, dim in enumerate(m.modalities.values()):
        path = directory / f"modality_{k}.parquet"
        want = {"present": pa.types.is_boolean}
        if dim:
            want["vector"] = lambda t, d=dim: is_vector_type(t, d)
        table = _read_parquet(path, want, counts.items, memory_map)
        arrays[f"present.{k}"] = table.column("present").to_numpy().astype(bool)  # [n_items]
        arrays[f"modality.{k}"] = table_vectors(table, dim)  # [n_items, dim]
    return arrays


def _column(table: pa.Table, name: str) -> np.ndarray:
    """One column as a numpy array (no copy when it is a single chunk)."""
    column = table.column(name)
    chunk = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return chunk.to_numpy(zero_copy_only=False)


def _mapped_arrays(directory: Path, m: Manifest, cache_dir: str | Path | None
                   ) -> dict[str, np.ndarray]:
    """:func:`_read_arrays` as read-only memmaps of the ``.npy`` cache (built when missing)."""
    stamp = {"fingerprint": m.fingerprint, "files": m.files}
    candidates = [Path(cache_dir)] if cache_dir is not None else [
        directory / MMAP_DIR,
        paths.cache_dir("mmap") / m.fingerprint[:24]]
    for cache in candidates:
        found = _cache_stamp(cache) or {}
        if all(found.get(key) == value for key, value in stamp.items()):
            return _load_cache(cache)
    errors = []
    for cache in candidates:  # the first writable place
        try:
            _write_cache(cache, _read_arrays(directory, m, memory_map=True), stamp)
        except OSError as error:
            errors.append(f"{cache}: {error}")
            continue
        return _load_cache(cache)
    raise DataFormatError(directory, "cannot write the memory-map cache (" + "; ".join(errors)
                          + "); pass cache_dir= or set MMKGREC_CACHE")


def _cache_stamp(cache: Path) -> dict | None:
    try:
        return json.loads((cache / MMAP_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_cache(cache: Path, arrays: dict[str, np.ndarray], stamp: dict) -> None:
    """Write ``<key>.npy`` files and the stamp into a fresh folder, then move it into place
    (atomic; when another process got there first, its identical cache is kept)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{cache.name}.tmp-", dir=cache.parent))
    try:
        for key, array in arrays.items():
            np.save(staging / f"{key}.npy", np.ascontiguousarray(array), allow_pickle=False)
        (staging / MMAP_STAMP).write_text(json.dumps({**stamp, "keys": list(arrays)}) + "\n",
                                          encoding="utf-8")
        if cache.exists():  # stale (or concurrently written): replace
            old = cache.with_name(f"{cache.name}.old-{os.getpid()}")
            try:
                cache.rename(old)
            except OSError:
                pass
            else:
                shutil.rmtree(old, ignore_errors=True)
        try:
            staging.rename(cache)
        except OSError:
            if _cache_stamp(cache) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_cache(cache: Path) -> dict[str, np.ndarray]:
    stamp = json.loads((cache / MMAP_STAMP).read_text(encoding="utf-8"))
    return {key: np.load(cache / f"{key}.npy", mmap_mode="r", allow_pickle=False)
            for key in stamp["keys"]}


def read_manifest(path: Path) -> Manifest:
    """Read and check ``dataset.json``; errors name the line of the offending key when found."""
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(path, f"invalid JSON: {error.msg}", error.lineno) from None
    except RecursionError:
        raise DataFormatError(path, "invalid JSON: nested too deeply") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataFormatError(path, f"not a {FORMAT} manifest (\"format\" must be {FORMAT!r})",
                              _line_of(text, "format"))
    version = data.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # true == 1 in Python
        raise DataFormatError(path, f"unknown schema_version {data.get('schema_version')!r} "
                                    f"(this mmkgrec reads {SCHEMA_VERSION})",
                              _line_of(text, "schema_version"))
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        where = ".".join(map(str, first["loc"]))
        raise DataFormatError(path, f"{where}: {first['msg']}", _line_of(text, key)) from None
    if manifest.threshold != manifest.threshold:
        raise DataFormatError(path, "threshold: NaN is not a threshold", _line_of(text, "threshold"))
    return manifest


def _line_of(text: str, key: str) -> int | None:
    at = text.find(f'"{key}"')
    return text.count("\n", 0, at) + 1 if at >= 0 else None


def _read_parquet(path: Path, want: dict, rows: int, memory_map: bool = False) -> pa.Table:
    """Read a Parquet file and check its columns (name -> type predicate), nulls and row count."""
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    try:
        table = pq.read_table(path, memory_map=memory_map)
    except (pa.ArrowException, OSError) as error:
        raise DataFormatError(path, f"not a readable Parquet file: {error}") from None
    for column, type_ok in want.items():
        if column not in table.column_names:
            raise DataFormatError(path, f"missing column {column!r}")
        if not type_ok(table.schema.field(column).type):
            found = table.schema.field(column).type
            raise DataFormatError(path, f"column {column!r} has unexpected type {found}")
        if table.column(column).null_count:
            raise DataFormatError(path, f"column {column!r} has missing values")
    if table.num_rows != rows:
        raise DataFormatError(path, f"has {table.num_rows} rows but dataset.json says {rows}")
    return table
