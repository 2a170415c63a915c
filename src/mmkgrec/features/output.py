"""The output of ``extract`` (``features.json``, ``modality_<k>.parquet``, ``errors.csv``),
its report types, and its reader."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmkgrec.data.formats.modality import is_vector_type, modality_table, table_vectors
from mmkgrec.errors import DataFormatError
from mmkgrec.features.base import Extractor
from mmkgrec.features.cache import file_sha256
from mmkgrec.features.catalogue import Catalogue

MANIFEST = "features.json"
FORMAT = "mmkgrec-features"
SCHEMA_VERSION = 1
ERRORS_FILE = "errors.csv"
ERROR_COLUMNS = ("item_id", "extractor", "path", "error")


@dataclass
class ErrorRow:
    item_id: str
    extractor: str
    path: str
    error: str


@dataclass
class ExtractorReport:
    """Counts of one extractor's run. ``present = computed + cached``."""

    name: str
    modality: str
    width: int
    present: int = 0
    computed: int = 0
    cached: int = 0
    failed: int = 0
    absent: int = 0
    fit: dict | None = None


@dataclass
class ExtractReport:
    """What ``extract`` did: per extractor counts, the error rows, where the output went."""

    out_dir: Path
    items: int
    extractors: dict[str, ExtractorReport]
    errors: list[ErrorRow]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def computed(self) -> int:
        """(item, extractor) pairs computed in this run (0 on an identical re-run)."""
        return sum(r.computed for r in self.extractors.values())

    @property
    def cached(self) -> int:
        return sum(r.cached for r in self.extractors.values())

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.extractors.values())


