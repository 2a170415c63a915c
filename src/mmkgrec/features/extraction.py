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

import csv
import json
import os
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmkgrec.errors import ConfigError, DataFormatError, ExtractionError, MMKGRecError
from mmkgrec.features.base import Extractor, sha256_text
from mmkgrec.features.cache import FeatureCache, MemoryCache, file_sha256
from mmkgrec.features.catalogue import Catalogue, CatalogueItem, read_catalogue
from mmkgrec.features.registry import DEFAULT_EXTRACTORS, EXTRACTORS, make_extractor

MANIFEST = "features.json"
FORMAT = "mmkgrec-features"
SCHEMA_VERSION = 1
ERRORS_FILE = "errors.csv"
ERROR_COLUMNS = ("item_id", "extractor", "path", "error")

Bundle = list[tuple[str, list[int]]]  # [(extractor name, catalogue positions)]


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


# ---- the worker side -------------------------------------------------------------------------
_WORKER_EXTRACTORS: dict[str, Extractor] = {}


def _limit_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # BLAS / OpenMP already loaded; torch reads the variables


def _init_worker(specs: list[tuple[type[Extractor], dict]], threads: int) -> None:
    """Worker initialiser: limit threads, build the (unfitted) extractors once per process.

    ``specs`` holds each extractor's class (pickled by reference, so an extractor defined
    outside the registry works too, if its module is importable) and its options."""
    _limit_threads(threads)
    _WORKER_EXTRACTORS.clear()
    _WORKER_EXTRACTORS.update({cls.name: cls(**options) for cls, options in specs})


_WORKER_STATES: dict[str, str] = {}  # extractor name -> digest of the fit state it holds


def _worker_compute(kind: str, bundle: list[tuple[str, list[CatalogueItem], list[str]]],
                    states: dict[str, tuple[str, str]]):
    """Run a bundle in a worker; ``states``: name -> (state digest, file) of fitted extractors,
    loaded once per process and state."""
    for name, (digest, path) in states.items():
        if _WORKER_STATES.get(name) != digest:
            _WORKER_EXTRACTORS[name].load_state_bytes(Path(path).read_bytes())
            _WORKER_STATES[name] = digest
    return _compute(_WORKER_EXTRACTORS, kind, bundle)


def _compute(extractors: dict[str, Extractor], kind: str,
             bundle: list[tuple[str, list[CatalogueItem], list[str]]]) -> list[list[tuple]]:
    """Run one bundle: per (extractor, items, digests) a list of (value | None, error | None)."""
    out = []
    for name, items, digests in bundle:
        extractor = extractors[name]
        if kind == "extract":
            results = extractor.extract_batch(items)
        else:  # "fit": each train item's fit sample
            results = []
            for item, digest in zip(items, digests):
                try:
                    results.append(extractor.fit_sample(item, digest))
                except Exception as error:  # noqa: BLE001 - one bad file must not stop the fit
                    results.append(error)
        out.append([(None, _describe(r)) if isinstance(r, BaseException) else (r, None)
                    for r in results])
    return out


def _describe(error: BaseException) -> str:
    if isinstance(error, ExtractionError):
        return str(error)
    return f"{type(error).__name__}: {error}"


