"""Candidate retrieval at catalogue scale: a faiss inner-product index over user-independent
item vectors, queried with the user vector; the service then re-ranks the candidates exactly
with the model's user-conditioned scores (two-stage retrieval).

Kinds: ``flat`` (exact inner product; small catalogues), ``hnsw`` (graph index, no training),
``ivf`` (k-means cells, ``nprobe`` of them scanned per query). ``auto`` picks ``flat`` below
50,000 items, else ``ivf``. faiss is imported here only, never by ``import mmkgrec``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from mmkgrec.errors import ConfigError, MMKGRecError

IndexKind = Literal["auto", "flat", "hnsw", "ivf"]
KINDS = ("auto", "flat", "hnsw", "ivf")
AUTO_FLAT_BELOW = 50_000


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - serve extra not installed
        raise MMKGRecError("two-stage retrieval needs faiss: pip install 'mmkgrec[serve]'") from None
    return faiss


class ItemIndex:
    """A faiss inner-product index whose ids are the service's item ids ``0..n-1`` (new items are
    appended with :meth:`add`, so ids stay contiguous)."""

    def __init__(self, vectors: np.ndarray, kind: IndexKind = "auto", *, nlist: int | None = None,
                 nprobe: int = 32, hnsw_m: int = 32, ef_search: int = 128, seed: int = 0):
        if kind not in KINDS:
            raise ConfigError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        faiss = _faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # [n, d]
        n, dim = vectors.shape
        if kind == "auto":
            kind = "flat" if n < AUTO_FLAT_BELOW else "ivf"
        self.kind, self.dim = kind, dim
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.hnsw.efSearch = ef_search
        else:
            nlist = nlist or int(max(1, min(np.sqrt(n), n // 39)))  # faiss wants >= 39 per cell
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)  # k-means on a sample of 64 vectors per cell
            sample = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
            index.cp.seed = seed
            index.train(sample)
            index.nprobe = min(nprobe, nlist)
            self._quantizer = quantizer  # keep it alive as long as the index
        index.add(vectors)
        self.index = index
        self.params = {"kind": kind, "n": n, "dim": dim,
                       **({"nlist": nlist, "nprobe": index.nprobe} if kind == "ivf" else {}),
                       **({"M": hnsw_m, "efSearch": ef_search} if kind == "hnsw" else {})}

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        """Append items ``size .. size + len(vectors) - 1``: vectors [m, d] (in place: only
        for an index no other thread searches; the service uses :meth:`extended`)."""
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def extended(self, vectors: np.ndarray) -> ItemIndex:
        """A copy with items ``size .. size + len(vectors) - 1`` appended; this index is left
        as it is, so searches running on it meanwhile are safe (faiss does not allow adding
        while another thread searches). One copy of the index per registration."""
        copy = object.__new__(ItemIndex)
        copy.kind, copy.dim, copy.params = self.kind, self.dim, dict(self.params)
        copy.index = _faiss().clone_index(self.index)
        copy.add(vectors)
        copy.params["n"] = copy.size
        return copy

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        """Top-``n`` item ids by inner product for each query: queries [B, d] -> [B, n] int64
        (-1 where the index returns fewer)."""
        n = max(1, min(int(n), self.size))
        _, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), n)
        return ids.astype(np.int64)
