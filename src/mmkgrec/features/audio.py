"""Audio extractors: librosa MFCC / chroma statistics, bag-of-frames codebooks, openSMILE emobase.

Decoding: soundfile (libsndfile: wav, flac, ogg / opus, mp3, aiff, ...) first, then librosa's
audioread fallback (m4a / aac need ffmpeg on the PATH). The signal is mixed to mono, cut to
``offset_seconds`` .. ``offset_seconds + max_seconds`` (default: the first 60 s) and resampled
to ``sample_rate`` (default 22,050 Hz, soxr). Frames: ``n_fft`` 2048, hop 512 (23 ms at 22 kHz).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from mmkgrec.data.transforms import zscore_stats
from mmkgrec.errors import ConfigError, ExtractionError
from mmkgrec.features.base import Extractor, Modality, Options, missing_modules
from mmkgrec.features.catalogue import CatalogueItem

Stat = Literal["mean", "std", "min", "max", "median", "delta_mean", "delta_std"]
DEFAULT_STATS: list[Stat] = ["mean", "std"]
EMOBASE_WIDTH = 988  # openSMILE emobase functionals


class AudioOptions(Options):
    sample_rate: int = Field(22050, ge=4000, le=96000)
    max_seconds: float = Field(60.0, gt=0)
    offset_seconds: float = Field(0.0, ge=0)
    n_fft: int = Field(2048, ge=64)
    hop_length: int = Field(512, ge=16)


def load_audio(path: str | Path | None, sample_rate: int = 22050, max_seconds: float = 60.0,
               offset_seconds: float = 0.0) -> np.ndarray:
    """Decode ``path`` to mono float32 ``[n_samples]`` at ``sample_rate``, at most ``max_seconds``.

    Raises:
        ExtractionError: the file is missing, cannot be decoded, or holds no samples.
    """
    if path is None:
        raise ExtractionError("no audio file given")
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as error:
        raise ExtractionError(f"cannot read audio file: {error.strerror or error}") from None
    return _load_audio_cached(str(path), stat.st_mtime_ns, stat.st_size, sample_rate,
                              float(max_seconds), float(offset_seconds))


@lru_cache(maxsize=16)  # the audio extractors of one task share each decoded file
def _load_audio_cached(path: str, mtime_ns: int, size: int, sample_rate: int, max_seconds: float,
                       offset_seconds: float) -> np.ndarray:
    import soundfile as sf

    try:
        with sf.SoundFile(path) as handle:
            native = handle.samplerate
            start = round(offset_seconds * native)
            if start:
                if start >= handle.frames > 0:
                    raise ExtractionError(f"offset {offset_seconds} s is past the end of the audio")
                handle.seek(start)
            data = handle.read(frames=round(max_seconds * native), dtype="float32",
                               always_2d=True)  # [n, channels]
    except ExtractionError:
        raise
    except Exception as first:  # noqa: BLE001 - libsndfile cannot read it: try audioread
        data, native = _audioread(path, max_seconds, offset_seconds, first)
    signal = data.mean(axis=1) if data.ndim == 2 else data  # [n] mono
    if signal.size == 0:
        raise ExtractionError("the audio holds no samples")
    if not np.isfinite(signal).all():
        raise ExtractionError("the decoded audio has NaN or inf samples")
    if native != sample_rate:
        import librosa

        signal = librosa.resample(signal, orig_sr=native, target_sr=sample_rate, res_type="soxr_hq")
    out = np.ascontiguousarray(signal, dtype=np.float32)
    out.setflags(write=False)  # shared through the cache
    return out


def _audioread(path: str, max_seconds: float, offset_seconds: float,
               first: BaseException) -> tuple[np.ndarray, int]:
    import warnings

    import librosa

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's "PySoundFile failed" FutureWarning
            signal, native = librosa.load(path, sr=None, mono=True, offset=offset_seconds,
                                          duration=max_seconds)
    except Exception as second:  # noqa: BLE001
        fallback = ("no audioread backend (ffmpeg is not installed)"
                    if type(second).__name__ == "NoBackendError" else _short(second))
        raise ExtractionError(f"cannot decode audio: libsndfile: {_short(first)}; audioread: "
                              f"{fallback}") from None
    return np.asarray(signal, dtype=np.float32), int(native)


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def summarise(frames: np.ndarray, stats: list[str]) -> np.ndarray:
    """Frame features ``[d, T]`` -> ``[d * len(stats)]``: each statistic over time, concatenated."""
    if frames.shape[1] == 0:
        raise ExtractionError("the audio is too short for one frame")
    delta = np.diff(frames, axis=1) if frames.shape[1] > 1 else np.zeros_like(frames)  # [d, T-1]
    table = {
        "mean": lambda: frames.mean(axis=1), "std": lambda: frames.std(axis=1),
        "min": lambda: frames.min(axis=1), "max": lambda: frames.max(axis=1),
        "median": lambda: np.median(frames, axis=1),
        "delta_mean": lambda: np.abs(delta).mean(axis=1), "delta_std": lambda: delta.std(axis=1),
    }
    return np.concatenate([table[s]() for s in stats]).astype(np.float32)


class AudioExtractor(Extractor):
    """Shared by the audio extractors: decoding options, input digest, availability."""

    modality: ClassVar[Modality] = "audio"
    inputs: ClassVar[tuple[str, ...]] = ("audio_path",)
    OptionsModel: ClassVar[type[Options]] = AudioOptions
    modules: ClassVar[tuple[str, ...]] = ("librosa", "soundfile")

    def available(self) -> tuple[bool, str]:
        missing = missing_modules(*self.modules)
        if missing:
            return False, f"needs {', '.join(missing)} (pip install 'mmkgrec[features]')"
        return True, "ok"

    def input_digest(self, item: CatalogueItem, file_digest) -> str:
        return file_digest(item.audio_path)

    def signal(self, item: CatalogueItem) -> np.ndarray:
        o = self.options
        return load_audio(item.audio_path, o.sample_rate, o.max_seconds, o.offset_seconds)

    def frames(self, item: CatalogueItem) -> np.ndarray:
        """Frame-level features ``[d, T]``."""
        raise NotImplementedError


def mfcc_frames(y: np.ndarray, sr: int, n_mfcc: int = 20, n_fft: int = 2048,
                hop_length: int = 512) -> np.ndarray:
    """MFCCs ``[n_mfcc, T]`` (librosa: 128 mel bands, log power, DCT-II)."""
    import librosa

    return librosa.feature.mfcc(y=y, sr=sr, n_mfcc=n_mfcc, n_fft=n_fft, hop_length=hop_length)


def chroma_frames(y: np.ndarray, sr: int, n_fft: int = 2048, hop_length: int = 512) -> np.ndarray:
    """Chroma ``[12, T]`` from the STFT, pitch classes C, C#, ..., B; each frame max-normalised."""
    import librosa

    n_fft = min(n_fft, max(64, len(y)))
    return librosa.feature.chroma_stft(y=y, sr=sr, n_fft=n_fft, hop_length=hop_length)


