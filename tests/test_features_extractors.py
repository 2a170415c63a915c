"""Each extractor on generated inputs with known properties (short signals, tiny images)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmkgrec.errors import ConfigError, ExtractionError, MMKGRecError
from mmkgrec.features.base import dump_state, load_state
from mmkgrec.features.catalogue import CatalogueItem
from mmkgrec.features.registry import EXTRACTORS, make_extractor

SR = 22050


def tone(freq: float, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    sf.write(d / "a440.wav", tone(440), SR)
    sf.write(d / "a440_44k.flac", tone(440, sr=44100), 44100)
    sf.write(d / "c262.wav", tone(261.63), SR)
    sf.write(d / "noise.wav", noise(), SR)
    sf.write(d / "noise2.wav", noise(seed=1), SR)
    (d / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 4)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(d / "red.png")
    Image.new("RGB", (30, 40), (0, 0, 255)).save(d / "blue.jpg", quality=95)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return d


def audio(media, name: str) -> CatalogueItem:
    return CatalogueItem(name, 2, audio_path=media / name)


def test_registry_and_options():
    assert set(EXTRACTORS) == {"mfcc_stats", "chroma_stats", "mfcc_bof", "chroma_bof", "emobase",
                               "minilm", "tfidf_svd", "vader", "efficientnet_lite0", "color_hist"}
    for name, cls in EXTRACTORS.items():
        ex = cls()
        assert ex.name == name and ex.modality in {"audio", "text", "sentiment", "image"}
        assert ex.width > 0 and ex.inputs and ex.available()[0], name
    with pytest.raises(ConfigError, match="n_mfc"):
        make_extractor("mfcc_stats", {"n_mfc": 13})
    with pytest.raises(ConfigError, match="unknown extractor 'mfcc'"):
        make_extractor("mfcc")
    assert make_extractor("mfcc_stats", {"n_mfcc": 13, "stats": ["mean", "std", "max"]}).width == 39


def test_decode_resample_and_cap(media):
    from mmkgrec.features.audio import load_audio

    y = load_audio(media / "a440_44k.flac", 22050)
    assert y.dtype == np.float32 and abs(len(y) - SR) <= 2  # 1 s at 44.1 kHz -> 22,050 samples
    assert len(load_audio(media / "a440.wav", 22050, max_seconds=0.25)) == SR // 4
    assert len(load_audio(media / "a440.wav", 22050, max_seconds=1, offset_seconds=0.5)) == SR // 2
    with pytest.raises(ExtractionError, match="cannot decode audio"):
        load_audio(media / "bad.wav")
    with pytest.raises(ExtractionError, match="cannot read audio file"):
        load_audio(media / "nope.wav")


def test_chroma_of_a440_peaks_at_pitch_class_a(media):
    ex = make_extractor("chroma_stats")
    means = ex.extract_one(audio(media, "a440.wav"))[:12]  # mean chroma, C = 0 ... B = 11
    assert ex.width == 24 and int(np.argmax(means)) == 9  # A
    assert int(np.argmax(ex.extract_one(audio(media, "c262.wav"))[:12])) == 0  # middle C
    resampled = ex.extract_one(audio(media, "a440_44k.flac"))[:12]
    assert int(np.argmax(resampled)) == 9


def test_mfcc_stats_differ_between_tone_and_noise(media):
    ex = make_extractor("mfcc_stats")
    t = ex.extract_one(audio(media, "a440.wav"))
    t2 = ex.extract_one(audio(media, "a440_44k.flac"))
    n = ex.extract_one(audio(media, "noise.wav"))
    n2 = ex.extract_one(audio(media, "noise2.wav"))
    assert t.shape == (40,) and np.isfinite(t).all()
    tone_noise = np.linalg.norm(t - n)
    assert tone_noise > 5 * np.linalg.norm(n - n2) and tone_noise > 5 * np.linalg.norm(t - t2)


def test_bag_of_frames_histograms_sum_to_one(media):
    ex = make_extractor("mfcc_bof", {"codebook_size": 4, "frames_per_item": 20})
    with pytest.raises(MMKGRecError, match="fitted"):
        ex.extract_one(audio(media, "a440.wav"))
    items = [audio(media, n) for n in ("a440.wav", "noise.wav")]
    samples = [ex.fit_sample(item, f"{i:064x}") for i, item in enumerate(items)]
    assert samples[0].shape == (20, 20)  # frames_per_item x n_mfcc
    ex.fit(samples)
    hists = np.stack([ex.extract_one(audio(media, n)) for n in ("a440.wav", "noise.wav", "c262.wav")])
    assert hists.shape == (3, 4) and np.allclose(hists.sum(axis=1), 1.0) and (hists >= 0).all()
    assert not np.allclose(hists[0], hists[1])  # a tone and noise use different codewords
    # the fitted state round-trips through its pickle-free serialisation
    other = make_extractor("mfcc_bof", {"codebook_size": 4, "frames_per_item": 20})
    other.load_state_bytes(ex.state_bytes())
    assert np.array_equal(other.extract_one(items[1]), hists[1])
    assert other.state_digest() == ex.state_digest()
    with pytest.raises(ConfigError, match="at least 64 train frames"):
        make_extractor("chroma_bof", {"codebook_size": 64, "frames_per_item": 10}).fit(
            [np.zeros((10, 12), np.float32)])


def test_state_serialisation_keeps_arrays_and_json():
    arrays, meta = load_state(dump_state({"x": np.arange(3, dtype=np.float32)}, {"v": ["a", "b"]}))
    assert arrays["x"].tolist() == [0, 1, 2] and meta == {"v": ["a", "b"]}
    assert load_state(dump_state({}, {"k": 1})) == ({}, {"k": 1})


def test_emobase_functionals(media):
    ex = make_extractor("emobase", {"max_seconds": 0.5})
    t = ex.extract_one(audio(media, "a440.wav"))
    n = ex.extract_one(audio(media, "noise.wav"))
    assert t.shape == n.shape == (988,) and np.isfinite(t).all()
    assert not np.allclose(t, n)


def test_vader_ranks_love_above_hate():
    from mmkgrec.features.sentiment import SENTIMENT_COLUMNS, sentiment_scores

    scores = sentiment_scores([["I love this wonderful song"], ["I hate this awful noise"], [],
                               ["  ", ""], ["I love this wonderful song", "I hate this awful noise"]])
    compound = SENTIMENT_COLUMNS.index("compound_mean")
    assert scores.shape == (5, len(SENTIMENT_COLUMNS)) and scores.dtype == np.float32
    assert scores[0, compound] > 0.5 > -0.5 > scores[1, compound]
    assert not scores[2].any() and not scores[3].any()  # nothing to score -> zero row
    mixed = dict(zip(SENTIMENT_COLUMNS, scores[4]))
    assert mixed["compound_min"] == pytest.approx(scores[1, compound])
    assert mixed["compound_max"] == pytest.approx(scores[0, compound])
    assert mixed["compound_mean"] == pytest.approx((scores[0, compound] + scores[1, compound]) / 2)
    assert mixed["positive_share"] == mixed["negative_share"] == 0.5
    ex = make_extractor("vader")
    item = CatalogueItem("x", 2, lyrics="I love this wonderful song\n\nsunshine", tags=("sad",))
    assert ex.segments(item) == ["I love this wonderful song", "sunshine"]  # lyrics before tags
    assert ex.extract_one(CatalogueItem("y", 2, tags=("awful",)))[0] < 0  # tags when no lyrics


def test_minilm_offline_paraphrases_closer(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from mmkgrec.features.text import embed_texts

    e = embed_texts(["A cheerful song about sunny summer days",
                     "An upbeat track about bright summer weather",
                     "The quarterly tax report is due on Monday", ""])
    assert e.shape == (4, 384) and e.dtype == np.float32
    assert not e[3].any()  # empty text -> zero row
    assert np.allclose(np.linalg.norm(e[:3], axis=1), 1.0, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3
    ex = make_extractor("minilm", {"fields": ["title", "tags"]})
    v = ex.extract_one(CatalogueItem("x", 2, title="Summer", tags=("happy", "sunny"),
                                     lyrics="ignored"))
    assert v.shape == (384,) and ex.text(CatalogueItem("x", 2, title="Summer", tags=("a", "b"))) \
        == "Summer\na, b"
    with pytest.raises(MMKGRecError, match="not available offline"):
        embed_texts(["x"], backend="sentence-transformers:no-such-org/no-such-model")
    reduced = embed_texts(["a b", "c d", "e f", "g h", ""], dim=2, fit_rows=np.array([0, 1, 2, 3]))
    assert reduced.shape == (5, 2) and not reduced[4].any()


def test_tfidf_svd_needs_no_weights_and_fits_on_fit_rows_only():
    from mmkgrec.features.text import embed_texts

    texts = ["guitar rock loud guitar", "rock guitar anthem", "piano calm ambient",
             "calm piano sleep", "", "synthwave neon retro"]
    fit = np.array([True, True, True, True, True, False])
    e = embed_texts(texts, backend="tfidf_svd", dim=3, fit_rows=fit)
    assert e.shape == (6, 3) and e.dtype == np.float32
    assert not e[4].any()  # empty text
    assert not e[5].any()  # its words were never seen in the fit rows: nothing leaks from it
    assert e[0] @ e[1] > e[0] @ e[2] and e[2] @ e[3] > e[2] @ e[0]
    again = embed_texts(texts, backend="tfidf", dim=3, fit_rows=np.flatnonzero(fit))
    assert np.array_equal(e, again)  # seeded; mask or indices give the same fit
    assert embed_texts(["one", "two words"], backend="tfidf", dim=8).shape == (2, 8)  # padded
    with pytest.raises(ConfigError, match="unknown backend"):
        embed_texts(["x"], backend="word2vec")


def test_efficientnet_red_and_blue_differ(media):
    ex = make_extractor("efficientnet_lite0")
    items = [CatalogueItem(n, 2, image_path=media / n) for n in ("red.png", "blue.jpg", "red.png",
                                                                "broken.png")]
    red, blue, red2, broken = ex.extract_batch(items)
    assert red.shape == (1280,) and np.isfinite(red).all() and (red >= 0).all()  # after ReLU6
    assert np.allclose(red, red2)
    cosine = red @ blue / (np.linalg.norm(red) * np.linalg.norm(blue))
    assert cosine < 0.95
    assert isinstance(broken, ExtractionError) and "cannot decode image" in str(broken)


def test_color_hist_mass_in_the_right_bin(media):
    ex = make_extractor("color_hist")  # HSV, 8 x 4 x 4 bins
    red = ex.extract_one(CatalogueItem("r", 2, image_path=media / "red.png"))
    blue = ex.extract_one(CatalogueItem("b", 2, image_path=media / "blue.jpg"))
    assert red.shape == (128,) and red.sum() == pytest.approx(1.0)
    # red: hue 0 -> bin 0, saturation and value 255 -> bin 3: (0 * 4 + 3) * 4 + 3 = 15
    assert red[15] == pytest.approx(1.0)
    # blue: PIL hue 170 -> bin 170 * 8 // 256 = 5: (5 * 4 + 3) * 4 + 3 = 95
    assert int(np.argmax(blue)) == 95 and blue[95] > 0.9
    rgb = make_extractor("color_hist", {"space": "rgb", "bins": [2, 2, 2]})
    assert int(np.argmax(rgb.extract_one(CatalogueItem("r", 2, image_path=media / "red.png")))) == 4
