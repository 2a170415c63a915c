"""The one interface every feature extractor implements, and its pieces shared by all.

An extractor turns one catalogue item into a fixed-width float32 vector of one modality kind
(audio, text, sentiment, image). It declares which catalogue columns it reads (``inputs``), can
say whether it runs here (``available``), may be fitted on TRAIN items (codebooks, TF-IDF), and
has a content digest of its input so results can be cached by content. Heavy libraries are
imported inside methods, never at module import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from mmkgrec.config import parse_config
from mmkgrec.errors import ExtractionError, MMKGRecError

if TYPE_CHECKING:
    from mmkgrec.features.catalogue import CatalogueItem

Modality = Literal["audio", "text", "sentiment", "image"]


class Options(BaseModel):
    """Base of every extractor's options: a misspelt option is an error."""

    model_config = ConfigDict(extra="forbid")


def missing_modules(*modules: str) -> list[str]:
    """The named top-level modules that cannot be imported here (checked without importing)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Extractor(ABC):
    """A feature extractor: one catalogue item -> one float32 vector ``[width]``.

    Subclasses set the class attributes and implement :meth:`width`, :meth:`input_digest` and
    :meth:`extract_one` (or :meth:`extract_batch`); fitted ones (``needs_fit``) also implement
    :meth:`fit_sample`, :meth:`fit`, :meth:`get_state` and :meth:`set_state`.
    """

    name: ClassVar[str]
    modality: ClassVar[Modality]
    inputs: ClassVar[tuple[str, ...]]  # catalogue columns it reads; an item needs at least one
    version: ClassVar[str] = "1"  # bump when the output for the same input changes (drops cache)
    weights: ClassVar[str] = "none"  # where pretrained weights come from (for docs and `list`)
    needs_fit: ClassVar[bool] = False
    batch_size: ClassVar[int] = 8  # items per worker task
    OptionsModel: ClassVar[type[Options]] = Options

    def __init__(self, **options: Any):
        # Any: each extractor reads the fields of its own OptionsModel
        self.options: Any = parse_config(self.OptionsModel, f"{self.name} options", options)
        self._fitted = not self.needs_fit

    # ---- description ---------------------------------------------------------------------------
    @property
    @abstractmethod
    def width(self) -> int:
        """Length of every output vector."""

    def available(self) -> tuple[bool, str]:
        """(runs here?, why not / what it uses). Checked without importing heavy libraries."""
        return True, "ok"

    def config(self) -> dict:
        """Name, version and options: with the fit state, it identifies the output exactly."""
        return {"name": self.name, "version": self.version,
                "options": self.options.model_dump(mode="json")}

    def config_digest(self) -> str:
        return sha256_text(json.dumps(self.config(), sort_keys=True))

    # ---- inputs --------------------------------------------------------------------------------
    def has_input(self, item: CatalogueItem) -> bool:
        """Whether the item has any content this extractor reads (else: absent, no error)."""
        return any(item.has(column) for column in self.inputs)

    @abstractmethod
    def input_digest(self, item: CatalogueItem, file_digest) -> str:
        """sha256 of exactly what :meth:`extract_one` reads for ``item``.

        ``file_digest(path) -> str`` digests a file's bytes (memoised by the caller). Raises
        :class:`ExtractionError` when an input file is missing or unreadable.
        """

    # ---- extraction ------------------------------------------------------------------------------
    def extract_one(self, item: CatalogueItem) -> np.ndarray:
        """Features of one item: float32 ``[width]``; raises on a bad input."""
        raise NotImplementedError

    def extract_batch(self, items: list[CatalogueItem]) -> list[np.ndarray | BaseException]:
        """Features of several items; a failed item yields its exception, never stops the rest."""
        out: list[np.ndarray | BaseException] = []
        for item in items:
            try:
                out.append(self.checked(self.extract_one(item)))
            except Exception as error:  # noqa: BLE001 - one bad file must not stop the batch
                out.append(error)
        return out

    def checked(self, vector: np.ndarray) -> np.ndarray:
        """``vector`` as float32 ``[width]``, or ExtractionError when its shape or values are bad."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape != (self.width,):
            raise ExtractionError(f"{self.name}: produced {vector.shape[0]} values, expected {self.width}")
        if not np.isfinite(vector).all():
            raise ExtractionError(f"{self.name}: produced NaN or inf")
        return vector

    # ---- fitting (only when needs_fit) -----------------------------------------------------------
    def fit_sample(self, item: CatalogueItem, digest: str) -> Any:
        """What one TRAIN item contributes to the fit (e.g. a frame sample); computed in workers."""
        raise NotImplementedError

    def fit(self, samples: list[Any]) -> None:
        """Fit on the samples of the train items (in a fixed order: sorted by input digest)."""
        raise NotImplementedError

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The fitted state as (numeric arrays, JSON-able dict)."""
        return {}, {}

    def set_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self._fitted = True

    @property
    def fitted(self) -> bool:
        return self._fitted

    def require_fitted(self) -> None:
        if not self._fitted:
            raise MMKGRecError(f"extractor {self.name!r} must be fitted on train items first")

    def state_bytes(self) -> bytes:
        """The fitted state serialised as safetensors (arrays) + JSON metadata; b"" when unfitted."""
        if not self.needs_fit:
            return b""
        self.require_fitted()
        arrays, meta = self.get_state()
        return dump_state(arrays, meta)

    def load_state_bytes(self, data: bytes) -> None:
        arrays, meta = load_state(data)
        self.set_state(arrays, meta)

    def state_digest(self) -> str:
        return hashlib.sha256(self.state_bytes()).hexdigest()


class BatchExtractor(Extractor):
    """An extractor that computes many items in one call (a model forward, one VADER pass).

    Subclasses implement :meth:`prepare` (one item's input; raises on a bad file) and
    :meth:`compute` (the prepared inputs of the good items -> ``[g, width]``).
    """

    def prepare(self, item: CatalogueItem) -> Any:
        raise NotImplementedError

    def compute(self, prepared: list[Any]) -> np.ndarray:
        raise NotImplementedError

    def extract_batch(self, items: list[CatalogueItem]) -> list[np.ndarray | BaseException]:
        out: list[Any] = []
        for item in items:
            try:
                out.append(self.prepare(item))
            except Exception as error:  # noqa: BLE001 - one bad file must not stop the batch
                out.append(error)
        good = [i for i, value in enumerate(out) if not isinstance(value, BaseException)]
        if good:
            rows = self.compute([out[i] for i in good])  # [g, width]
            for row, i in enumerate(good):
                out[i] = self.checked(rows[row])
        return out

    def extract_one(self, item: CatalogueItem) -> np.ndarray:
        result = self.extract_batch([item])[0]
        if isinstance(result, BaseException):
            raise result
        return result


def dump_state(arrays: dict[str, np.ndarray], meta: dict) -> bytes:
    """Serialise a fit state without pickle: safetensors with the JSON dict in its metadata."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    if not arrays:  # safetensors needs no tensors, but keep one so the format is uniform
        arrays = {"__empty__": np.zeros(0, dtype=np.float32)}
    return save(arrays, metadata={"json": json.dumps(meta, sort_keys=True)})


def load_state(data: bytes) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors.numpy import load

    arrays = load(data)
    arrays.pop("__empty__", None)
    meta = json.loads(_safetensors_metadata(data).get("json", "{}"))
    return arrays, meta


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (its JSON header)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size].decode("utf-8"))
    return header.get("__metadata__", {}) or {}