class MfccOptions(AudioOptions):
    n_mfcc: int = Field(20, ge=2, le=128)
    stats: list[Stat] = Field(default_factory=lambda: list(DEFAULT_STATS), min_length=1)


class ChromaOptions(AudioOptions):
    stats: list[Stat] = Field(default_factory=lambda: list(DEFAULT_STATS), min_length=1)


class MfccStats(AudioExtractor):
    """librosa MFCCs (20 by default), each summarised over time by mean and std (by default)."""

    name = "mfcc_stats"
    OptionsModel = MfccOptions

    @property
    def width(self) -> int:
        return self.options.n_mfcc * len(self.options.stats)

    def frames(self, item: CatalogueItem) -> np.ndarray:
        o = self.options
        return mfcc_frames(self.signal(item), o.sample_rate, o.n_mfcc, o.n_fft, o.hop_length)

    def extract_one(self, item: CatalogueItem) -> np.ndarray:
        return summarise(self.frames(item), self.options.stats)


class ChromaStats(AudioExtractor):
    """librosa chroma (12 pitch classes), each summarised over time by mean and std (by default)."""

    name = "chroma_stats"
    OptionsModel = ChromaOptions

    @property
    def width(self) -> int:
        return 12 * len(self.options.stats)

    def frames(self, item: CatalogueItem) -> np.ndarray:
        o = self.options
        return chroma_frames(self.signal(item), o.sample_rate, o.n_fft, o.hop_length)

    def extract_one(self, item: CatalogueItem) -> np.ndarray:
        return summarise(self.frames(item), self.options.stats)


# ---- bag of frames ---------------------------------------------------------------------------
class BofOptions(AudioOptions):
    codebook_size: int = Field(32, ge=2, le=4096)
    frames_per_item: int = Field(256, ge=1)  # frames each train item contributes to the fit
    standardize: bool = True  # z-score frames with the train frames' mean / std before k-means
    seed: int = 0