# ---- the parent side ---------------------------------------------------------------------------
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
    runner = _Runner(workers, threads_per_worker, progress, chosen)
    n = len(cat)
    errors: list[ErrorRow] = []
    reports: dict[str, ExtractorReport] = {}
    matrices: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    try:
        # 1. input digests (file bytes or text) of every item with input, per extractor
        digests: dict[str, list[str | None]] = {}
        for ex in chosen:
            report = reports[ex.name] = ExtractorReport(ex.name, ex.modality, ex.width)
            digests[ex.name] = [None] * n
            for i, item in enumerate(cat.items):
                if not ex.has_input(item):
                    report.absent += 1
                    continue
                try:
                    digests[ex.name][i] = ex.input_digest(item, cache.file_digest)
                except ExtractionError as error:
                    errors.append(ErrorRow(item.item_id, ex.name, _path_of(ex, item), str(error)))
                    report.failed += 1

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
            wanted = [i for i, k in enumerate(keys[ex.name]) if k is not None]
            hits = cache.get_vectors([keys[ex.name][i] for i in wanted], ex.width)
            todo[ex.name] = []
            for i in wanted:
                vector = hits.get(keys[ex.name][i])
                if vector is None:
                    todo[ex.name].append(i)
                else:
                    matrices[ex.name][i], masks[ex.name][i] = vector, True
                    reports[ex.name].cached += 1

        def done(bundle: Bundle, results: list[list[tuple]]) -> None:
            stored = []
            for (name, positions), rows in zip(bundle, results):
                for i, (vector, error) in zip(positions, rows):
                    if error is None:
                        matrices[name][i], masks[name][i] = vector, True
                        reports[name].computed += 1
                        stored.append((keys[name][i], vector))
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
         cache: MemoryCache, runner: _Runner, errors: list[ErrorRow],
         report: ExtractorReport) -> dict:
    """Fit ``ex`` on the train items with input, in input-digest order; cached by content."""
    rows = [i for i, d in enumerate(digests)
            if d is not None and (train is None or cat.items[i].item_id in train)]
    if not rows:
        raise ConfigError(f"{ex.name}: no train item has usable input to fit on")
    rows.sort(key=lambda i: (digests[i], cat.items[i].item_id))  # order-independent fit
    fit_key = sha256_text(ex.config_digest() + "fit" + "\n".join(digests[i] for i in rows))
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


