"""``extract``: a catalogue -> modality matrices + presence masks, in parallel, cached by content.

Output directory (one modality per extractor, named after it)::

    features.json            manifest (written last): item ids, per modality its file, kind,
                             width, extractor config, fit, counts; file sha256s
    modality_<k>.parquet     item_id string, vector fixed_size_list<float32>[d], present bool
    errors.csv               item_id, extractor, path, error (one row per failed item/extractor)
    cache/                   the content cache (default location; see mmkgrec.features.cache)

An item without the input an extractor reads (an empty cell) is *absent*: mask False, no error.
A missing, unreadable or undecodable file is *failed*: mask False, zero row, one error row.
Neither stops the run. Items are sent to worker processes in small batches; each finished batch
is written to the cache at once, so an interrupted run loses nothing already computed and a
re-run computes only new or changed items (``ExtractReport.computed``).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mmkgrec.errors import ConfigError, DataFormatError, ExtractionError, MMKGRecError
from mmkgrec.features.base import Extractor, sha256_text
from mmkgrec.features.cache import FeatureCache, MemoryCache
from mmkgrec.features.catalogue import Catalogue, CatalogueItem, read_catalogue
from mmkgrec.features.output import (
    ErrorRow,
    ExtractorReport,
    ExtractReport,
    FeatureSet,
    read_errors,
    read_features,
    write_features,
)
from mmkgrec.features.pool import Bundle, Runner
from mmkgrec.features.registry import DEFAULT_EXTRACTORS, EXTRACTORS, make_extractor

__all__ = ["ExtractReport", "FeatureSet", "extract", "read_errors", "read_features"]


def extract(
    catalogue: str | Path | Catalogue,
    out_dir: str | Path,
    extractors: Iterable[str | Extractor] | None = None,
    *,
    options: dict[str, dict[str, Any]] | None = None,
    workers: int = 1,
    train_items: Collection[str] | str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    threads_per_worker: int = 1,
) -> ExtractReport:
    """Extract features of every catalogue item and write them to ``out_dir``.

    Args:
        catalogue: a catalogue file (see :mod:`mmkgrec.features.catalogue`) or a read one.
        out_dir: output directory (created; an earlier output there is replaced).
        extractors: registry names or Extractor instances (an unfitted instance is fitted in
            place; with workers > 1 its class must be importable); None: those of
            ``DEFAULT_EXTRACTORS`` whose input columns the catalogue has.
        options: per extractor name, its options (e.g. ``{"mfcc_bof": {"codebook_size": 64}}``).
        workers: worker processes; 1 runs in this process (no crash isolation).
        train_items: ids (or a file of ids, one per line) that fitted extractors (codebooks,
            TF-IDF) are fitted on; None fits on every item (a note says so).
        cache_dir: the content cache (default ``out_dir/cache``); ``use_cache=False``: none.
        progress: show a rich progress bar.
        threads_per_worker: BLAS / OpenMP / torch threads in each worker process (with
            workers=1 the caller's own thread settings apply).

    Returns:
        The report: per extractor present / computed / cached / failed / absent and the errors.

    Raises:
        DataFormatError: a bad catalogue. ConfigError: an unknown extractor or option, an
        extractor whose inputs the catalogue lacks, no train item found. MMKGRecError: an
        extractor that cannot run here (its reason), or one that fails as a whole (e.g. a
        model that cannot be loaded offline).
    """
    start = time.perf_counter()
    cat = catalogue if isinstance(catalogue, Catalogue) else read_catalogue(catalogue)
    out_dir = Path(out_dir)
    chosen = _resolve_extractors(extractors, options or {}, cat)
    train, notes = _train_ids(cat, train_items)
    notes = list(cat.notes) + notes
    cache: MemoryCache = FeatureCache(cache_dir or out_dir / "cache") if use_cache else MemoryCache()
    runner = Runner(workers, threads_per_worker, progress, chosen)
    n = len(cat)
    errors: list[ErrorRow] = []
    reports: dict[str, ExtractorReport] = {}
    matrices: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    try:
        # 1. input digests (file bytes or text) of every item with input, per extractor
        digests: dict[str, list[str | None]] = {}
        for ex in chosen:
            counts = reports[ex.name] = ExtractorReport(ex.name, ex.modality, ex.width)
            digests[ex.name] = [None] * n
            for i, item in enumerate(cat.items):
                if not ex.has_input(item):
                    counts.absent += 1
                    continue
                try:
                    digests[ex.name][i] = ex.input_digest(item, cache.file_digest)
                except ExtractionError as error:
                    errors.append(ErrorRow(item.item_id, ex.name, _path_of(ex, item), str(error)))
                    counts.failed += 1

        # 2. fit the fitted extractors on the train items (state cached by train content)
        for ex in chosen:
            if ex.needs_fit and not ex.fitted:
                reports[ex.name].fit = _fit(ex, cat, digests[ex.name], train, cache, runner,
                                            errors, reports[ex.name])
                if train is None:
                    notes.append(f"{ex.name}: fitted on all items with input (no train_items "
                                 f"given); pass the TRAIN items to keep it leak-free")
            elif ex.needs_fit:
                reports[ex.name].fit = {"train_items": None, "from_cache": False,
                                        "state_sha256": ex.state_digest(), "given": True}

        # 3. features: cache hits, then the misses in worker processes
        keys: dict[str, list[str | None]] = {}
        todo: dict[str, list[int]] = {}
        for ex in chosen:
            matrices[ex.name] = np.zeros((n, ex.width), dtype=np.float32)  # [n_items, d]
            masks[ex.name] = np.zeros(n, dtype=bool)  # [n_items]
            prefix = ex.config_digest() + ex.state_digest()
            keys[ex.name] = [None if d is None else sha256_text(prefix + d)
                             for d in digests[ex.name]]
            wanted = [(i, k) for i, k in enumerate(keys[ex.name]) if k is not None]
            hits = cache.get_vectors([k for _, k in wanted], ex.width)
            todo[ex.name] = []
            for i, key in wanted:
                vector = hits.get(key)
                if vector is None:
                    todo[ex.name].append(i)
                else:
                    matrices[ex.name][i], masks[ex.name][i] = vector, True
                    reports[ex.name].cached += 1

        def done(bundle: Bundle, results: list[list[tuple]]) -> None:
            stored: list[tuple[str, np.ndarray]] = []
            for (name, positions), rows in zip(bundle, results):
                for i, (vector, error) in zip(positions, rows):
                    if error is None:
                        matrices[name][i], masks[name][i] = vector, True
                        reports[name].computed += 1
                        stored.append((keys[name][i] or "", vector))  # computed: has a key
                    else:
                        item = cat.items[i]
                        errors.append(ErrorRow(item.item_id, name, _path_of(by_name[name], item),
                                               error))
                        reports[name].failed += 1
            cache.put_vectors(stored)

        by_name = {ex.name: ex for ex in chosen}
        bundles = _bundles(chosen, todo)
        runner.run("extract", bundles, by_name, cat, digests, done,
                   sum(len(v) for v in todo.values()), "extracting")
    finally:
        runner.close()
        cache.close()

    for ex in chosen:
        reports[ex.name].present = int(masks[ex.name].sum())
    report = ExtractReport(out_dir, n, reports, errors, 0.0, notes)
    write_features(out_dir, cat, chosen, matrices, masks, report)
    report.seconds = time.perf_counter() - start
    return report


def _resolve_extractors(extractors: Iterable[str | Extractor] | None,
                        options: dict[str, dict[str, Any]], cat: Catalogue) -> list[Extractor]:
    unknown = sorted(set(options) - set(EXTRACTORS))
    if unknown:
        raise ConfigError(f"options for unknown extractors {unknown}; known: {', '.join(EXTRACTORS)}")
    if extractors is None:
        names = [n for n in DEFAULT_EXTRACTORS
                 if any(c in cat.columns or (c == "lyrics" and "lyrics_path" in cat.columns)
                        for c in EXTRACTORS[n].inputs)]
        if not names:
            raise ConfigError(f"{cat.path}: the catalogue has no content column (audio_path, "
                              f"lyrics, lyrics_path, image_path, tags, title, artist)")
        extractors = names
    chosen: list[Extractor] = []
    for entry in extractors:
        ex = entry if isinstance(entry, Extractor) else make_extractor(entry, options.get(entry))
        if any(ex.name == other.name for other in chosen):
            raise ConfigError(f"extractor {ex.name!r} is listed twice")
        ok, reason = ex.available()
        if not ok:
            raise MMKGRecError(f"extractor {ex.name!r} cannot run here: {reason}")
        columns = set(cat.columns) | ({"lyrics"} if "lyrics_path" in cat.columns else set())
        if not columns & set(ex.inputs):
            raise ConfigError(f"extractor {ex.name!r} reads {' or '.join(ex.inputs)}, but the "
                              f"catalogue {cat.path} has none of these columns")
        chosen.append(ex)
    if not chosen:
        raise ConfigError("no extractor given")
    return chosen


def _train_ids(cat: Catalogue, train_items) -> tuple[set[str] | None, list[str]]:
    if train_items is None:
        return None, []
    if isinstance(train_items, (str, Path)):
        path = Path(train_items)
        if not path.is_file():
            raise DataFormatError(path, "train-items file not found")
        ids = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()
               if line.strip()]
    else:
        ids = [str(i) for i in train_items]
    known = set(cat.ids)
    train = {i for i in ids if i in known}
    if not train:
        raise ConfigError(f"none of the {len(ids)} train items is in the catalogue {cat.path} "
                          f"(e.g. {ids[:3]})")
    notes = []
    if len(train) < len(set(ids)):
        notes.append(f"{len(set(ids)) - len(train)} train item ids are not in the catalogue "
                     f"(ignored)")
    return train, notes


def _path_of(ex: Extractor, item: CatalogueItem) -> str:
    """The file an extractor reads for ``item`` (for error rows); "" for inline text."""
    for column in ("audio_path", "image_path"):
        if column in ex.inputs and getattr(item, column) is not None:
            return str(getattr(item, column))
    if "lyrics" in ex.inputs and not item.lyrics and item.lyrics_path is not None:
        return str(item.lyrics_path)
    return ""


def _fit(ex: Extractor, cat: Catalogue, digests: list[str | None], train: set[str] | None,
         cache: MemoryCache, runner: Runner, errors: list[ErrorRow],
         report: ExtractorReport) -> dict:
    """Fit ``ex`` on the train items with input, in input-digest order; cached by content."""
    rows = [i for i, d in enumerate(digests)
            if d is not None and (train is None or cat.items[i].item_id in train)]
    if not rows:
        raise ConfigError(f"{ex.name}: no train item has usable input to fit on")
    rows.sort(key=lambda i: (digests[i], cat.items[i].item_id))  # order-independent fit
    fit_key = sha256_text(ex.config_digest() + "fit" + "\n".join(digests[i] or "" for i in rows))
    state = cache.get_fit(fit_key)
    if state is not None:
        ex.load_state_bytes(state)
        return {"train_items": len(rows), "from_cache": True, "state_sha256": ex.state_digest()}

    samples: dict[int, Any] = {}

    def done(bundle: Bundle, results: list[list[tuple]]) -> None:
        for (_, positions), rows_out in zip(bundle, results):
            for i, (sample, error) in zip(positions, rows_out):
                if error is None:
                    samples[i] = sample
                else:  # the item fails for this extractor: report once, skip it later
                    errors.append(ErrorRow(cat.items[i].item_id, ex.name, _path_of(ex, cat.items[i]),
                                           error))
                    report.failed += 1
                    digests[i] = None

    bundles = [[(ex.name, rows[s:s + ex.batch_size])] for s in range(0, len(rows), ex.batch_size)]
    runner.run("fit", bundles, {ex.name: ex}, cat, {ex.name: list(digests)}, done, len(rows),
               f"fitting {ex.name}")
    ordered = [samples[i] for i in rows if i in samples]
    if not ordered:
        raise MMKGRecError(f"{ex.name}: every train item failed; nothing to fit on (see the errors)")
    ex.fit(ordered)
    cache.put_fit(fit_key, ex.state_bytes())
    return {"train_items": len(ordered), "from_cache": False, "state_sha256": ex.state_digest()}


def _bundles(chosen: list[Extractor], todo: dict[str, list[int]]) -> list[Bundle]:
    """Worker tasks. Audio extractors share a bundle per chunk of items, so a worker decodes
    each file once for all of them; the others get one bundle per chunk."""
    bundles: list[Bundle] = []
    audio = [ex for ex in chosen if ex.modality == "audio" and todo[ex.name]]
    if audio:
        size = min(ex.batch_size for ex in audio)
        union = sorted(set().union(*(todo[ex.name] for ex in audio)))
        need = {ex.name: set(todo[ex.name]) for ex in audio}
        for s in range(0, len(union), size):
            chunk = union[s:s + size]
            bundle = [(ex.name, [i for i in chunk if i in need[ex.name]]) for ex in audio]
            bundles.append([(name, pos) for name, pos in bundle if pos])
    for ex in chosen:
        if ex.modality != "audio":
            positions = todo[ex.name]
            bundles += [[(ex.name, positions[s:s + ex.batch_size])]
                        for s in range(0, len(positions), ex.batch_size)]
    return bundles
