"""RecBole atomic files and the native Parquet format: exact round trips and malformed inputs."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmkgrec.data.dataset import MMKG, build_mmkg
from mmkgrec.data.formats import convert
from mmkgrec.data.formats.native import read_native, write_native
from mmkgrec.data.formats.recbole import (
    format_float_seq,
    parse_float_seq,
    read_recbole,
    write_recbole,
)
from mmkgrec.data.registry import read_directory
from mmkgrec.data.textio import sha256_of
from mmkgrec.errors import ConfigError, DataFormatError, MMKGRecError

READERS = {"recbole": read_recbole, "native": read_native}


def small_mmkg() -> MMKG:
    """6 items (a-d linked, d without plays; x, y unlinked), 4 users, two modalities."""
    interactions = pd.DataFrame({
        "user": ["u1", "u2", "u1", "u3", "u2", "u4", "u3"],
        "item": ["a", "b", "x", "c", "y", "a", "b"],
        "value": [5.0, 0.5, 3.25, 1e-7, 2.0, 4.0, 0.1],
        "timestamp": [1.6e9, 1.6e9 + 1, 1.7e9, 123.456, 0.0, 1.0, 2.5],
    })
    links = pd.DataFrame({"item": ["a", "b", "c", "d"], "entity": ["e:a", "e:b", "e:c", "e:d"]})
    triples = pd.DataFrame({
        "head": ["g:rock", "e:b", "e:a", "e:c", "e:a"],
        "relation": ["parent", "genre", "genre", "similar", "genre"],
        "tail": ["g:music", "g:rock", "g:rock", "e:a", "g:rock"],
    })
    attrs = pd.DataFrame({"item": ["a", "b", "x", "d"], "name": ["Ärtist A", "B  b", "X", ""],
                          "tags": ["rock pop", "", "jazz", "ambient \"chill\""]})
    ds = build_mmkg("tiny", interactions, threshold=1.0, links=links, triples=triples,
                    item_attrs=attrs)
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((ds.n_items, 3)) * 10.0 ** rng.integers(-30, 30, (ds.n_items, 3))
    ds.add_modality("audio", audio.astype(np.float32), np.array([1, 0, 1, 1, 0, 1], bool))
    ds.add_modality("image", rng.random((ds.n_items, 5)), np.array([0, 1, 1, 0, 1, 0], bool))
    return ds


def write(fmt: str, ds: MMKG, directory: Path) -> Path:
    return convert(ds, directory, fmt)


def assert_identical(ds: MMKG, back: MMKG) -> None:
    back.validate()
    assert back.equals(ds)
    assert back.name == ds.name and back.threshold == ds.threshold
    for key in ("users", "items", "entities", "relations"):
        assert getattr(back, key).tolist() == getattr(ds, key).tolist()
    for name, mask in ds.modality_masks.items():
        assert np.array_equal(back.modality_masks[name], mask)
        assert not back.modalities[name][~mask].any()


# ---- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["recbole", "native"])
def test_small_dataset_round_trip(tmp_path, fmt):
    ds = small_mmkg()
    assert ds.n_items == 6 and ds.items.tolist()[4:] == ["x", "y"]
    back = READERS[fmt](write(fmt, ds, tmp_path / "tiny"))
    assert_identical(ds, back)
    assert back.has_timestamps and list(back.item_attrs.columns) == ["name", "tags"]
    assert back.item_attrs["tags"].tolist() == ["rock pop", "", "", "ambient \"chill\"", "jazz", ""]
    assert back.modality_dims() == {"audio": 3, "image": 5}
    assert back.entities[:6].tolist() == ["e:a", "e:b", "e:c", "e:d", "item:x", "item:y"]
    assert read_directory(tmp_path / "tiny").equals(ds)  # the registry detects the format
    if fmt == "native":
        assert back.notes == ds.notes and back.provenance == ds.provenance and back.meta == ds.meta


def test_recbole_files_follow_the_atomic_conventions(tmp_path):
    write_recbole(small_mmkg(), tmp_path / "tiny")
    headers = {p.suffix: p.read_text().split("\n")[0] for p in (tmp_path / "tiny").glob("tiny.*")}
    assert headers[".inter"] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    assert headers[".kg"] == "head_id:token\trelation_id:token\ttail_id:token"
    assert headers[".link"] == "item_id:token\tentity_id:token"
    assert headers[".item"] == "item_id:token\tname:token\ttags:token\taudio:float_seq\timage:float_seq"
    item_rows = (tmp_path / "tiny" / "tiny.item").read_text().split("\n")
    assert item_rows[2].split("\t")[3] == ""  # item b has no audio: empty cell
    assert len(item_rows[1].split("\t")[3].split(" ")) == 3


@pytest.mark.parametrize("fmt", ["recbole", "native"])
@pytest.mark.parametrize("fixture", ["lastfm", "musicd"])
def test_real_dataset_round_trip(request, tmp_path, fmt, fixture):
    ds = request.getfixturevalue(fixture)
    assert_identical(ds, READERS[fmt](write(fmt, ds, tmp_path / ds.name)))


def test_float32_text_is_exact():
    bits = np.random.default_rng(1).integers(0, 2**32, 60_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values = values[np.isfinite(values)][:50_000].reshape(-1, 10)  # [5000, 10]
    mask = np.arange(len(values)) % 7 != 0
    values[~mask] = 0
    cells = format_float_seq(values, mask)
    parsed, present = parse_float_seq(Path("x.item"), "v", cells, np.arange(len(cells)) + 2, None)
    assert np.array_equal(present, mask)
    assert np.array_equal(parsed.view(np.uint32), values.view(np.uint32))  # bit-exact, -0.0 too


def test_all_absent_modality_keeps_its_width(tmp_path):
    ds = small_mmkg()
    ds.add_modality("lyrics", np.zeros((ds.n_items, 4)), np.zeros(ds.n_items, bool))
    back = read_recbole(write_recbole(ds, tmp_path / "tiny"))
    assert back.modality_dims()["lyrics"] == 4 and not back.modality_masks["lyrics"].any()
    assert back.equals(ds)


# ---- foreign RecBole files -------------------------------------------------------------------
def test_foreign_recbole_files(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "ml.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\treview:token_seq\n"
        "1\t10\t5\tgood film\n2\t11\t6\t\n1\t11\t7\tok\n")
    (d / "ml.item").write_text(
        "item_id:token\ttitle:token_seq\tyear:float\temb:float_seq\tempty:float_seq\n"
        "12\tNo Plays\t1999\t0.5 1.5\t\n10\tTen\t2001\t\t\n11\tEleven\t\t-1 2e-3\t\n")
    ds = read_recbole(d)
    assert ds.name == "ml" and ds.threshold == 0.0
    assert ds.items.tolist() == ["10", "11", "12"] and ds.entities.tolist() == ["10", "11", "12"]
    assert ds.interactions["value"].tolist() == [1.0, 1.0, 1.0] and ds.has_timestamps
    assert ds.item_attrs.to_dict("list") == {"title": ["Ten", "Eleven", "No Plays"],
                                             "year": ["2001", "", "1999"]}
    assert ds.modality_masks["emb"].tolist() == [False, True, True]
    assert ds.modalities["emb"].tolist() == [[0, 0], [-1, np.float32(2e-3)], [0.5, 1.5]]
    assert "empty" not in ds.modalities and any("review" in n for n in ds.notes)
    assert read_recbole(d, threshold=2.0).threshold == 2.0


def test_stems(tmp_path):
    write_recbole(small_mmkg(), tmp_path, name="one")
    write_recbole(small_mmkg(), tmp_path, name="two")
    with pytest.raises(DataFormatError, match="several datasets"):
        read_recbole(tmp_path)
    assert read_recbole(tmp_path, name="two").equals(small_mmkg())


def test_recbole_writer_refuses_what_it_cannot_represent(tmp_path):
    ds = small_mmkg()
    ds.item_attrs.loc[2, "name"] = "tab\there"
    with pytest.raises(MMKGRecError, match=r"column 'name' of item 'c'"):
        write_recbole(ds, tmp_path / "a")
    ds = small_mmkg()
    ds.users = np.append(ds.users, "lonely")  # a user without interactions
    with pytest.raises(MMKGRecError, match="native format"):
        write_recbole(ds, tmp_path / "b")
    assert read_native(write_native(ds, tmp_path / "c")).equals(ds)  # native holds it


def test_convert_rejects_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match="native, recbole"):
        convert(small_mmkg(), tmp_path, "csv")


# ---- malformed RecBole files ------------------------------------------------------------------
def edit_cell(text: str, row: int, col: int, value: str) -> str:
    lines = text.split("\n")
    cells = lines[row - 1].split("\t")
    cells[col] = value
    lines[row - 1] = "\t".join(cells)
    return "\n".join(lines)


MALFORMED = {
    "bad type": (".inter", lambda t: t.replace("user_id:token", "user_id:int", 1), 1, "unknown type"),
    "missing field": (".inter", lambda t: t.replace("item_id:token", "song:token", 1), 1,
                      "missing required field item_id"),
    "no type": (".kg", lambda t: t.replace("tail_id:token", "tail_id", 1), 1, "malformed header"),
    "wrong field type": (".link", lambda t: t.replace("entity_id:token", "entity_id:float", 1), 1,
                         "must have type token"),
    "ragged float_seq": (".item", lambda t: edit_cell(t, 4, 3, "1 2"), 4, "holds 2 values"),
    "NaN in float_seq": (".item", lambda t: edit_cell(t, 2, 4, "nan 1 2 3 4"), 2, "finite"),
    "text in float_seq": (".item", lambda t: edit_cell(t, 2, 3, "1 x 2"), 2, "finite"),
    "non-numeric rating": (".inter", lambda t: edit_cell(t, 3, 2, "lots"), 3, "rating"),
    "empty .inter": (".inter", lambda t: t.split("\n")[0] + "\n", None, "no data rows"),
    "item linked twice": (".link", lambda t: edit_cell(t, 3, 0, "a"), 3, "linked twice"),
    "item listed twice": (".item", lambda t: edit_cell(t, 5, 0, "a"), 5, "appears twice"),
    "bad sidecar": (".mmkgrec.json", lambda t: t.replace("{", "[", 1), None, "invalid JSON"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_recbole_files(tmp_path, case):
    suffix, edit, line, problem = MALFORMED[case]
    directory = write_recbole(small_mmkg(), tmp_path / "tiny")
    path = directory / f"tiny{suffix}"
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataFormatError, match=problem) as info:
        read_recbole(directory)
    assert Path(info.value.path).name == path.name
    if line is not None:
        assert info.value.line == line


# ---- malformed native files ------------------------------------------------------------------
def test_native_unknown_schema_version(tmp_path):
    directory = write_native(small_mmkg(), tmp_path / "n")
    manifest = json.loads((directory / "dataset.json").read_text())
    manifest["schema_version"] = 2
    (directory / "dataset.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(DataFormatError, match="unknown schema_version 2") as info:
        read_native(directory)
    assert info.value.path.endswith("dataset.json") and info.value.line == 3


def test_native_tampered_parquet(tmp_path):
    directory = write_native(small_mmkg(), tmp_path / "n")
    path = directory / "interactions.parquet"
    table = pq.read_table(path).to_pandas()
    table.loc[0, "value"] = 99.0
    table.to_parquet(path, index=False)
    with pytest.raises(DataFormatError, match="changed since written") as info:
        read_native(directory)
    assert info.value.path == str(path)
    # Same edit with the file hash forged: the data fingerprint still catches it.
    manifest = json.loads((directory / "dataset.json").read_text())
    manifest["files"]["interactions.parquet"] = sha256_of(path)
    (directory / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match="changed since written: the data's fingerprint"):
        read_native(directory)


def test_user_side_facts_round_trip_in_native_and_are_refused_by_recbole(tmp_path):
    ds = small_mmkg()
    plain = ds.fingerprint()
    ds.user_relations = np.array(["tagged", "follows"])
    ds.user_triples = np.array([[0, 0, 2], [3, 1, 7], [1, 0, 0]], dtype=np.int64)  # [3, 3]
    ds.validate()
    assert ds.fingerprint() != plain  # the facts are part of the data's identity
    back = read_native(write_native(ds, tmp_path / "n"))
    assert_identical(ds, back)
    np.testing.assert_array_equal(back.user_triples, ds.user_triples)
    assert back.user_relations.tolist() == ["tagged", "follows"]
    with pytest.raises(MMKGRecError, match="3 user-side KG facts have no place"):
        write_recbole(ds, tmp_path / "r")  # never dropped silently
    for bad, what in (([[4, 0, 1]], "user out of range"), ([[0, 2, 1]], "relation out of range"),
                      ([[0, 0, ds.n_entities]], "entity out of range"),
                      ([[0, 0, 1], [0, 0, 1]], "duplicate user_triples")):
        ds.user_triples = np.array(bad, dtype=np.int64)
        with pytest.raises(MMKGRecError, match=what):
            ds.validate()


def test_user_links_round_trip_in_native_and_are_refused_by_recbole(tmp_path):
    ds = small_mmkg()
    plain = ds.fingerprint()
    ds.user_links = MMKG.undirected_links(np.array([[2, 0], [0, 2], [1, 3], [3, 3]]))  # [2, 2]
    assert ds.user_links.tolist() == [[0, 2], [1, 3]]
    ds.validate()
    assert ds.fingerprint() != plain and ds.summary()["user-user links"] == 2
    back = read_native(write_native(ds, tmp_path / "n"))
    assert_identical(ds, back)
    np.testing.assert_array_equal(back.user_links, ds.user_links)
    with pytest.raises(MMKGRecError, match="2 user-user links have no place"):
        write_recbole(ds, tmp_path / "r")  # never dropped silently
    for bad, what in (([[0, 4]], "user out of range"), ([[2, 1]], "u < v"), ([[1, 1]], "u < v"),
                      ([[0, 1], [0, 1]], "duplicate user_links")):
        ds.user_links = np.array(bad, dtype=np.int64)
        with pytest.raises(MMKGRecError, match=what):
            ds.validate()


def test_native_count_and_schema_checks(tmp_path):
    directory = write_native(small_mmkg(), tmp_path / "n")
    manifest = json.loads((directory / "dataset.json").read_text())
    manifest["counts"]["users"] = 5
    (directory / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match="has 4 rows but dataset.json says 5"):
        read_native(directory)
    del manifest["threshold"]
    (directory / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match="threshold"):
        read_native(directory)


# ---- fuzzing read_recbole ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def atomic_files(tmp_path_factory) -> dict[str, bytes]:
    directory = write_recbole(small_mmkg(), tmp_path_factory.mktemp("fuzz") / "tiny")
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def mutate(data: bytes, how: str, where: float, junk: bytes, seed: int) -> bytes:
    at = int(where * len(data))
    if how == "truncate":
        return data[:at]
    if how == "junk":
        return data[:at] + junk + data[at:]
    rng = random.Random(seed)
    lines = data.split(b"\n")
    if how == "drop line":
        del lines[min(at * len(lines) // max(1, len(data)), len(lines) - 1)]
        return b"\n".join(lines)
    rows = [line.split(b"\t") for line in lines]
    order = list(range(max(len(r) for r in rows)))
    rng.shuffle(order)
    first = 1 if how == "shuffle body" else 0  # shuffle all columns, or all but the header's
    shuffled = [[r[i] for i in order if i < len(r)] for r in rows[first:]]
    return b"\n".join(b"\t".join(r) for r in rows[:first] + shuffled)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["tiny.inter", "tiny.kg", "tiny.link", "tiny.item", "tiny.mmkgrec.json"]),
       how=st.sampled_from(["truncate", "junk", "shuffle", "shuffle body", "drop line"]),
       where=st.floats(0, 1), junk=st.binary(min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_fuzzed_recbole_files_read_or_raise_our_error(atomic_files, target, how, where, junk, seed):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "tiny"
        directory.mkdir()
        for name, data in atomic_files.items():
            (directory / name).write_bytes(mutate(data, how, where, junk, seed) if name == target else data)
        try:
            dataset = read_recbole(directory)
        except MMKGRecError:
            return
        dataset.validate()