class _Runner:
    """Runs bundles in this process (workers == 1) or in one spawn-started process pool.

    Fitted states reach the workers as files in a temporary folder (loaded once per process).
    A worker that dies (e.g. a decoder crash) breaks the pool: the bundles then in flight are
    retried one item at a time in a one-process pool, and an item that kills it again is
    recorded as failed; the rest of the run goes on.
    """

    def __init__(self, workers: int, threads: int, progress: bool, extractors: list[Extractor]):
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.workers, self.threads, self.progress = workers, threads, progress
        self.specs = [(type(ex), ex.options.model_dump(mode="json")) for ex in extractors]
        self._pool = None
        self._tmp = None

    def close(self) -> None:
        if self._pool is not None:  # results are in; idle workers exit on their own
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def run(self, kind: str, bundles: list[Bundle], extractors: dict[str, Extractor],
            cat: Catalogue, digests: dict[str, list[str | None]],
            done: Callable[[Bundle, list[list[tuple]]], None], total: int, label: str) -> None:
        if not bundles:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        def payload(bundle: Bundle):
            return [(name, [cat.items[i] for i in pos], [digests[name][i] or "" for i in pos])
                    for name, pos in bundle]

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, disable=not self.progress, transient=False) as bar:
            task = bar.add_task(label, total=total)

            def finish(bundle: Bundle, results: list[list[tuple]]) -> None:
                done(bundle, results)
                bar.advance(task, sum(len(pos) for _, pos in bundle))

            if self.workers == 1:
                for bundle in bundles:
                    finish(bundle, _compute(extractors, kind, payload(bundle)))
            else:
                self._parallel(kind, bundles, self._states(extractors), payload, finish)

    def _states(self, extractors: dict[str, Extractor]) -> dict[str, tuple[str, str]]:
        """name -> (digest, file) of each fitted extractor's state, written once."""
        import tempfile

        states = {}
        for ex in extractors.values():
            if ex.needs_fit and ex.fitted:
                if self._tmp is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="mmkgrec-fit-")
                digest = ex.state_digest()
                path = Path(self._tmp.name) / f"{ex.name}-{digest}.safetensors"
                if not path.is_file():
                    path.write_bytes(ex.state_bytes())
                states[ex.name] = (digest, str(path))
        return states

    def _parallel(self, kind, bundles, states, payload, finish) -> None:
        queue, suspects = list(bundles), []
        while queue:
            if self._pool is None:
                self._pool = self._new_pool(self.workers)
            lost = self._drain(self._pool, queue, self.workers, kind, states, payload, finish)
            if lost:  # the pool is broken: the next round gets a fresh one
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
                suspects += [[(name, [i])] for b in lost for name, pos in b for i in pos]
        while suspects:  # one item, one process at a time: a crash now names its item
            pool = self._new_pool(1)
            try:
                # one in flight: a crash can only be the crashing item's own
                for bundle in self._drain(pool, suspects, 1, kind, states, payload, finish,
                                          in_flight=1):
                    error = "the worker process died on this item (a crash in a decoder or model)"
                    finish(bundle, [[(None, error)]])
            finally:
                pool.shutdown(wait=False, cancel_futures=True)

    def _new_pool(self, width: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # safe with torch / OpenMP in the parent
        return ProcessPoolExecutor(max_workers=width, mp_context=context,
                                   initializer=_init_worker, initargs=(self.specs, self.threads))

    @staticmethod
    def _drain(pool, queue: list[Bundle], width: int, kind, states, payload, finish,
               in_flight: int | None = None) -> list[Bundle]:
        """Run bundles from ``queue`` (popping them) until it is empty or the pool breaks, with
        at most ``in_flight`` submitted (default ``2 * width``); returns the bundles that were in
        flight when it broke."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        running: dict = {}
        lost: list[Bundle] = []
        try:
            while queue or running:
                while queue and not lost and len(running) < (in_flight or 2 * width):
                    bundle = queue.pop(0)
                    used = {name for name, _ in bundle}
                    refs = {k: v for k, v in states.items() if k in used}
                    running[pool.submit(_worker_compute, kind, payload(bundle), refs)] = bundle
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    bundle = running.pop(future)
                    try:
                        results = future.result()
                    except BrokenProcessPool:
                        lost.append(bundle)
                        continue
                    finish(bundle, results)
        except BaseException:
            for future in running:
                future.cancel()
            raise
        return lost


# ---- output ------------------------------------------------------------------------------------
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
        matrix = np.where(masks[ex.name][:, None], matrices[ex.name], 0.0).astype(np.float32)
        flat = pa.array(np.ascontiguousarray(matrix).ravel())  # [n * d]
        table = pa.table({"item_id": ids,
                          "vector": pa.FixedSizeListArray.from_arrays(flat, ex.width),
                          "present": pa.array(masks[ex.name])})
        pq.write_table(table, out_dir / file)
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
        "files": files, "items": cat.ids,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return out_dir


# ---- reading -------------------------------------------------------------------------------------
@dataclass
class FeatureSet:
    """Features read back from an ``extract`` output: rows follow ``item_ids``."""

    item_ids: np.ndarray  # [n] str
    modalities: dict[str, np.ndarray]  # name -> [n, d] float32, zero where absent
    masks: dict[str, np.ndarray]  # name -> [n] bool
    kinds: dict[str, str]  # name -> audio | text | sentiment | image
    manifest: dict
    directory: Path


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
    for key, kind in (("items", list), ("modalities", dict), ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            raise DataFormatError(path, f"{key!r} must be a JSON {kind.__name__}")
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
        if not (pa.types.is_fixed_size_list(vtype) and vtype.list_size == width
                and vtype.value_type == pa.float32()):
            raise DataFormatError(directory / file, f"column 'vector' must be "
                                                    f"fixed_size_list<float>[{width}], got {vtype}")
        if table.num_rows != len(ids) or table.column("item_id").to_pylist() != list(ids):
            raise DataFormatError(directory / file, "item ids differ from features.json")
        vectors = table.column("vector").combine_chunks().flatten().to_numpy()
        modalities[name] = np.asarray(vectors, dtype=np.float32).reshape(len(ids), width)
        masks[name] = table.column("present").to_numpy().astype(bool)
        kinds[name] = kind
    return FeatureSet(ids, modalities, masks, kinds, manifest, directory)


def read_errors(directory: str | Path) -> list[ErrorRow]:
    """The rows of ``errors.csv``."""
    with open(Path(directory) / ERRORS_FILE, newline="", encoding="utf-8") as handle:
        return [ErrorRow(**row) for row in csv.DictReader(handle)]

