"""Catalogue reading: paths, tags, multi-line lyrics, and errors that name the file and line."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmkgrec.errors import DataFormatError, ExtractionError
from mmkgrec.features.catalogue import read_catalogue


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_paths_tags_and_multiline_lyrics(tmp_path):
    (tmp_path / "media").mkdir()
    cat = read_catalogue(write(tmp_path / "cat.csv", (
        "item_id,audio_path,image_path,tags,lyrics,title,artist,mood\n"
        "a,media/a.opus,/abs/cover.PNG,rock|90s; chill ,\"line one\nline two\",Song A,Band,x\n"
        "b,,,,,,,\n"
        "c,c.flac,,hip hop,,,,\n")))
    a, b, c = cat.items
    assert cat.ids == ["a", "b", "c"]
    assert a.audio_path == (tmp_path / "media" / "a.opus").resolve()  # relative to the file
    assert a.image_path == Path("/abs/cover.PNG")
    assert a.tags == ("rock", "90s", "chill")  # | and ; both separate, whitespace stripped
    assert a.lyrics == "line one\nline two" and a.lyrics_text() == "line one\nline two"
    assert (a.title, a.artist) == ("Song A", "Band")
    assert a.line == 2 and b.line == 4 and c.line == 5  # the quoted lyrics span lines 2-3
    assert b.audio_path is None and not b.has("audio_path") and b.tags == ()
    assert c.tags == ("hip hop",)
    assert cat.columns == ("item_id", "audio_path", "lyrics", "image_path", "tags", "title",
                           "artist")
    assert cat.notes == ["ignored columns: mood"]


def test_lyrics_path_and_parquet(tmp_path):
    write(tmp_path / "l.txt", "\ufeffhello there\n")
    table = pa.table({"item_id": ["1", "2"], "lyrics_path": ["l.txt", None]})
    pq.write_table(table, tmp_path / "cat.parquet")
    cat = read_catalogue(tmp_path / "cat.parquet")
    assert cat.items[0].lyrics_text() == "hello there\n"  # BOM stripped
    assert cat.items[1].lyrics_text() == "" and not cat.items[1].has("lyrics")
    (tmp_path / "l.txt").unlink()
    with pytest.raises(ExtractionError, match="cannot read lyrics file"):
        cat.items[0].lyrics_text()  # a missing file fails the item at extraction, not the read


@pytest.mark.parametrize("text, line, problem", [
    ("id,audio_path\n1,a.wav\n", 1, "no item_id column"),
    ("item_id,audio_path\n1,a.wav\n2,b.wav\n1,c.wav\n", 4, "repeats the one on line 2"),
    ("item_id,audio_path\n1,a.wav\n2,b.xyz\n", 3, "unknown extension '.xyz'"),
    ("item_id,image_path\n1,cover.wav\n", 2, "unknown extension '.wav'"),
    ("item_id,audio_path\n1,https://example.org/a.mp3\n", 2, "is a URL"),
    ("item_id,title\n1,x\n,y\n", 3, "empty item_id"),
    ("item_id,title\n1,x,extra\n", 2, "row has 3 cells but the header has 2"),
    ("item_id,title,title\n1,x,y\n", 1, "appears twice"),
    ("", 1, "empty file"),
])
def test_bad_catalogue_names_file_and_line(tmp_path, text, line, problem):
    path = write(tmp_path / "cat.csv", text)
    with pytest.raises(DataFormatError) as info:
        read_catalogue(path)
    assert info.value.path == str(path) and info.value.line == line
    assert problem in info.value.problem
    assert f"cat.csv, line {line}" in str(info.value)


def test_bad_catalogue_file(tmp_path):
    with pytest.raises(DataFormatError, match=r"unknown catalogue extension '\.xlsx'"):
        read_catalogue(write(tmp_path / "cat.xlsx", "item_id\n1\n"))
    with pytest.raises(DataFormatError, match="file not found"):
        read_catalogue(tmp_path / "missing.csv")
    with pytest.raises(DataFormatError, match="no items"):
        read_catalogue(write(tmp_path / "header.csv", "item_id,title\n"))
    pq.write_table(pa.table({"item_id": ["a", "a"]}), tmp_path / "dup.parquet")
    with pytest.raises(DataFormatError) as info:
        read_catalogue(tmp_path / "dup.parquet")
    assert info.value.line == 2 and "repeats" in info.value.problem


def test_tsv(tmp_path):
    cat = read_catalogue(write(tmp_path / "cat.tsv", "item_id\ttags\tartist\nx\ta;b\tSome, Band\n"))
    assert cat.items[0].tags == ("a", "b") and cat.items[0].artist == "Some, Band"
