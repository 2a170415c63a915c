"""Named datasets: where their files are found, how they are read, and how they are fetched.

Resolution order for the files of a named dataset: an explicit ``source`` directory, then
``$MMKGREC_DATA``, then ``../shared/data`` (relative to the working directory) when it exists,
then the download cache (``$MMKGREC_CACHE`` or ``~/.cache/mmkgrec``) filled by :func:`fetch`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mmkgrec import paths
from mmkgrec.data.dataset import MMKG
from mmkgrec.data.formats.hetrec import attach_hetrec_text, read_hetrec
from mmkgrec.data.formats.kgcn import read_kgcn
from mmkgrec.data.formats.mkgcn import read_mkgcn
from mmkgrec.data.textio import sha256_of
from mmkgrec.errors import ChecksumError, ConfigError, DatasetNotFoundError, MMKGRecError


@dataclass(frozen=True)
class Source:
    """Where a dataset's original public files come from."""

    folder: str  # folder name under the data root
    files: tuple[str, ...]
    url: str  # a file's URL is url + file name, or a .zip archive holding the files
    citation: str = ""


SOURCES: dict[str, Source] = {
    "lastfm-kgcn": Source(
        "lastfm-kgcn", ("user_artists.dat", "item_index2entity_id.txt", "kg.txt"),
        "https://github.com/hwwang55/KGCN/raw/2363ca2d/data/music/",
        citation="Wang et al., KGCN, WWW 2019 (code MIT; Last.FM data from HetRec 2011)"),
    "music-d": Source(
        "music-d", ("userID2itemID4ratings.tsv", "itemID2entityID.txt", "kg.txt"),
        "https://github.com/QuXiaolong0812/mkgcn/raw/4112ddd5/data/music-d/",
        citation="Cui et al., MKGCN, Electronics 2023 (Apache-2.0)"),
    "hetrec-lastfm-2k": Source(
        "hetrec-lastfm-2k",
        ("artists.dat", "tags.dat", "user_artists.dat", "user_taggedartists.dat", "user_friends.dat"),
        "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
        citation="Cantador et al., HetRec 2011, RecSys 2011 (research use)"),
}


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: the sources it needs and how to build it from their folders."""

    name: str
    needs: tuple[str, ...]
    build: Callable[[list[Path]], MMKG]
    description: str


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        DatasetSpec("lastfm-kgcn", ("lastfm-kgcn",), lambda d: read_kgcn(d[0]),
                    "KGCN's Last.FM with the Satori KG (all plays positive)"),
        DatasetSpec("music-d", ("music-d",), lambda d: read_mkgcn(d[0]),
                    "MKGCN's Music4All subset (plays >= 5 positive, one relation)"),
        DatasetSpec("hetrec-lastfm-2k", ("hetrec-lastfm-2k",), lambda d: read_hetrec(d[0]),
                    "HetRec 2011 Last.FM 2K; tags as KG entities, names and tags as text"),
        DatasetSpec("lastfm-kgcn-tags", ("lastfm-kgcn", "hetrec-lastfm-2k"),
                    lambda d: _renamed(attach_hetrec_text(read_kgcn(d[0]), d[1]), "lastfm-kgcn-tags"),
                    "lastfm-kgcn joined with HetRec artist names and tag texts"),
    )
}
# Named datasets whose build needs a layer above data/ (lastfm-kgcn-content: text and sentiment
# modalities, features/) are registered by that layer: directly with register_dataset, or found
# through the "mmkgrec.datasets" entry points (pyproject.toml) when first asked for by name.
PLUGIN_GROUP = "mmkgrec.datasets"
_plugin_errors: dict[str, str] = {}  # entry point name -> why it could not be loaded


def register_dataset(spec: DatasetSpec) -> None:
    """Add (or replace) a named dataset; how upper layers contribute theirs."""
    DATASETS[spec.name] = spec


def _load_plugins(name: str | None = None) -> None:
    """Register the entry-point datasets (only ``name``'s when given) not yet known."""
    from importlib.metadata import entry_points

    for point in entry_points(group=PLUGIN_GROUP):
        if point.name in DATASETS or (name is not None and point.name != name):
            continue
        try:
            register_dataset(point.load())
        except Exception as error:  # noqa: BLE001 (a broken plugin must not break data.load)
            _plugin_errors[point.name] = f"{point.value}: {type(error).__name__}: {error}"


def datasets() -> dict[str, DatasetSpec]:
    """Every named dataset, those registered by upper layers included."""
    _load_plugins()
    return DATASETS


def _renamed(dataset: MMKG, name: str) -> MMKG:
    dataset.name = name
    return dataset


def cache_dir() -> Path:
    """The download cache (``$MMKGREC_CACHE/data``)."""
    return paths.cache_dir("data")


def data_roots(source: str | Path | None = None) -> list[Path]:
    """The directories searched for dataset folders, in order."""
    if source is not None:
        return [Path(source)]
    roots = []
    if os.environ.get("MMKGREC_DATA"):
        roots.append(Path(os.environ["MMKGREC_DATA"]))
    roots += [Path("../shared/data"), cache_dir()]
    return roots


def locate(folder: str, source: str | Path | None = None) -> Path:
    """The directory holding a source folder's files (``source`` may be the folder itself)."""
    files = SOURCES[folder].files
    for root in data_roots(source):
        for candidate in (root / folder, root):
            if all((candidate / f).is_file() for f in files):
                return candidate
    searched = ", ".join(str(r) for r in data_roots(source))
    raise DatasetNotFoundError(
        f"the files of {folder!r} ({', '.join(files)}) were not found under {searched}. "
        f"Pass --source DIR, set MMKGREC_DATA, or download them with `mmkgrec data fetch {folder}`."
    )


def available_names() -> list[str]:
    from mmkgrec.data.synthetic import PRESETS

    return list(datasets()) + ["synthetic"] + [f"synthetic-{p}" for p in PRESETS]


def load(name: str | Path, *, source: str | Path | None = None, seed: int = 0,
         threshold: float | None = None) -> MMKG:
    """Load a dataset by name or from a directory; ``threshold`` overrides its positive
    threshold (see :func:`with_threshold`).

    Args:
        name: a registry name (``lastfm-kgcn``, ``music-d``, ``hetrec-lastfm-2k``,
            ``lastfm-kgcn-tags``), ``synthetic`` / ``synthetic-<preset>``, or a directory in any
            supported format (native, RecBole atomic, KGCN, MKGCN, HetRec; detected from its files).
        source: directory holding the named dataset's folder (see module docstring).
        seed: seed of the synthetic generator.
        threshold: a positive is an interaction with ``value >= threshold``; None keeps the
            format's own (e.g. music-d's 5 plays, a RecBole folder's sidecar, 0 elsewhere).

    Example:
        >>> ds = load("synthetic-tiny")
        >>> ds.n_items > 0
        True
    """
    return with_threshold(_load(str(name), source, seed), threshold)


def with_threshold(dataset: MMKG, threshold: float | None) -> MMKG:
    """``dataset`` with positives redefined as ``value >= threshold`` (None: unchanged)."""
    if threshold is None:
        return dataset
    if not math.isfinite(threshold):
        raise ConfigError(f"threshold must be a finite number, got {threshold}")
    if float(threshold) == dataset.threshold:
        return dataset
    from dataclasses import replace

    n_positive = int((dataset.interactions["value"].to_numpy() >= threshold).sum())
    if n_positive == 0:
        raise ConfigError(f"threshold {threshold:g} leaves dataset {dataset.name!r} without a "
                          f"positive (its largest value is {dataset.interactions['value'].max():g})")
    out = replace(dataset, threshold=float(threshold), notes=[
        *dataset.notes, f"positive threshold {threshold:g} (the format's own: "
        f"{dataset.threshold:g}): {n_positive:,} of {len(dataset.interactions):,} interactions "
        f"are positives"], meta=dict(dataset.meta))
    out.validate()
    return out


def _load(key: str, source: str | Path | None, seed: int) -> MMKG:
    if key == "synthetic" or key.startswith("synthetic-"):
        from mmkgrec.data.synthetic import PRESETS, generate

        preset = "small" if key == "synthetic" else key.removeprefix("synthetic-")
        if preset not in PRESETS:
            raise DatasetNotFoundError(
                f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return generate(preset, seed=seed)
    if key not in DATASETS:
        _load_plugins(key)
    if key in _plugin_errors and key not in DATASETS:
        raise DatasetNotFoundError(
            f"dataset {key!r} is built by a layer that cannot be imported here "
            f"({_plugin_errors[key]}); install mmkgrec with its extras (pip install "
            f"'mmkgrec[features]')")
    if key in DATASETS:
        spec = DATASETS[key]
        return spec.build([locate(folder, source) for folder in spec.needs])
    path = Path(key)
    if path.is_dir():
        return read_directory(path)
    raise DatasetNotFoundError(
        f"{key!r} is neither a dataset name ({', '.join(available_names())}) nor a directory")


def detect_format(directory: Path) -> str:
    """Name the format of a dataset directory from the files it holds."""
    if (directory / "dataset.json").is_file():
        return "native"
    if any(directory.glob("*.inter")):
        return "recbole"
    for folder, fmt in (("music-d", "mkgcn"), ("lastfm-kgcn", "kgcn"), ("hetrec-lastfm-2k", "hetrec")):
        if all((directory / f).is_file() for f in SOURCES[folder].files):
            return fmt
    raise DatasetNotFoundError(
        f"{directory}: no known dataset format (expected dataset.json, *.inter, or the raw "
        f"KGCN / MKGCN / HetRec files)")


def read_directory(directory: str | Path) -> MMKG:
    """Read a dataset directory in whatever supported format it holds."""
    directory = Path(directory)
    fmt = detect_format(directory)
    if fmt == "native":
        from mmkgrec.data.formats.native import read_native

        return read_native(directory)
    if fmt == "recbole":
        from mmkgrec.data.formats.recbole import read_recbole

        return read_recbole(directory)
    reader = {"mkgcn": read_mkgcn, "kgcn": read_kgcn, "hetrec": read_hetrec}[fmt]
    return reader(directory, name=directory.name)


# ---- fetching ------------------------------------------------------------------------------------
def pinned_checksums() -> dict[str, str]:
    """``folder/file`` -> sha256 of every file :func:`fetch` accepts."""
    text = resources.files("mmkgrec.data").joinpath("checksums.json").read_text()
    return json.loads(text)


def fetch(folder: str, *, dest: str | Path | None = None, base_url: str | None = None) -> Path:
    """Download a source's original public files into ``dest`` (default: the cache), verifying
    each file's sha256 against the pinned table. Files already present and valid are kept.

    ``base_url`` replaces the source URL (a mirror; ``file://`` works, which the tests use).
    Raises :class:`ChecksumError` and leaves nothing behind when a file does not match.
    """
    if folder not in SOURCES:
        raise DatasetNotFoundError(f"nothing to fetch for {folder!r}; fetchable: {', '.join(SOURCES)}")
    spec = SOURCES[folder]
    target = Path(dest) if dest is not None else cache_dir() / folder
    target.mkdir(parents=True, exist_ok=True)
    sums = pinned_checksums()
    missing = [f for f in spec.files
               if not (target / f).is_file() or sha256_of(target / f) != sums[f"{folder}/{f}"]]
    if not missing:
        return target
    url = base_url or spec.url
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        staged = Path(tmp)
        if url.endswith(".zip"):  # the archive is not pinned, its members are
            with zipfile.ZipFile(_retrieve(url, None, staged / "archive.zip")) as archive:
                by_name = {Path(n).name: n for n in archive.namelist()}
                for f in missing:
                    if f not in by_name:
                        raise ChecksumError(f"{url}: the archive has no {f}")
                    (staged / f).write_bytes(archive.read(by_name[f]))
            for f in missing:
                got, want = sha256_of(staged / f), sums[f"{folder}/{f}"]
                if got != want:
                    raise ChecksumError(
                        f"{folder}/{f} from {url}: sha256 {got} does not match the pinned "
                        f"{want}; nothing was written")
        else:  # pooch checks each file against its pinned sha256
            for f in missing:
                _retrieve(url.rstrip("/") + "/" + f, sums[f"{folder}/{f}"], staged / f,
                          what=f"{folder}/{f} from {url}")
        for f in missing:
            shutil.move(str(staged / f), target / f)
    return target


def _retrieve(url: str, sha256: str | None, dest: Path, what: str = "") -> Path:
    """Download ``url`` to ``dest`` with pooch, verifying ``sha256`` when given.

    Raises:
        ChecksumError: the file does not match ``sha256`` (pooch deletes it).
        MMKGRecError: the download failed.
    """
    import pooch

    downloader = _file_download if url.startswith("file:") else pooch.HTTPDownloader(timeout=60)
    try:
        return Path(pooch.retrieve(url, known_hash=None if sha256 is None else f"sha256:{sha256}",
                                   fname=dest.name, path=dest.parent, downloader=downloader))
    except ValueError as error:  # pooch: the downloaded file's hash differs from the known one
        got = re.search(r"\(([0-9a-f]{64})\)", str(error))
        raise ChecksumError(f"{what or url}: sha256 {got.group(1) if got else '?'} does not match "
                            f"the pinned {sha256}; nothing was written") from None
    except OSError as error:  # requests' errors are OSErrors too
        raise MMKGRecError(f"download of {url} failed: {error}") from error


def _file_download(url: str, output_file: str, _pooch: object) -> None:
    """pooch downloader for ``file://`` URLs (local mirrors; the tests use them)."""
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (a local file)
        Path(output_file).write_bytes(response.read())
