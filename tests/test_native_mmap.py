"""Memory-mapped loading of native datasets: the same data as eager loading, without copies."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from mmkgrec.data.formats.native import MMAP_DIR, MMAP_STAMP, read_native, write_native
from mmkgrec.data.synthetic import generate


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    ds = generate("tiny", seed=1)
    return ds, write_native(ds, tmp_path_factory.mktemp("native") / "tiny")


def test_mmap_loading_gives_the_same_dataset(written):
    ds, directory = written
    eager = read_native(directory)
    mapped = read_native(directory, mmap=True)
    assert mapped.fingerprint() == eager.fingerprint() == ds.fingerprint()
    assert mapped.equals(eager) and mapped.equals(ds)
    assert mapped.meta == eager.meta and mapped.notes == eager.notes
    assert list(mapped.interactions.columns) == list(eager.interactions.columns)
    # Bulk arrays are read-only memory maps of the cache; eager arrays are private and writable.
    assert isinstance(mapped.triples, np.memmap) and not mapped.triples.flags.writeable
    for name in ds.modalities:
        assert isinstance(mapped.modalities[name], np.memmap)
        assert mapped.modality_masks[name].flags.writeable  # private: models wrap it as a tensor
        assert eager.modalities[name].flags.writeable
    assert not mapped.interactions["user"].to_numpy().flags.writeable
    assert eager.triples.flags.writeable


def test_cache_is_reused_and_rebuilt_when_the_files_change(tmp_path):
    directory = write_native(generate("tiny", seed=2), tmp_path / "d")
    read_native(directory, mmap=True)
    stamp = directory / MMAP_DIR / MMAP_STAMP
    first = stamp.stat().st_mtime_ns
    read_native(directory, mmap=True)
    assert stamp.stat().st_mtime_ns == first  # reused, not rewritten

    other = generate("tiny", seed=3)
    write_native(other, directory)  # same folder, different data
    again = read_native(directory, mmap=True)
    assert again.fingerprint() == other.fingerprint()
    assert json.loads(stamp.read_text())["fingerprint"] == other.fingerprint()


def test_cache_dir_and_environment_default(tmp_path, monkeypatch, written):
    ds, directory = written
    mapped = read_native(directory, mmap=True, cache_dir=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / MMAP_STAMP).is_file()
    assert mapped.fingerprint() == ds.fingerprint()
    monkeypatch.setenv("MMKGREC_MMAP", "1")
    assert isinstance(read_native(directory).triples, np.memmap)
    monkeypatch.setenv("MMKGREC_MMAP", "0")
    assert not isinstance(read_native(directory).triples, np.memmap)


def test_read_only_dataset_folder_falls_back_to_the_user_cache(tmp_path, monkeypatch):
    from mmkgrec.data.formats import native

    ds = generate("tiny", seed=4)
    directory = write_native(ds, tmp_path / "ro")
    monkeypatch.setenv("MMKGREC_CACHE", str(tmp_path / "cache"))
    write = native._write_cache

    def refuse_dataset_folder(cache, arrays, stamp):  # as a read-only folder would
        if cache.parent == directory:
            raise PermissionError(13, "Permission denied", str(cache))
        write(cache, arrays, stamp)

    monkeypatch.setattr(native, "_write_cache", refuse_dataset_folder)
    mapped = read_native(directory, mmap=True)
    assert mapped.fingerprint() == ds.fingerprint()
    assert not (directory / MMAP_DIR).exists()
    assert len(list((tmp_path / "cache" / "mmap").iterdir())) == 1
    assert isinstance(read_native(directory, mmap=True).triples, np.memmap)  # found again


def test_stale_cache_with_wrong_content_is_caught(tmp_path):
    ds = generate("tiny", seed=5)
    directory = write_native(ds, tmp_path / "t")
    read_native(directory, mmap=True)
    triples = directory / MMAP_DIR / "triples.npy"
    array = np.load(triples)
    array[0, 1] = (array[0, 1] + 1) % ds.n_relations  # tamper with the cache, keep its stamp
    np.save(triples, array)
    from mmkgrec.errors import DataFormatError

    with pytest.raises(DataFormatError, match="fingerprint|inconsistent"):
        read_native(directory, mmap=True)


def test_mapped_arrays_hold_no_private_memory(tmp_path):
    """Eager loading keeps the modality matrix in the heap; mmap keeps it in the page cache."""
    ds = generate("tiny", seed=6, n_items=4000, n_albums=400, n_artists=100, n_users=60,
                  interactions_per_user=20, modalities={"audio": 1024})  # 16 MB of features
    directory = write_native(ds, tmp_path / "big")
    read_native(directory, mmap=True)  # build the cache first

    def held(**options) -> int:
        tracemalloc.start()
        try:
            loaded = read_native(directory, **options)
            current, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert loaded.fingerprint() == ds.fingerprint()
        return current

    matrix_bytes = ds.modalities["audio"].nbytes
    assert held(mmap=False) > matrix_bytes
    assert held(mmap=True) < matrix_bytes / 4


def test_models_built_from_a_mapped_dataset_load_checkpoints(tmp_path, written):
    """Model buffers must not alias read-only maps (load_state_dict writes into buffers)."""
    import torch

    from mmkgrec.data.split import split
    from mmkgrec.models import MKGCN

    _, directory = written
    mapped = read_native(directory, mmap=True)
    data = split(mapped, protocol="topk", seed=0)
    model = MKGCN(mapped, data, MKGCN.Config(dim=8, n_heads=2), seed=0)
    other = MKGCN(mapped, data, MKGCN.Config(dim=8, n_heads=2), seed=1)
    model.load_state_dict(other.state_dict())
    for name, tensor in other.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_pooled_generator_is_linear_time_and_close_to_the_exact_one():
    """``candidates`` (the scaling benchmark's generator): valid, seeded, popularity close to the
    exact generator's, and unset by default (existing datasets unchanged)."""
    exact = generate("small", seed=0)
    pooled = generate("small", seed=0, candidates=200)
    assert "synthetic candidates" not in exact.meta and pooled.meta["synthetic candidates"] == 200
    assert pooled.fingerprint() == generate("small", seed=0, candidates=200).fingerprint()
    assert abs(len(pooled.interactions) - len(exact.interactions)) < 0.01 * len(exact.interactions)
    a = np.bincount(exact.interactions["item"], minlength=exact.n_items)
    b = np.bincount(pooled.interactions["item"], minlength=exact.n_items)
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert not pooled.interactions.duplicated(["user", "item"]).any()
