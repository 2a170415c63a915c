"""The crash-isolating worker pool of ``extract``: bundles of items run in spawn-started
processes; a worker that dies is retried item by item so that a crash names its item."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmkgrec.errors import ConfigError, ExtractionError
from mmkgrec.features.base import Extractor
from mmkgrec.features.catalogue import Catalogue, CatalogueItem

Bundle = list[tuple[str, list[int]]]  # [(extractor name, catalogue positions)]

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


class Runner:
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
        self._pool: Any = None  # a ProcessPoolExecutor once started
        self._tmp: Any = None  # a TemporaryDirectory of fitted states once needed

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
