"""Hostile input to every data reader (issue 15, sections 2 and 3).

Each broken file either loads with the counts of the intact one or raises the project's own
error naming the file (CLI: exit code 2, no traceback); a file the format allows to be absent
may instead be reported in a note. One huge field never allocates a fixed-width array of it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import requires_data, run_cli
from mmkgrec.data.formats.hetrec import read_hetrec
from mmkgrec.data.formats.kgcn import read_kgcn
from mmkgrec.data.formats.mkgcn import read_mkgcn
from mmkgrec.data.formats.native import read_native, write_native
from mmkgrec.data.formats.recbole import read_recbole, write_recbole
from mmkgrec.data.textio import MAX_FIELD_CHARS, MAX_TEXT_CHARS
from mmkgrec.errors import DataFormatError, MMKGRecError
from mmkgrec.features.catalogue import read_catalogue
from test_formats_roundtrip import small_mmkg
from test_loaders import KGCN_FILES, MKGCN_FILES, write_files

MB = 1_000_000
MODAL = "a\t1\t2\nb\t3\t4\n"
HETREC_FILES = {
    "artists.dat": "id\tname\turl\tpictureURL\n1\tAlpha\thttp://a\t\n2\tBeta\thttp://b\thttp://b.jpg\n"
                   "3\tGamma\t\t\n",
    "tags.dat": "tagID\ttagValue\n1\trock\n2\tjazz\n",
    "user_artists.dat": "userID\tartistID\tweight\n10\t1\t5\n10\t2\t3\n11\t3\t7\n",
    "user_taggedartists.dat": "userID\tartistID\ttagID\tday\tmonth\tyear\n10\t1\t1\t1\t4\t2009\n"
                              "11\t2\t2\t1\t5\t2010\n10\t3\t1\t1\t4\t2009\n",
    "user_friends.dat": "userID\tfriendID\n10\t11\n11\t10\n",
}
CATALOGUE = "item_id,title,tags\n1,One,rock\n2,Two,jazz|pop\n3,Three,\n"


def recbole_files(sidecar: bool = True) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_recbole(small_mmkg(), Path(tmp) / "tiny")
        if not sidecar:
            (directory / "tiny.mmkgrec.json").unlink()
        return {p.name: p.read_bytes() for p in directory.iterdir()}


def native_files() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_native(small_mmkg(), Path(tmp) / "n")
        return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def _catalogue_counts(directory: Path) -> dict:
    cat = read_catalogue(directory / "cat.csv")
    return {"items": len(cat), "columns": cat.columns}


# reader name -> (read(directory), files, subdirectory the reader is pointed at)
READERS = {
    "kgcn": (read_kgcn, KGCN_FILES),
    "mkgcn": (read_mkgcn, {**MKGCN_FILES, "modals/modal_1.tsv": MODAL}),
    "hetrec": (read_hetrec, HETREC_FILES),
    "recbole": (read_recbole, recbole_files()),
    "recbole-foreign": (read_recbole, recbole_files(sidecar=False)),
    "native": (read_native, native_files()),
    "catalogue": (_catalogue_counts, {"cat.csv": CATALOGUE}),
}
KG_FILES = {"kgcn": ["kg.txt"], "mkgcn": ["kg.txt"], "recbole": ["tiny.kg"],
            "recbole-foreign": ["tiny.kg"]}
VALUE_CELLS = {  # (file, column) whose values must be >= 0: plays, ratings, KGCN/MKGCN entity ids
    "kgcn": [("user_artists.dat", 2), ("item_index2entity_id.txt", 1), ("kg.txt", 0), ("kg.txt", 2)],
    "mkgcn": [("userID2itemID4ratings.tsv", 2), ("itemID2entityID.txt", 1), ("kg.txt", 0),
              ("kg.txt", 2)],
    "hetrec": [("user_artists.dat", 2)],
    "recbole": [("tiny.inter", 2)],
    "recbole-foreign": [("tiny.inter", 2)],
}
HEADERLESS = {("kgcn", "item_index2entity_id.txt"), ("kgcn", "kg.txt"), ("mkgcn", "modals/modal_1.tsv")}
PLAUSIBLE_HEADER = {"item_index2entity_id.txt": "itemID\tentityID", "kg.txt": "head\trelation\ttail",
                    "modals/modal_1.tsv": "itemID\tf1\tf2"}  # what a header would say
OPTIONAL = {"mkgcn": {"modals/modal_1.tsv"},  # absent modality files mean absent modalities
            "recbole": {"tiny.mmkgrec.json"}, "recbole-foreign": {"tiny.item"}}
JSON_EDITS = {  # file -> [(key path, hostile value)]; strict types
    "dataset.json": [(("schema_version",), True), (("counts", "users"), "4"),
                     (("threshold",), "1"), (("has_timestamps",), 1), (("counts", "triples"), 5.0),
                     (("modalities", "audio"), "3"), (("threshold",), None)],
    "tiny.mmkgrec.json": [(("version",), True), (("threshold",), "1"), (("modalities", "audio"), "3"),
                          (("counts", "triples"), "5"), (("name",), 7)],
}


def summary(reader: str, directory: Path) -> dict:
    read = READERS[reader][0]
    out = read(directory)
    return out if isinstance(out, dict) else out.summary()


_BASE: dict[str, dict] = {}


def base_summary(reader: str) -> dict:
    if reader not in _BASE:
        with tempfile.TemporaryDirectory() as tmp:
            _BASE[reader] = summary(reader, write_files(Path(tmp) / "d", READERS[reader][1]))
    return _BASE[reader]


def _text(files: dict, name: str) -> str:
    data = files[name]
    return data.decode("utf-8") if isinstance(data, bytes) else data


def _lines(text: str) -> list[str]:
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


# ---- the mutation classes ------------------------------------------------------------------------
def mutation(reader: str, data) -> tuple[str, dict, bool]:
    """Draw a hostile edit: (victim file, edited files, whether a note may report it instead)."""
    files = dict(READERS[reader][1])
    text_files = sorted(n for n in files if not n.endswith((".parquet", ".json")))
    json_files = sorted(n for n in files if n.endswith(".json"))
    sep = "," if reader == "catalogue" else "\t"
    kinds = ["drop_file"]
    if text_files:
        kinds += ["long_field", "repeated_header", "whitespace_line"]
    if reader in KG_FILES:
        kinds.append("swap_kg_columns")
    if reader in VALUE_CELLS:
        kinds.append("negative_value")
    with_header = [n for n in text_files if (reader, n) not in HEADERLESS and reader != "catalogue"]
    if with_header:
        kinds.append("header_only")
    if json_files:
        kinds += ["json_type", "json_nesting"]
    kind = data.draw(st.sampled_from(kinds), label="kind")
    note_ok = False

    if kind == "drop_file":
        victim = data.draw(st.sampled_from(sorted(set(files) - OPTIONAL.get(reader, set()))))
        del files[victim]
    elif kind == "json_type":
        victim = data.draw(st.sampled_from([n for n in json_files if n in JSON_EDITS]))
        keys, value = data.draw(st.sampled_from(JSON_EDITS[victim]))
        content = json.loads(_text(files, victim))
        target = content
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
        files[victim] = json.dumps(content, indent=2)
    elif kind == "json_nesting":
        victim = data.draw(st.sampled_from(json_files))
        depth = data.draw(st.sampled_from([10_000, 100_000]))
        content = json.loads(_text(files, victim))
        content["provenance" if victim == "dataset.json" else "name"] = "@"
        files[victim] = json.dumps(content).replace('"@"', "[" * depth + "]" * depth)
    else:
        if kind == "swap_kg_columns":
            victim = data.draw(st.sampled_from(KG_FILES[reader]))
        elif kind == "negative_value":
            victim, column = data.draw(st.sampled_from(VALUE_CELLS[reader]))
        elif kind == "header_only":
            victim = data.draw(st.sampled_from(with_header))
        else:
            victim = data.draw(st.sampled_from(text_files))
        lines = _lines(_text(files, victim))
        headerless = (reader, victim) in HEADERLESS
        first = 0 if headerless else 1  # first data line
        if kind == "long_field":  # (a catalogue's header cell would rename its column)
            row = data.draw(st.integers(1 if reader == "catalogue" else 0, len(lines) - 1))
            cells = lines[row].split(sep)
            col = data.draw(st.integers(0, len(cells) - 1))
            cells[col] = "x" * data.draw(st.sampled_from([MAX_FIELD_CHARS + 1, MB]))
            lines[row] = sep.join(cells)
        elif kind == "repeated_header":
            header = PLAUSIBLE_HEADER[victim] if headerless else lines[0]
            lines.insert(data.draw(st.integers(0, len(lines))), header)
        elif kind == "whitespace_line":
            blank = data.draw(st.sampled_from([" ", "\t", "  \t ", "\t" * 3]))
            at = data.draw(st.integers(first, len(lines) - 1))
            if reader == "catalogue" or data.draw(st.booleans()):  # catalogues skip blank rows
                lines.insert(at, blank)
            else:
                lines[at] = blank
        elif kind == "swap_kg_columns":
            i, j = data.draw(st.sampled_from([(0, 1), (1, 2), (0, 2)]))
            for row in range(first, len(lines)):
                cells = lines[row].split("\t")
                cells[i], cells[j] = cells[j], cells[i]
                lines[row] = "\t".join(cells)
        elif kind == "negative_value":
            row = data.draw(st.integers(first, len(lines) - 1))
            cells = lines[row].split("\t")
            cells[column] = "-" + (cells[column] if cells[column] != "0" else "1")
            lines[row] = "\t".join(cells)
        elif kind == "header_only":
            lines = lines[:1]
            note_ok = True
        files[victim] = _join(lines)
    return victim, files, note_ok or kind == "drop_file"


def check_outcome(reader: str, directory: Path, victim: str, note_ok: bool) -> None:
    """Loads with identical counts, or raises our error naming the file (or notes it, when allowed)."""
    try:
        got = summary(reader, directory)
    except MMKGRecError as error:
        assert Path(victim).name in str(error), f"the error does not name {victim}: {error}"
        return
    if got != base_summary(reader) and note_ok and reader != "catalogue":
        notes = READERS[reader][0](directory).notes
        if any(Path(victim).name in note for note in notes):
            return
    assert got == base_summary(reader), f"{victim} changed the counts silently"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reader=st.sampled_from(sorted(READERS)), data=st.data())
def test_fuzzed_hostile_files_keep_counts_or_raise_naming_the_file(reader, data):
    victim, files, note_ok = mutation(reader, data)
    with tempfile.TemporaryDirectory() as tmp:
        check_outcome(reader, write_files(Path(tmp) / "d", files), victim, note_ok)


# ---- 2. one long field ---------------------------------------------------------------------------
LONG_CELLS = [  # (reader, file, line index, column)
    ("kgcn", "user_artists.dat", 1, 0), ("kgcn", "item_index2entity_id.txt", 1, 0),
    ("kgcn", "kg.txt", 1, 1), ("mkgcn", "userID2itemID4ratings.tsv", 2, 1),
    ("mkgcn", "itemID2entityID.txt", 1, 0), ("mkgcn", "kg.txt", 1, 1),
    ("mkgcn", "modals/modal_1.tsv", 1, 0), ("hetrec", "artists.dat", 2, 1),
    ("hetrec", "tags.dat", 1, 1), ("recbole", "tiny.inter", 3, 0), ("recbole", "tiny.kg", 2, 1),
    ("recbole", "tiny.link", 1, 1), ("recbole", "tiny.inter", 0, 1),
]


@pytest.mark.parametrize(("reader", "file", "row", "col"), LONG_CELLS)
def test_one_megabyte_field_is_refused_without_a_big_allocation(tmp_path, reader, file, row, col):
    files = dict(READERS[reader][1])
    lines = _lines(_text(files, file))
    cells = lines[row].split("\t")
    cells[col] = "x" * MB
    lines[row] = "\t".join(cells)
    directory = write_files(tmp_path, {**files, file: _join(lines)})
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError) as info:
            READERS[reader][0](directory)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.path.endswith(Path(file).name) and info.value.line == row + 1
    assert "exceeds the limit" in info.value.problem and len(str(info.value)) < 400
    assert peak < 64 * MB  # (a <U1000000 array of even 100 rows is 400 MB)


def test_free_text_has_its_own_larger_cap(tmp_path):
    files = dict(HETREC_FILES)
    files["artists.dat"] = files["artists.dat"].replace("Alpha", "A" * 5000)
    ds = read_hetrec(write_files(tmp_path / "ok", files))
    assert len(ds.item_attrs.loc[0, "name"]) == 5000
    files["artists.dat"] = files["artists.dat"].replace("A" * 5000, "A" * (MAX_TEXT_CHARS + 1))
    with pytest.raises(DataFormatError, match="column 'name' exceeds the limit of 131,072"):
        read_hetrec(write_files(tmp_path / "bad", files))


def test_ids_at_the_cap_do_not_widen_every_row(tmp_path):
    """A 1,000-character user id in 20,000 rows: no [rows] fixed-width copy at its width."""
    n = 20_000
    rows = [f"{'u' * 1000 if i == 7 else i % 500}\t{i % 300}\t{i % 9}" for i in range(n)]
    write_files(tmp_path, {
        "user_artists.dat": "userID\tartistID\tweight\n" + "\n".join(rows) + "\n",
        "item_index2entity_id.txt": "".join(f"{i}\t{i}\n" for i in range(300)),
        "kg.txt": "".join(f"{i}\tr{i % 5}\t{300 + i % 50}\n" for i in range(300)),
    })
    tracemalloc.start()
    try:
        ds = read_kgcn(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds.n_users == 501 and len(ds.interactions) == n
    assert peak < 40 * MB  # fixed-width rows were ~160 MB


# ---- 3. broken files that loaded without a word ------------------------------------------------
def _edit(reader: str, file: str, edit) -> dict:
    files = dict(READERS[reader][1])
    files[file] = _join(edit(_lines(_text(files, file))))
    return files


def _fails(tmp_path, reader: str, files: dict, file: str, fragment: str, line: int | None = None):
    directory = write_files(tmp_path, files)
    with pytest.raises(DataFormatError) as info:
        READERS[reader][0](directory)
    assert Path(info.value.path).name == Path(file).name, str(info.value)
    assert fragment in info.value.problem, str(info.value)
    if line is not None:
        assert info.value.line == line
    return info.value


@pytest.mark.parametrize(("reader", "file", "at", "header", "line"), [
    ("mkgcn", "itemID2entityID.txt", 1, "itemID\tentityID", 2),  # item "itemID"
    ("mkgcn", "kg.txt", 2, "head\trelation\ttail", 3),
    ("kgcn", "kg.txt", 2, "head\trelation\ttail", 3),  # relation "relation"
    ("hetrec", "user_artists.dat", 3, "userID\tartistID\tweight", 4),
    ("recbole", "tiny.kg", 3, "head_id:token\trelation_id:token\ttail_id:token", 4),
    ("recbole", "tiny.link", 2, "item_id:token\tentity_id:token", 3),
    ("recbole", "tiny.item", 2, None, 3),
])
def test_a_repeated_header_row_is_an_error(tmp_path, reader, file, at, header, line):
    files = _edit(reader, file, lambda lines: lines[:at] + [header or lines[0]] + lines[at:])
    _fails(tmp_path, reader, files, file, "a header row among the data", line)


def test_a_leading_header_in_a_headerless_kgcn_file_is_still_a_header(tmp_path):
    files = _edit("kgcn", "kg.txt", lambda lines: ["head\trelation\ttail"] + lines)
    assert read_kgcn(write_files(tmp_path, files)).summary() == base_summary("kgcn")


def test_a_catalogue_header_row_among_the_items_is_an_error(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text(CATALOGUE + "item_id,title,tags\n4,Four,\n")
    with pytest.raises(DataFormatError, match="header row among the items") as info:
        read_catalogue(path)
    assert info.value.line == 5 and info.value.path == str(path)


@requires_data("lastfm-kgcn")
@pytest.mark.parametrize("swap", [(0, 1), (1, 2)])
def test_swapped_kgcn_kg_columns_are_an_error(tmp_path, real_root, swap):
    """The real kg.txt with head/relation (or relation/tail) swapped loaded as 3,846 relations."""
    for f in (real_root / "lastfm-kgcn").iterdir():
        shutil.copy(f, tmp_path / f.name)
    lines = _lines((tmp_path / "kg.txt").read_text())
    i, j = swap
    for n, row in enumerate(lines):
        cells = row.split("\t")
        cells[i], cells[j] = cells[j], cells[i]
        lines[n] = "\t".join(cells)
    (tmp_path / "kg.txt").write_text(_join(lines))
    with pytest.raises(DataFormatError, match="are the columns swapped") as info:
        read_kgcn(tmp_path)
    assert info.value.path.endswith("kg.txt") and info.value.line == 1


def test_a_relation_column_of_entity_ids_is_an_error_even_when_they_are_integers(tmp_path):
    rows = [f"{i}\t{(i + 1) % 30}\t{100 + i % 3}" for i in range(30)]  # relation: entity ids
    files = {"user_artists.dat": "userID\tartistID\tweight\n1\t10\t5\n",
             "item_index2entity_id.txt": "".join(f"{10 + i}\t{i}\n" for i in range(30)),
             "kg.txt": _join(rows)}
    _fails(tmp_path, "kgcn", files, "kg.txt", "the relation column looks like entity ids")


def test_integer_relations_of_an_integer_coded_kg_still_load(tmp_path):
    """KGAT-style KGs number relations and entities alike: few relations, many triples."""
    d = tmp_path / "kgat"
    write_files(d, {
        "kgat.inter": "user_id:token\titem_id:token\n" + "".join(f"u{i}\t{i}\n" for i in range(20)),
        "kgat.link": "item_id:token\tentity_id:token\n" + "".join(f"{i}\t{i}\n" for i in range(20)),
        "kgat.kg": "head_id:token\trelation_id:token\ttail_id:token\n"
                   + "".join(f"{i}\t{i % 3}\t{20 + i % 7}\n" for i in range(20)),
    })
    ds = read_recbole(d)
    assert ds.n_relations == 3 and len(ds.triples) == 20


@pytest.mark.parametrize("swap", [(0, 1), (1, 2)])
def test_swapped_recbole_kg_columns_are_an_error(tmp_path, swap):
    i, j = swap

    def edit(lines):
        for n in range(1, len(lines)):
            cells = lines[n].split("\t")
            cells[i], cells[j] = cells[j], cells[i]
            lines[n] = "\t".join(cells)
        return lines
    _fails(tmp_path, "recbole-foreign", _edit("recbole-foreign", "tiny.kg", edit), "tiny.kg",
           "are the columns swapped")


@pytest.mark.parametrize(("file", "row", "col", "value"), [
    ("kg.txt", 1, 2, "-100"), ("kg.txt", 0, 0, "0.0"), ("kg.txt", 2, 2, "0101"),
    ("kg.txt", 0, 0, "genre"), ("item_index2entity_id.txt", 1, 1, "-1"),
    ("item_index2entity_id.txt", 0, 1, "e0"), ("item_index2entity_id.txt", 2, 1, "+2"),
])
def test_kgcn_entity_ids_must_be_non_negative_integers(tmp_path, file, row, col, value):
    def edit(lines):
        cells = lines[row].split("\t")
        cells[col] = value
        lines[row] = "\t".join(cells)
        return lines
    _fails(tmp_path, "kgcn", _edit("kgcn", file, edit), file, "is not a KGCN entity id", row + 1)


def test_mkgcn_entity_ids_must_be_non_negative_integers(tmp_path):
    files = _edit("mkgcn", "itemID2entityID.txt", lambda lines: lines[:2] + ["b\t-2"] + lines[3:])
    _fails(tmp_path, "mkgcn", files, "itemID2entityID.txt", "is not a MKGCN entity id", 3)


@pytest.mark.parametrize(("reader", "file", "row"), [
    ("kgcn", "user_artists.dat", 2), ("mkgcn", "userID2itemID4ratings.tsv", 1),
    ("hetrec", "user_artists.dat", 3), ("recbole", "tiny.inter", 4),
])
def test_negative_play_counts_and_ratings_are_an_error(tmp_path, reader, file, row):
    def edit(lines):
        cells = lines[row].split("\t")
        cells[2] = "-3"
        lines[row] = "\t".join(cells)
        return lines
    _fails(tmp_path, reader, _edit(reader, file, edit), file, "must be >= 0, found '-3'", row + 1)


@pytest.mark.parametrize(("reader", "file"), [
    ("kgcn", "item_index2entity_id.txt"), ("mkgcn", "itemID2entityID.txt"),
    ("mkgcn", "modals/modal_1.tsv"), ("hetrec", "artists.dat"), ("recbole", "tiny.link"),
    ("recbole", "tiny.item"),
])
def test_a_whitespace_only_line_is_an_error(tmp_path, reader, file):
    files = _edit(reader, file, lambda lines: lines[:1] + [" \t "] + lines[2:])  # row 2 blanked
    _fails(tmp_path, reader, files, file, "only whitespace", 2)


def test_empty_lines_are_still_skipped(tmp_path):
    files = {k: v.replace("\n", "\n\n") for k, v in KGCN_FILES.items()}
    assert read_kgcn(write_files(tmp_path, files)).summary() == base_summary("kgcn")


# RecBole: missing and header-only files.
def _recbole(tmp_path, sidecar: bool, drop=(), header_only=()) -> Path:
    files = dict(READERS["recbole" if sidecar else "recbole-foreign"][1])
    for name in drop:
        del files[name]
    for name in header_only:
        files[name] = _lines(_text(files, name))[0] + "\n"
    return write_files(tmp_path / "tiny", files)


@pytest.mark.parametrize("sidecar", [True, False])
@pytest.mark.parametrize(("drop", "header_only", "file", "fragment"), [
    (["tiny.link"], [], "tiny.link", "file not found"),
    ([], ["tiny.link"], "tiny.link", ""),
    (["tiny.kg"], [], "tiny.kg", "file not found"),
])
def test_recbole_link_or_kg_missing_or_empty_is_an_error(tmp_path, sidecar, drop, header_only,
                                                         file, fragment):
    directory = _recbole(tmp_path, sidecar, drop, header_only)
    with pytest.raises(DataFormatError) as info:
        read_recbole(directory)
    assert Path(info.value.path).name == file and fragment in info.value.problem


def test_recbole_item_header_only_while_the_sidecar_declares_modalities(tmp_path):
    with pytest.raises(DataFormatError, match=r"lists 0 of the 6 items \(tiny.mmkgrec.json declares "
                                              r"modalities \['audio', 'image'\]\)") as info:
        read_recbole(_recbole(tmp_path, True, header_only=["tiny.item"]))
    assert info.value.path.endswith("tiny.item")


def test_recbole_truncated_kg_is_caught_by_the_sidecar_counts(tmp_path):
    with pytest.raises(DataFormatError, match="holds 0 triples but tiny.mmkgrec.json says 4") as info:
        read_recbole(_recbole(tmp_path, True, header_only=["tiny.kg"]))
    assert info.value.path.endswith("tiny.kg")


def test_recbole_foreign_files_say_what_was_dropped(tmp_path):
    ds = read_recbole(_recbole(tmp_path / "a", False, header_only=["tiny.kg"]))
    assert any("tiny.kg holds no triples" in n for n in ds.notes)
    ds = read_recbole(_recbole(tmp_path / "b", False, header_only=["tiny.item"]))
    assert any("tiny.item: float_seq column 'audio' is empty" in n for n in ds.notes)
    d = tmp_path / "c"  # no .link, but the KG names items by their own ids
    write_files(d, {"c.inter": "user_id:token\titem_id:token\nu\ta\nu\tb\n",
                    "c.kg": "head_id:token\trelation_id:token\ttail_id:token\na\tgenre\trock\n"})
    assert any("no c.link: items are their own KG entities; 1 of 2" in n for n in read_recbole(d).notes)


def test_recbole_links_that_miss_the_kg_are_an_error(tmp_path):
    files = dict(READERS["recbole-foreign"][1])
    files["tiny.link"] = _join([_lines(_text(files, "tiny.link"))[0]] + [f"{x}\tz:{x}" for x in "abcdxy"])
    _fails(tmp_path, "recbole-foreign", files, "tiny.link", "none of its 6 linked entities occurs")


# Native dataset.json: strict types and deep nesting.
@pytest.mark.parametrize(("keys", "value", "fragment"), [
    (("schema_version",), True, "unknown schema_version True"),
    (("counts", "users"), "60", "counts.users"),
    (("threshold",), "2", "threshold"),
    (("counts", "items"), True, "counts.items"),
    (("has_timestamps",), 1, "has_timestamps"),
    (("modalities", "audio"), 3.0, "modalities.audio"),
])
def test_native_manifest_types_are_strict(tmp_path, keys, value, fragment):
    directory = write_native(small_mmkg(), tmp_path / "n")
    manifest = json.loads((directory / "dataset.json").read_text())
    target = manifest
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    (directory / "dataset.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(DataFormatError, match=fragment) as info:
        read_native(directory)
    assert info.value.path.endswith("dataset.json")


@pytest.mark.parametrize("file", ["dataset.json", "tiny.mmkgrec.json"])
def test_deeply_nested_json_is_a_data_error(tmp_path, file):
    directory = (write_native if file == "dataset.json" else write_recbole)(small_mmkg(), tmp_path / "tiny")
    (directory / file).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(DataFormatError, match="nested too deeply") as info:
        (read_native if file == "dataset.json" else read_recbole)(directory)
    assert info.value.path.endswith(file)


# run.json.
@pytest.mark.parametrize(("content", "fragment"), [
    ("{not json", "not a valid run.json (Expecting property name"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"spec": {"model": "pop", "dataset": "synthetic-tiny"}}', "missing key 'model_config'"),
    ("[1, 2]", "expected a JSON object"),
    ('{"spec": {"modle": "pop"}, "model_config": {}}', "invalid spec"),
])
def test_a_malformed_run_json_names_the_file(tmp_path, capsys, content, fragment):
    from mmkgrec.train.run import load_run

    (tmp_path / "run.json").write_text(content)
    with pytest.raises(MMKGRecError, match="run.json") as info:
        load_run(tmp_path)
    assert fragment in str(info.value)
    code, out, err = run_cli(capsys, "recommend", str(tmp_path), "--user", "u0")
    assert code == 2 and "run.json" in err and "Traceback" not in out + err
    assert "internal error" not in err


# ---- the CLI: exit 2, the file named, no traceback ---------------------------------------------
REPEATED_LINK_HEADER = MKGCN_FILES["itemID2entityID.txt"] + "itemID\tentityID\n"
HUGE_WEIGHT = "userID\tartistID\tweight\n1\t10\t" + "9" * MB + "\n"


@pytest.mark.parametrize(("reader", "edit", "file"), [
    ("mkgcn", lambda f: {**f, "itemID2entityID.txt": REPEATED_LINK_HEADER}, "itemID2entityID.txt"),
    ("kgcn", lambda f: {**f, "kg.txt": "genre\t0\t100\n"}, "kg.txt"),
    ("kgcn", lambda f: {**f, "user_artists.dat": HUGE_WEIGHT}, "user_artists.dat"),
    ("recbole", lambda f: {k: v for k, v in f.items() if k != "tiny.kg"}, "tiny.kg"),
    ("native", lambda f: {**f, "dataset.json": f["dataset.json"].replace(
        b'"schema_version": 1', b'"schema_version": true')}, "dataset.json"),
    ("native", lambda f: {**f, "dataset.json": b"[" * 100_000}, "dataset.json"),
])
def test_cli_stats_on_a_broken_file_exits_2_naming_it(tmp_path, capsys, reader, edit, file):
    directory = write_files(tmp_path / ("tiny" if reader.startswith("recbole") else "d"),
                            edit(dict(READERS[reader][1])))
    code, out, err = run_cli(capsys, "data", "stats", str(directory))
    assert code == 2
    assert file in err and "Traceback" not in out + err and "internal error" not in err


# ---- the real files load exactly as before -------------------------------------------------------
def test_real_counts_are_unchanged(lastfm, musicd):
    assert (lastfm.n_users, lastfm.n_items, lastfm.n_entities, lastfm.n_relations,
            len(lastfm.triples)) == (1872, 3846, 9366, 60, 15518)
    assert (musicd.n_items, musicd.n_entities, musicd.n_relations, len(musicd.triples)) == (
        4836, 6775, 1, 35897)
    assert lastfm.users.dtype.kind == "U" and np.isin(lastfm.items[:3], ["2", "3", "4"]).all()
