"""``extract``: content cache, bad files, train-only fits, workers, output format, attach, CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image
from typer.testing import CliRunner

from mmkgrec.data.dataset import build_mmkg
from mmkgrec.errors import ConfigError, DataFormatError, MMKGRecError
from mmkgrec.features import attach_features, extract, read_errors, read_features
from mmkgrec.features.audio import MfccStats
from mmkgrec.features.base import Extractor, sha256_text

SR = 16000


def _write_catalogue(folder, rows):
    with open(folder / "catalogue.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["item_id", "audio_path", "image_path", "title",
                                                    "tags", "lyrics"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "catalogue.csv"


@pytest.fixture
def catalogue(tmp_path):
    """5 items: 3 good, one corrupt audio file, one missing image, one with no image at all."""
    media = tmp_path / "media"
    media.mkdir()
    t = np.arange(SR // 2) / SR  # 0.5 s
    for name, freq in (("a", 440.0), ("b", 261.63), ("c", 329.63), ("e", 392.0)):
        sf.write(media / f"{name}.wav", 0.5 * np.sin(2 * np.pi * freq * t), SR)
    (media / "d.wav").write_bytes(b"RIFF....WAVEfmt garbage" * 8)  # corrupt
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255)), ("d", (0, 255, 0))):
        Image.new("RGB", (16, 16), colour).save(media / f"{name}.png")
    rows = [
        dict(item_id="a", audio_path="media/a.wav", image_path="media/a.png", title="Red song",
             tags="happy|pop", lyrics="I love this wonderful song"),
        dict(item_id="b", audio_path="media/b.wav", image_path="media/b.png", title="Blue song",
             tags="sad", lyrics="I hate this awful noise"),
        dict(item_id="c", audio_path="media/c.wav", image_path="media/missing.png", title="",
             tags="", lyrics=""),
        dict(item_id="d", audio_path="media/d.wav", image_path="media/d.png", title="Green",
             tags="calm", lyrics=""),
        dict(item_id="e", audio_path="media/e.wav", image_path="", title="Yellow", tags="",
             lyrics=""),
    ]
    return _write_catalogue(tmp_path, rows)


FAST = ["mfcc_stats", "mfcc_bof", "vader", "color_hist"]
OPTIONS = {"mfcc_bof": {"codebook_size": 3, "frames_per_item": 8}}


def test_bad_files_are_masked_and_listed_while_others_succeed(catalogue, tmp_path):
    out = tmp_path / "out"
    report = extract(catalogue, out, FAST, options=OPTIONS, progress=False)
    feats = read_features(out)
    assert list(feats.item_ids) == ["a", "b", "c", "d", "e"]
    assert feats.masks["mfcc_stats"].tolist() == [True, True, True, False, True]  # d corrupt
    assert feats.masks["color_hist"].tolist() == [True, True, False, True, False]  # c missing
    assert feats.masks["vader"].tolist() == [True, True, False, True, False]  # no lyrics / tags
    assert not feats.modalities["mfcc_stats"][3].any() and not feats.modalities["color_hist"][2].any()
    r = report.extractors
    assert (r["mfcc_stats"].present, r["mfcc_stats"].failed) == (4, 1)
    assert (r["color_hist"].present, r["color_hist"].failed, r["color_hist"].absent) == (3, 1, 1)
    assert (r["vader"].failed, r["vader"].absent) == (0, 2)  # an empty cell is not an error
    errors = {(e.item_id, e.extractor): e for e in read_errors(out)}
    assert set(errors) == {("d", "mfcc_stats"), ("d", "mfcc_bof"), ("c", "color_hist")}
    assert errors[("c", "color_hist")].path.endswith("media/missing.png")
    assert errors[("c", "color_hist")].error == "file not found"
    assert "cannot decode audio" in errors[("d", "mfcc_stats")].error
    manifest = json.loads((out / "features.json").read_text())
    assert manifest["items"] == ["a", "b", "c", "d", "e"] and manifest["errors"] == 3
    entry = manifest["modalities"]["mfcc_bof"]
    assert entry["kind"] == "audio" and entry["width"] == 3
    assert entry["extractor"]["options"]["codebook_size"] == 3
    assert entry["fit"]["train_items"] == 4  # a, b, c, e; d failed while sampling
    assert any("fitted on all items" in note for note in manifest["notes"])
    bof = feats.modalities["mfcc_bof"][feats.masks["mfcc_bof"]]
    assert np.allclose(bof.sum(axis=1), 1.0)


def test_second_run_computes_nothing_and_changes_recompute_only_those(catalogue, tmp_path):
    out = tmp_path / "out"
    first = extract(catalogue, out, FAST, options=OPTIONS, progress=False)
    assert first.computed == 4 + 4 + 3 + 3 and first.cached == 0
    before = read_features(out)
    second = extract(catalogue, out, FAST, options=OPTIONS, progress=False)
    assert second.computed == 0 and second.cached == first.computed
    assert second.extractors["mfcc_bof"].fit["from_cache"]
    after = read_features(out)
    for name in FAST:
        assert np.array_equal(before.modalities[name], after.modalities[name])
        assert np.array_equal(before.masks[name], after.masks[name])
    # with no train items every audio item trains the codebook, so any changed file would refit
    # it; with train items a, b the codebook (and so the cached rows) depend on a and b only
    third = extract(catalogue, out, FAST, options=OPTIONS, train_items=["a", "b"], progress=False)
    assert third.extractors["mfcc_bof"].computed == 4  # a new codebook: every bof row recomputed
    assert third.extractors["mfcc_stats"].computed == 0
    t = np.arange(SR // 2) / SR
    sf.write(catalogue.parent / "media" / "e.wav", 0.5 * np.sin(2 * np.pi * 500 * t), SR)
    fourth = extract(catalogue, out, FAST, options=OPTIONS, train_items=["a", "b"], progress=False)
    assert fourth.extractors["mfcc_stats"].computed == 1  # only e changed
    assert fourth.extractors["mfcc_bof"].computed == 1  # e is not a train item: same codebook
    assert fourth.extractors["mfcc_bof"].fit["from_cache"]
    assert fourth.extractors["vader"].computed == 0 and fourth.computed == 2
    no_cache = extract(catalogue, tmp_path / "nc", FAST, options=OPTIONS, use_cache=False,
                       progress=False)
    assert no_cache.cached == 0 and no_cache.computed == first.computed
    assert not (tmp_path / "nc" / "cache").exists()


def test_codebook_is_fitted_on_train_items_only(catalogue, tmp_path):
    def run(out, train):
        return extract(catalogue, tmp_path / out, ["mfcc_bof"], options=OPTIONS,
                       train_items=train, progress=False)

    ab = run("ab", ["a", "b"]).extractors["mfcc_bof"].fit
    ab_again = run("ab2", ["b", "a", "not-in-catalogue"]).extractors["mfcc_bof"].fit
    abc = run("abc", ["a", "b", "c"]).extractors["mfcc_bof"].fit
    assert ab["train_items"] == 2 and abc["train_items"] == 3
    assert ab["state_sha256"] == ab_again["state_sha256"]  # c and e played no part
    assert ab["state_sha256"] != abc["state_sha256"]
    # the same train items in a catalogue without c and e: the same codebook
    small = tmp_path / "small"
    small.mkdir()
    shutil.copytree(catalogue.parent / "media", small / "media")
    with open(catalogue, newline="") as handle:
        rows = list(csv.DictReader(handle))[:2]
    fit = extract(_write_catalogue(small, rows), small / "out", ["mfcc_bof"], options=OPTIONS,
                  train_items=["a", "b"], progress=False).extractors["mfcc_bof"].fit
    assert fit["state_sha256"] == ab["state_sha256"]
    train_file = tmp_path / "train.txt"
    train_file.write_text("a\nb\n")
    assert run("file", train_file).extractors["mfcc_bof"].fit["state_sha256"] == ab["state_sha256"]
    with pytest.raises(ConfigError, match="none of the 1 train items"):
        run("none", ["zzz"])


def test_interrupted_run_keeps_finished_items(catalogue, tmp_path, monkeypatch):
    real = MfccStats.extract_one

    def crash_on_c(self, item):
        if item.item_id == "c":
            raise KeyboardInterrupt
        return real(self, item)

    monkeypatch.setattr(MfccStats, "batch_size", 1)
    monkeypatch.setattr(MfccStats, "extract_one", crash_on_c)
    with pytest.raises(KeyboardInterrupt):
        extract(catalogue, tmp_path / "out", ["mfcc_stats"], progress=False)
    monkeypatch.setattr(MfccStats, "extract_one", real)
    report = extract(catalogue, tmp_path / "out", ["mfcc_stats"], progress=False)
    r = report.extractors["mfcc_stats"]
    assert (r.cached, r.computed, r.failed) == (2, 2, 1)  # a, b kept; c, e computed; d corrupt


def test_worker_processes_give_the_same_features(catalogue, tmp_path):
    one = extract(catalogue, tmp_path / "one", FAST, options=OPTIONS, use_cache=False,
                  progress=False)
    two = extract(catalogue, tmp_path / "two", FAST, options=OPTIONS, use_cache=False, workers=2,
                  progress=False)
    a, b = read_features(tmp_path / "one"), read_features(tmp_path / "two")
    for name in FAST:
        assert np.allclose(a.modalities[name], b.modalities[name], atol=1e-5), name
        assert np.array_equal(a.masks[name], b.masks[name])
    assert two.computed == one.computed and len(two.errors) == len(one.errors) == 3


class Crasher(Extractor):
    """Kills its worker process on the item titled "Green" (as a crashing decoder would)."""

    name = "crasher"
    modality = "text"
    inputs = ("title",)
    batch_size = 1

    @property
    def width(self) -> int:
        return 2

    def input_digest(self, item, file_digest) -> str:
        return sha256_text(item.title)

    def extract_one(self, item) -> np.ndarray:
        if item.title == "Green":
            os._exit(3)
        return np.array([len(item.title), 1.0])


def test_a_worker_crash_fails_only_its_item(catalogue, tmp_path):
    report = extract(catalogue, tmp_path / "out", [Crasher()], workers=2, use_cache=False,
                     progress=False)
    feats = read_features(tmp_path / "out")
    assert feats.masks["crasher"].tolist() == [True, True, False, False, True]  # c has no title
    assert feats.modalities["crasher"][4].tolist() == [6.0, 1.0]
    assert [(e.item_id, e.extractor) for e in report.errors] == [("d", "crasher")]
    assert "worker process died" in report.errors[0].error


def test_extract_rejects_bad_requests(catalogue, tmp_path):
    with pytest.raises(ConfigError, match="unknown extractor 'mfcc'"):
        extract(catalogue, tmp_path / "o", ["mfcc"], progress=False)
    with pytest.raises(ConfigError, match="codebook_sise"):
        extract(catalogue, tmp_path / "o", ["mfcc_bof"], options={"mfcc_bof": {"codebook_sise": 3}},
                progress=False)
    text_only = tmp_path / "t"
    text_only.mkdir()
    (text_only / "c.csv").write_text("item_id,title\n1,Song\n")
    with pytest.raises(ConfigError, match="reads audio_path"):
        extract(text_only / "c.csv", tmp_path / "o", ["mfcc_stats"], progress=False)
    with pytest.raises(DataFormatError, match="no item_id column"):
        (text_only / "bad.csv").write_text("id,title\n1,x\n")
        extract(text_only / "bad.csv", tmp_path / "o", progress=False)
    # default extractors: those whose inputs the catalogue has (here images only)
    (text_only / "img.csv").write_text("item_id,image_path\n1,\n")
    report = extract(text_only / "img.csv", tmp_path / "default", progress=False)
    assert list(report.extractors) == ["efficientnet_lite0"]
    assert report.extractors["efficientnet_lite0"].absent == 1 and report.computed == 0


def test_read_features_detects_changes(catalogue, tmp_path):
    out = tmp_path / "out"
    extract(catalogue, out, ["color_hist"], progress=False)
    (out / "errors.csv").write_text("item_id,extractor,path,error\n")
    with pytest.raises(DataFormatError, match="errors.csv: changed since written"):
        read_features(out)
    with pytest.raises(DataFormatError, match="features.json: file not found"):
        read_features(tmp_path)


def _dataset(items):
    inter = pd.DataFrame({"user": ["u1"] * len(items), "item": items, "value": [1.0] * len(items)})
    return build_mmkg("toy", inter, threshold=1.0)


def test_attach_features_by_id(catalogue, tmp_path):
    out = tmp_path / "out"
    extract(catalogue, out, ["mfcc_stats", "color_hist"], progress=False)
    ds = _dataset(["e", "zz", "a", "d"])
    attached = attach_features(ds, out)
    assert not ds.modalities  # the input is not modified
    assert attached.modality_masks["mfcc_stats"].tolist() == [True, False, True, False]
    assert attached.modality_masks["color_hist"].tolist() == [False, False, True, True]
    feats = read_features(out)
    assert np.array_equal(attached.modalities["mfcc_stats"][2], feats.modalities["mfcc_stats"][0])
    assert np.array_equal(attached.modalities["mfcc_stats"][0], feats.modalities["mfcc_stats"][4])
    assert not attached.modalities["mfcc_stats"][1].any()
    assert any("3 of 4 items matched by id (1 without a feature row); 2 of 5 feature rows match "
               "no item" in note for note in attached.notes)
    prefixed = attach_features(ds, out, modalities=["color_hist"], prefix="cover_")
    assert list(prefixed.modalities) == ["cover_color_hist"]
    with pytest.raises(MMKGRecError, match="none of the 2 items of 'toy' matches"):
        attach_features(_dataset(["x", "y"]), out)
    with pytest.raises(ConfigError, match="unknown feature modalities"):
        attach_features(ds, out, modalities=["minilm"])


def test_cli_list_extract_and_attach(catalogue, tmp_path):
    import typer

    from mmkgrec.data.formats.native import read_native, write_native
    from mmkgrec.features.cli import app, attach_command

    runner = CliRunner(env={"COLUMNS": "200"})
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0
    for name in ("mfcc_stats", "emobase", "minilm", "tfidf_svd", "efficientnet_lite0", "color_hist"):
        assert name in listed.output
    out = tmp_path / "out"
    args = ["extract", str(catalogue), "--out", str(out), "--extractors", "vader,color_hist",
            "--set", "color_hist.bins=[4,2,2]", "--set", "color_hist.space=rgb"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "computed 6, from cache 0" in first.output and "1 item errors" in first.output
    assert read_features(out).modalities["color_hist"].shape == (5, 16)
    second = runner.invoke(app, args)
    assert "computed 0, from cache 6" in second.output
    bad = runner.invoke(app, ["extract", str(catalogue), "--out", str(out), "--set", "oops"])
    assert isinstance(bad.exception, ConfigError)

    wrapper = typer.Typer()
    wrapper.command()(attach_command)
    write_native(_dataset(["a", "b", "q"]), tmp_path / "native")
    attached = runner.invoke(wrapper, [str(tmp_path / "native"), str(out), "--out",
                                       str(tmp_path / "with")])
    assert attached.exit_code == 0, attached.output
    ds = read_native(tmp_path / "with")
    assert ds.modality_masks["color_hist"].tolist() == [True, True, False]
    assert ds.modality_masks["vader"].tolist() == [True, True, False]


def test_attach_keeps_the_catalogues_display_attributes(catalogue, tmp_path):
    out = tmp_path / "out"
    extract(catalogue, out, ["mfcc_stats"], progress=False)
    attached = attach_features(_dataset(["e", "zz", "a"]), out)
    attrs = attached.item_attrs
    assert attrs["title"].tolist() == ["Yellow", "", "Red song"]  # joined by id, "" unmatched
    # a value the dataset already has wins; the catalogue fills its empty cells
    inter = pd.DataFrame({"user": ["u1"] * 2, "item": ["a", "d"], "value": [1.0, 1.0]})
    own = build_mmkg("toy", inter, threshold=1.0,
                     item_attrs=pd.DataFrame({"item": ["a", "d"], "title": ["Mine", ""]}))
    assert attach_features(own, out).item_attrs["title"].tolist() == ["Mine", "Green"]