class BagOfFrames(AudioExtractor):
    """Histogram of an item's frames over a k-means codebook fitted on TRAIN items' frames.

    Fit: each train item gives up to ``frames_per_item`` frames (a seeded sample, seeded per item
    by its content digest, so the fit does not depend on worker scheduling); sklearn
    MiniBatchKMeans (seeded) clusters them. Output: the share of the item's frames nearest to each
    codeword (sums to 1).
    """

    needs_fit = True
    OptionsModel = BofOptions
    base: ClassVar[type[AudioExtractor]]

    def __init__(self, **options: Any):
        super().__init__(**options)
        frame_keys = set(self.base.OptionsModel.model_fields) & set(AudioOptions.model_fields)
        self._frames = self.base(**{k: getattr(self.options, k) for k in frame_keys})
        self.mean: np.ndarray | None = None  # [d] set by fit / set_state
        self.std: np.ndarray | None = None  # [d]
        self.codebook: np.ndarray | None = None  # [k, d]

    @property
    def width(self) -> int:
        return self.options.codebook_size

    def frames(self, item: CatalogueItem) -> np.ndarray:
        return self._frames.frames(item)

    def fit_sample(self, item: CatalogueItem, digest: str) -> np.ndarray:
        frames = self.frames(item).T  # [T, d]
        n = self.options.frames_per_item
        if len(frames) > n:
            rng = np.random.default_rng([self.options.seed, int(digest[:15], 16)])
            frames = frames[np.sort(rng.choice(len(frames), n, replace=False))]
        return np.ascontiguousarray(frames, dtype=np.float32)

    def fit(self, samples: list[np.ndarray]) -> None:
        self.fit_frames(samples)

    def fit_frames(self, samples: list[np.ndarray]) -> None:
        """Fit the standardisation and the codebook on ``[T_i, d]`` frame samples."""
        from sklearn.cluster import MiniBatchKMeans

        frames = np.concatenate(samples, axis=0).astype(np.float64)  # [sum T_i, d]
        k = self.options.codebook_size
        if len(frames) < k:
            raise ConfigError(f"{self.name}: a codebook of {k} words needs at least {k} train "
                              f"frames, the train items gave {len(frames)}")
        mean, std = (zscore_stats(frames, 1e-8) if self.options.standardize
                     else (np.zeros(frames.shape[1]), np.ones(frames.shape[1])))  # [d] each
        kmeans = MiniBatchKMeans(n_clusters=k, random_state=self.options.seed, n_init=3,
                                 batch_size=min(4096, len(frames)))
        kmeans.fit((frames - mean) / std)
        self.set_state({"mean": mean.astype(np.float32), "std": std.astype(np.float32),
                        "codebook": kmeans.cluster_centers_.astype(np.float32)}, {})

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        assert self.mean is not None and self.std is not None and self.codebook is not None
        return {"mean": self.mean, "std": self.std, "codebook": self.codebook}, {}

    def set_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self.mean, self.std, self.codebook = arrays["mean"], arrays["std"], arrays["codebook"]
        super().set_state(arrays, meta)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """Frames ``[T, d]`` -> codeword shares ``[k]`` (sum 1)."""
        self.require_fitted()
        if len(frames) == 0:
            raise ExtractionError("the audio is too short for one frame")
        x = (frames - self.mean) / self.std  # [T, d]
        c = self.codebook  # [k, d]
        assert c is not None  # fitted (the base class checks before extracting)
        dist = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]  # [T, k]
        counts = np.bincount(dist.argmin(axis=1), minlength=len(c)).astype(np.float32)  # [k]
        return counts / counts.sum()

    def extract_one(self, item: CatalogueItem) -> np.ndarray:
        return self.encode(self.frames(item).T)


class MfccBof(BagOfFrames):
    """Bag of MFCC frames (20-d) over a k-means codebook of train frames."""

    name = "mfcc_bof"
    base = MfccStats


class ChromaBof(BagOfFrames):
    """Bag of chroma frames (12-d) over a k-means codebook of train frames."""

    name = "chroma_bof"
    base = ChromaStats


# ---- openSMILE -------------------------------------------------------------------------------
class EmobaseOptions(Options):
    sample_rate: int = Field(16000, ge=4000, le=96000)
    max_seconds: float = Field(60.0, gt=0)
    offset_seconds: float = Field(0.0, ge=0)


class Emobase(AudioExtractor):
    """openSMILE's ``emobase`` functionals (988 acoustic descriptors used in emotion recognition)."""

    name = "emobase"
    weights = "none (openSMILE config shipped in the opensmile package)"
    OptionsModel = EmobaseOptions
    modules = ("opensmile", "soundfile", "librosa")
    batch_size = 4

    @property
    def width(self) -> int:
        return EMOBASE_WIDTH

    def extract_one(self, item: CatalogueItem) -> np.ndarray:
        y = self.signal(item)
        frame = _smile().process_signal(y, self.options.sample_rate)  # [1, 988]
        return frame.to_numpy(dtype=np.float32).reshape(-1)


@lru_cache(maxsize=1)
def _smile():
    import opensmile

    return opensmile.Smile(feature_set=opensmile.FeatureSet.emobase,
                           feature_level=opensmile.FeatureLevel.Functionals)