def write_features(out_dir: Path, cat: Catalogue, chosen: list[Extractor],
                   matrices: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                   report: ExtractReport) -> Path:
    """Write the modality files, ``errors.csv`` and (last) ``features.json``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # a half-written output must not read as valid
    for stale in out_dir.glob("modality_*.parquet"):  # from an earlier run with more extractors
        stale.unlink()
    ids = pa.array(cat.ids, type=pa.string())
    files: dict[str, str] = {}
    modalities: dict[str, dict] = {}
    for k, ex in enumerate(chosen):
        file = f"modality_{k}.parquet"
        matrix = np.where(masks[ex.name][:, None], matrices[ex.name], 0.0)  # [n, d] 0 if absent
        pq.write_table(modality_table(matrix, masks[ex.name], ids), out_dir / file)
        files[file] = file_sha256(out_dir / file)
        r = report.extractors[ex.name]
        modalities[ex.name] = {
            "file": file, "kind": ex.modality, "width": ex.width, "extractor": ex.config(),
            "fit": r.fit, "counts": {"items": len(cat), "present": r.present, "computed": r.computed,
                                     "cached": r.cached, "failed": r.failed, "absent": r.absent},
        }
    with open(out_dir / ERRORS_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ERROR_COLUMNS)
        writer.writerows((e.item_id, e.extractor, e.path, e.error) for e in report.errors)
    files[ERRORS_FILE] = file_sha256(out_dir / ERRORS_FILE)
    from mmkgrec import __version__

    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "created_by": f"mmkgrec {__version__}",
        "catalogue": {"file": str(cat.path), "sha256": file_sha256(cat.path), "items": len(cat)},
        "modalities": modalities, "errors": len(report.errors), "notes": report.notes,
        "files": files, "items": cat.ids, "attributes": display_attributes(cat),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return out_dir


DISPLAY_COLUMNS = ("title", "artist", "tags")


def display_attributes(cat: Catalogue) -> dict[str, list[str]]:
    """The catalogue's display columns that have a value for some item, one string per item
    (tags ``;``-joined, "" where empty): they travel with the features to ``attach``."""
    columns = {
        "title": [item.title or "" for item in cat.items],
        "artist": [item.artist or "" for item in cat.items],
        "tags": [";".join(item.tags) for item in cat.items],
    }
    return {name: values for name, values in columns.items() if any(values)}


@dataclass
class FeatureSet:
    """Features read back from an ``extract`` output: rows follow ``item_ids``."""

    item_ids: np.ndarray  # [n] str
    modalities: dict[str, np.ndarray]  # name -> [n, d] float32, zero where absent
    masks: dict[str, np.ndarray]  # name -> [n] bool
    kinds: dict[str, str]  # name -> audio | text | sentiment | image
    manifest: dict
    directory: Path
    attributes: dict[str, np.ndarray] = field(default_factory=dict)  # column -> [n] str


def read_features(directory: str | Path) -> FeatureSet:
    """Read and check an ``extract`` output directory.

    Raises:
        DataFormatError: a missing / changed / malformed file, naming it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise DataFormatError(path, "file not found (not a features directory written by "
                                    "`mmkgrec features extract`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(path, f"invalid JSON: {error.msg}", error.lineno) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataFormatError(path, f"not a {FORMAT} manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataFormatError(path, f"unknown schema_version {manifest.get('schema_version')!r} "
                                    f"(this mmkgrec reads {SCHEMA_VERSION})")
    for key, expected in (("items", list), ("modalities", dict), ("files", dict)):
        if not isinstance(manifest.get(key), expected):
            raise DataFormatError(path, f"{key!r} must be a JSON {expected.__name__}")
    for file, digest in manifest["files"].items():
        if not (directory / file).is_file():
            raise DataFormatError(directory / file, "file not found (listed in features.json)")
        if file_sha256(directory / file) != digest:
            raise DataFormatError(directory / file, "changed since written: sha256 differs from "
                                                    "features.json")
    ids = np.asarray([str(i) for i in manifest["items"]], dtype=str)
    modalities, masks, kinds = {}, {}, {}
    for name, entry in manifest["modalities"].items():
        try:
            file, width, kind = entry["file"], int(entry["width"]), str(entry["kind"])
        except (KeyError, TypeError, ValueError):
            raise DataFormatError(path, f"modality {name!r} needs file, width and kind") from None
        if file not in manifest["files"]:
            raise DataFormatError(path, f"modality {name!r}: {file} is not among the listed files")
        try:
            table = pq.read_table(directory / file)
        except (pa.ArrowException, OSError) as error:
            raise DataFormatError(directory / file, f"not a readable Parquet file: {error}") from None
        for column in ("item_id", "vector", "present"):
            if column not in table.column_names:
                raise DataFormatError(directory / file, f"missing column {column!r}")
        vtype = table.schema.field("vector").type
        if not is_vector_type(vtype, width):
            raise DataFormatError(directory / file, f"column 'vector' must be "
                                                    f"fixed_size_list<float>[{width}], got {vtype}")
        if table.num_rows != len(ids) or table.column("item_id").to_pylist() != list(ids):
            raise DataFormatError(directory / file, "item ids differ from features.json")
        modalities[name] = table_vectors(table, width).reshape(len(ids), width)  # [n, d]
        masks[name] = table.column("present").to_numpy().astype(bool)
        kinds[name] = kind
    attributes = manifest.get("attributes", {})  # absent in outputs written before it existed
    if not isinstance(attributes, dict) or any(
            name not in DISPLAY_COLUMNS or not isinstance(values, list) or len(values) != len(ids)
            or not all(isinstance(v, str) for v in values) for name, values in attributes.items()):
        raise DataFormatError(path, f"'attributes' must map {list(DISPLAY_COLUMNS)} to one string "
                                    f"per item")
    return FeatureSet(ids, modalities, masks, kinds, manifest, directory,
                      {name: np.asarray(values, dtype=object) for name, values in attributes.items()})


def read_errors(directory: str | Path) -> list[ErrorRow]:
    """The rows of ``errors.csv``."""
    with open(Path(directory) / ERRORS_FILE, newline="", encoding="utf-8") as handle:
        return [ErrorRow(**row) for row in csv.DictReader(handle)]
