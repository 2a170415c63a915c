"""Dataset registry: name resolution, format detection, and checksum-verified fetching."""

from __future__ import annotations

import shutil
import zipfile

import pytest

from conftest import requires_data
from mmkgrec.data import registry
from mmkgrec.data.registry import SOURCES, detect_format, fetch, load, pinned_checksums
from mmkgrec.errors import ChecksumError, DatasetNotFoundError


def test_every_source_file_has_a_pinned_checksum():
    sums = pinned_checksums()
    for folder, spec in SOURCES.items():
        for f in spec.files:
            assert len(sums[f"{folder}/{f}"]) == 64


def test_unknown_name_and_missing_files_are_clear(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="neither a dataset name"):
        load("no-such-set")
    monkeypatch.setattr(registry, "cache_dir", lambda: tmp_path / "cache")
    with pytest.raises(DatasetNotFoundError, match="mmkgrec data fetch lastfm-kgcn"):
        load("lastfm-kgcn", source=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="no known dataset format"):
        detect_format(tmp_path)


@requires_data("lastfm-kgcn")
def test_source_may_be_the_root_or_the_folder(real_root, lastfm):
    assert load("lastfm-kgcn", source=real_root).fingerprint() == lastfm.fingerprint()
    assert load("lastfm-kgcn", source=real_root / "lastfm-kgcn").fingerprint() == lastfm.fingerprint()
    assert detect_format(real_root / "lastfm-kgcn") == "kgcn"
    assert load(str(real_root / "lastfm-kgcn")).n_items == 3846


@requires_data("lastfm-kgcn")
def test_fetch_verifies_checksums_from_a_mirror(tmp_path, real_root):
    mirror = tmp_path / "mirror"
    shutil.copytree(real_root / "lastfm-kgcn", mirror)
    dest = fetch("lastfm-kgcn", dest=tmp_path / "cache", base_url=mirror.as_uri() + "/")
    assert load("lastfm-kgcn", source=dest).n_users == 1872
    # A second fetch finds valid files and downloads nothing (the mirror may be gone).
    shutil.rmtree(mirror)
    assert fetch("lastfm-kgcn", dest=dest, base_url=mirror.as_uri() + "/") == dest


@requires_data("lastfm-kgcn")
def test_fetch_rejects_a_tampered_file_and_writes_nothing(tmp_path, real_root):
    mirror = tmp_path / "mirror"
    shutil.copytree(real_root / "lastfm-kgcn", mirror)
    (mirror / "kg.txt").chmod(0o644)
    with open(mirror / "kg.txt", "ab") as handle:
        handle.write(b"1\tevil\t2\n")
    dest = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="kg.txt .* does not match the pinned"):
        fetch("lastfm-kgcn", dest=dest, base_url=mirror.as_uri() + "/")
    assert list(dest.iterdir()) == []


@requires_data("hetrec-lastfm-2k")
def test_fetch_from_a_zip_archive(tmp_path, real_root):
    archive = tmp_path / "hetrec2011-lastfm-2k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in SOURCES["hetrec-lastfm-2k"].files:
            z.write(real_root / "hetrec-lastfm-2k" / f, arcname=f)
    dest = fetch("hetrec-lastfm-2k", dest=tmp_path / "h", base_url=archive.as_uri())
    assert sorted(p.name for p in dest.iterdir()) == sorted(SOURCES["hetrec-lastfm-2k"].files)


def test_fetch_unknown_name():
    with pytest.raises(DatasetNotFoundError, match="nothing to fetch"):
        fetch("synthetic")


def test_content_datasets_are_registered_by_the_features_layer():
    """data/ imports nothing above it: lastfm-kgcn-content comes from features/ through the
    "mmkgrec.datasets" entry point, loaded when the name is first asked for."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from mmkgrec.data import registry\n"
            "assert 'lastfm-kgcn-content' not in registry.DATASETS\n"
            "assert 'mmkgrec.features.lastfm' not in sys.modules\n"
            "assert registry.datasets()['lastfm-kgcn-content'].needs == "
            "('lastfm-kgcn', 'hetrec-lastfm-2k')\n"
            "assert 'lastfm-kgcn-content' in registry.available_names()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_dataset_whose_layer_cannot_be_imported_is_a_clear_error(monkeypatch):
    from importlib import metadata

    broken = metadata.EntryPoint("broken-content", "mmkgrec.no_such_layer:DATASET",
                                 registry.PLUGIN_GROUP)
    monkeypatch.setattr(metadata, "entry_points",
                        lambda group=None: [broken] if group == registry.PLUGIN_GROUP else [])
    monkeypatch.setattr(registry, "_plugin_errors", {})
    with pytest.raises(DatasetNotFoundError, match="cannot be imported here.*no_such_layer"):
        load("broken-content")
    assert "broken-content" not in registry.DATASETS
