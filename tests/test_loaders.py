"""Raw-format loaders (KGCN, MKGCN, HetRec), robust text reading, and the real datasets' counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import requires_data
from mmkgrec.data.formats.hetrec import attach_friendships, attach_hetrec_text, read_hetrec
from mmkgrec.data.formats.kgcn import read_kgcn
from mmkgrec.data.formats.mkgcn import read_mkgcn, read_modality_file
from mmkgrec.data.textio import Column, read_table
from mmkgrec.errors import DataFormatError, MMKGRecError

KGCN_FILES = {
    "user_artists.dat": "userID\tartistID\tweight\n1\t10\t5\n1\t11\t3\n2\t10\t7\n2\t99\t1\n3\t12\t2\n",
    "item_index2entity_id.txt": "10\t0\n11\t1\n12\t2\n",
    "kg.txt": "0\tgenre\t100\n1\tgenre\t100\n2\tlabel\t101\n0\tgenre\t100\n",
}
MKGCN_FILES = {
    "userID2itemID4ratings.tsv": "userID\titemID\trating\nu1\ta\t9\nu1\tb\t3\nu2\tb\t5\nu3\tc\t1\n",
    "itemID2entityID.txt": "itemID\tentityID\na\t1\nb\t2\nc\t3\n",
    "kg.txt": "head\trelation\ttail\n1\trel\t7\n2\trel\t7\n",
}


def write_files(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return directory


# ---- small hand-made files ---------------------------------------------------------------------
def test_kgcn_small(tmp_path):
    ds = read_kgcn(write_files(tmp_path, KGCN_FILES), name="small")
    assert list(ds.items) == ["10", "11", "12"]
    assert list(ds.users) == ["1", "2", "3"]  # artist 99 is unlinked: its row is dropped
    assert list(ds.entities) == ["0", "1", "2", "100", "101"]
    assert list(ds.relations) == ["genre", "label"]
    assert ds.triples.tolist() == [[0, 0, 3], [1, 0, 3], [2, 1, 4]]  # duplicate removed
    assert len(ds.interactions) == 4
    assert any("dropped 1 of 5" in n for n in ds.notes)
    assert any("1 duplicate triples" in n for n in ds.notes)
    assert {r["role"] for r in ds.provenance} == {"interactions", "links", "kg"}


def test_mkgcn_threshold_and_modalities(tmp_path):
    files = dict(MKGCN_FILES)
    files["modals/modal_1.tsv"] = "a\t0.5\t1.5\nc\t2\t3\n"
    files["modals/modal_2.tsv"] = "itemID\tf1\tf2\tf3\nb\t1\t2\t3\n"
    ds = read_mkgcn(write_files(tmp_path, files))
    assert ds.positive_mask().tolist() == [True, False, True, False]
    assert ds.modality_dims() == {"modal_1": 2, "modal_2": 3}
    assert ds.modality_masks["modal_1"].tolist() == [True, False, True]
    assert ds.modalities["modal_1"][1].tolist() == [0.0, 0.0]  # absent rows stay zero
    assert ds.modalities["modal_2"][1].tolist() == [1.0, 2.0, 3.0]


def test_crlf_bom_and_latin1_are_read(tmp_path):
    files = {k: v.replace("\n", "\r\n") for k, v in KGCN_FILES.items()}
    files["user_artists.dat"] = b"\xef\xbb\xbf" + files["user_artists.dat"].encode()
    plain = read_kgcn(write_files(tmp_path / "a", KGCN_FILES))
    quirky = read_kgcn(write_files(tmp_path / "b", files))
    assert plain.fingerprint() == quirky.fingerprint()
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("id\tname\n1\tBj\xf6rk\n".encode("latin-1"))
    frame = read_table(latin, [Column("id", "int"), Column("name")])
    assert frame["name"].tolist() == ["Björk"] and frame["_line"].tolist() == [2]


@pytest.mark.parametrize(
    ("file", "content", "line", "fragment"),
    [
        ("user_artists.dat", "userID\tartistID\tweight\n1\t10\t5\n1\t11\n", 3, "expected 3 fields"),
        ("user_artists.dat", "userID\tartistID\tweight\n1\t10\tlots\n", 2, "must be a finite number"),
        ("user_artists.dat", "userID\tartistID\tweight\n1\t10\tnan\n", 2, "must be a finite number"),
        ("user_artists.dat", "userID\tartistID\tweight\n", None, "no data rows"),
        ("user_artists.dat", "", None, "no data rows"),
        ("kg.txt", "0\tgenre\t100\n\tgenre\t7\n", 2, "empty value"),
        ("item_index2entity_id.txt", "10\t0\n10\t1\n", 2, "linked twice"),
        ("item_index2entity_id.txt", "10\t0\n11\t0\n", 2, "entity of two items"),
        ("kg.txt", "0\tgenre\t1\x0000\n", 1, "NUL byte"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path, file, content, line, fragment):
    write_files(tmp_path, {**KGCN_FILES, file: content})
    with pytest.raises(DataFormatError) as info:
        read_kgcn(tmp_path)
    assert info.value.path.endswith(file)
    assert info.value.line == line
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        ("a\t1\t2\nb\t1\n", 2, "has 1 features but the first row has 2"),
        ("a\t1\tinf\n", 1, "finite"),
        ("a\t1\t1e60\n", 1, "finite"),  # overflows float32
        ("zz\t1\t2\n", 1, "unknown item id 'zz'"),
        ("a\t1\t2\na\t3\t4\n", 2, "appears twice"),
        ("\n\n", None, "no data rows"),
    ],
)
def test_modality_file_errors(tmp_path, content, line, fragment):
    path = tmp_path / "modal_1.tsv"
    path.write_text(content)
    with pytest.raises(DataFormatError) as info:
        read_modality_file(path, np.array(["a", "b", "c"]))
    assert info.value.line == line and fragment in str(info.value)


def test_missing_file_is_reported(tmp_path):
    write_files(tmp_path, {k: v for k, v in KGCN_FILES.items() if k != "kg.txt"})
    with pytest.raises(DataFormatError, match="kg.txt: file not found"):
        read_kgcn(tmp_path)


def _mutate(text: bytes, data) -> bytes:
    kind = data.draw(st.sampled_from(["truncate", "junk", "shuffle", "drop_line", "dup_line"]))
    if kind == "truncate":
        return text[: data.draw(st.integers(0, len(text)))]
    if kind == "junk":
        pos = data.draw(st.integers(0, len(text)))
        return text[:pos] + data.draw(st.binary(min_size=1, max_size=12)) + text[pos:]
    lines = text.split(b"\n")
    i = data.draw(st.integers(0, len(lines) - 1))
    if kind == "shuffle":
        cells = lines[i].split(b"\t")
        lines[i] = b"\t".join(data.draw(st.permutations(cells)))
    elif kind == "drop_line":
        del lines[i]
    else:
        lines.insert(i, lines[i])
    return b"\n".join(lines)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), which=st.sampled_from(["kgcn", "mkgcn"]))
def test_fuzzed_raw_files_load_or_raise_our_error(tmp_path_factory, data, which):
    base = KGCN_FILES if which == "kgcn" else {**MKGCN_FILES, "modals/modal_1.tsv": "a\t1\t2\nb\t3\t4\n"}
    victim = data.draw(st.sampled_from(sorted(base)))
    files = {**base, victim: _mutate(base[victim].encode(), data)}
    directory = write_files(tmp_path_factory.mktemp("fuzz"), files)
    try:
        ds = (read_kgcn if which == "kgcn" else read_mkgcn)(directory)
    except MMKGRecError:
        return
    ds.validate()


# ---- the real datasets ---------------------------------------------------------------------------
def test_lastfm_kgcn_counts(lastfm):
    s = lastfm.summary()
    assert (s["users"], s["items"], s["entities"], s["relations"]) == (1872, 3846, 9366, 60)
    assert s["triples (unique)"] == 15518
    assert s["positives (unique user-item)"] == 21173


def test_music_d_counts(musicd):
    s = musicd.summary()
    assert s["positives (unique user-item)"] == 35119
    assert s["users with a positive"] == 4838 and s["items with a positive"] == 2658
    assert (s["items"], s["entities"], s["relations"]) == (4836, 6775, 1)
    assert s["triples (unique)"] == 36264 - 367
    assert any("367 duplicate triples of 36264" in n for n in musicd.notes)


@requires_data("hetrec-lastfm-2k")
def test_hetrec_counts(real_root):
    ds = read_hetrec(real_root / "hetrec-lastfm-2k")
    s = ds.summary()
    assert (s["users"], s["items"], s["interaction rows"]) == (1892, 17632, 92834)
    assert (s["hetrec tags"], s["hetrec tag-assignment rows"]) == (11946, 186478)
    assert ds.item_attrs.loc[0, "name"] == "MALICE MIZER"
    assert any("1538 of 186478 tag assignments" in n for n in ds.notes)
    assert s["user-user links"] == 25434 // 2  # the file lists each friendship both ways


@requires_data("lastfm-kgcn", "hetrec-lastfm-2k")
def test_lastfm_joined_with_hetrec_text(lastfm, real_root):
    ds = attach_hetrec_text(read_kgcn(real_root / "lastfm-kgcn"), real_root / "hetrec-lastfm-2k")
    assert ds.fingerprint() == lastfm.fingerprint()  # text is added, nothing else changes
    assert (ds.item_attrs["name"] != "").sum() == 3846
    row = int(np.flatnonzero(ds.items == "2")[0])
    assert ds.item_attrs.loc[row, "name"] == "Diary of Dreams"
    assert "darkwave" in ds.item_attrs.loc[row, "tags"]


@requires_data("lastfm-kgcn", "hetrec-lastfm-2k")
def test_lastfm_gets_hetrec_friendships_as_user_links(lastfm, real_root):
    """User ids are HetRec's: each friendship between two lastfm-kgcn users (1,872 of HetRec's
    1,892) becomes one (u, v) link, u < v; the file lists it in both directions."""
    folder = real_root / "hetrec-lastfm-2k"
    ds = attach_friendships(read_kgcn(real_root / "lastfm-kgcn"), folder)
    ds.validate()
    rows = pd.read_csv(folder / "user_friends.dat", sep="\t", dtype=str)
    known = rows["userID"].isin(ds.users) & rows["friendID"].isin(ds.users)
    file_pairs = {frozenset(p) for p in zip(rows["userID"][known], rows["friendID"][known])}
    links = {frozenset(p) for p in zip(ds.users[ds.user_links[:, 0]], ds.users[ds.user_links[:, 1]])}
    assert links == file_pairs and len(ds.user_links) == 12532
    assert f"{int((~known).sum())} rows name a user outside the dataset" in ds.notes[-1]
    assert ds.fingerprint() != lastfm.fingerprint()  # links are part of the data's identity


def test_friendships_keep_each_pair_once_and_count_what_they_drop(tmp_path):
    """Both directions, a repeat, a self link and an unknown user: two links, the rest noted."""
    (tmp_path / "user_friends.dat").write_text(
        "userID\tfriendID\n10\t11\n11\t10\n10\t11\n12\t12\n12\t10\n10\t99\n")
    ds = small_mmkg_with_users(["10", "11", "12"])
    attach_friendships(ds, tmp_path)
    ds.validate()
    assert ds.user_links.tolist() == [[0, 1], [0, 2]]
    assert "6 rows -> 2 user-user links; 1 rows name a user outside the dataset" in ds.notes[-1]
    assert ds.provenance[-1]["role"] == "hetrec friendships user_friends.dat"


def small_mmkg_with_users(users):
    from dataclasses import replace

    from test_formats_roundtrip import small_mmkg

    ds = small_mmkg()
    return replace(ds, users=np.array(users + [f"x{k}" for k in range(ds.n_users - len(users))]))
