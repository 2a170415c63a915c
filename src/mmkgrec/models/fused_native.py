"""The ``native`` backend of :mod:`mmkgrec.models.fused`: ``fused_kernel.c`` compiled on first use.

The C source ships with the package. The first plan that asks for it compiles it with the
system C compiler (``$CC``, else ``cc``) into ``$MMKGREC_CACHE/kernels/``. The library name
holds a hash of the source, the flags, the compiler and this CPU, so an edit or another machine
builds its own. The build writes a temporary file and renames it into place, so concurrent
processes are safe. Without a compiler, or when the build or the load fails, :func:`library`
warns once per process and returns None, and the caller stays on the eager ``fused`` path.

Threads: the kernel is compiled with ``-fopenmp`` and binds to the libgomp torch has already
loaded (the same soname), so it runs on torch's own thread pool and follows
``torch.set_num_threads``. (Python threads calling it instead were measured slower: torch's
OpenMP workers spin after each torch op and took the second core from the kernel.)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmkgrec import paths

SOURCE = Path(__file__).with_name("fused_kernel.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC")
_LIB: list[ctypes.CDLL | None] = []  # [library] once built, [None] once it failed
_P, _I = ctypes.c_void_p, ctypes.c_int64


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((line for line in text.splitlines() if line.startswith("flags")), text[:4096])


def _build(compiler: str) -> Path:
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, compiler, platform.machine(),
                                    _cpu_signature()]).encode()).hexdigest()[:20]
    target = paths.cache_dir("kernels") / f"fused-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE)], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(built, target)
    return target


def _load(path: Path) -> ctypes.CDLL:
    """The library at ``path`` with its functions' argument types declared."""
    lib = ctypes.CDLL(str(path))
    lib.tanh_values.argtypes = [_P, _I, _P]
    lib.tanh_values.restype = None
    plan_args: list[Any] = [_P, _I, _P, _I, _I, _I, _P, _P, _I, _P, _P, _P, _I, _I]
    lib.kg_scores_1hop.argtypes = [*plan_args, _P, _I]
    lib.kg_scores_1hop.restype = None
    lib.kg_rank_1hop.argtypes = [*plan_args, _I, _P, _P, _I, _P, _P]
    lib.kg_rank_1hop.restype = _I
    lib.kg_two_hops.argtypes = [_P, _I, _P, _I, _I, _I, _P, _P, _I, _P, _P, _I, ctypes.c_int,
                                _P, _I, _P, _I, _P, _P, _I, _P, _P, _P, _I, _I, _I, _P, _I, _P,
                                _P, _I, _P, _P]
    lib.kg_two_hops.restype = _I
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel library, or None (after one warning) where it cannot be built."""
    if _LIB:
        return _LIB[0]
    compiler = os.environ.get("CC", "cc")
    try:
        if shutil.which(compiler) is None:
            raise FileNotFoundError(f"no C compiler {compiler!r} on PATH")
        lib = _load(_build(compiler))
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        detail = getattr(error, "stderr", None) or str(error)
        warnings.warn(f"the native KG ranking kernel is unavailable ({str(detail)[:300]}); "
                      f"using the eager fused path", RuntimeWarning, stacklevel=3)
        _LIB.append(None)
        return None
    _LIB.append(lib)
    return lib


def usable(*tensors: Tensor) -> bool:
    """Whether the native kernel can take these tensors (float32 / int64 on the CPU)."""
    return all(t.device.type == "cpu" for t in tensors) and library() is not None


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def tanh(x: Tensor, out: Tensor | None = None) -> Tensor:
    """The kernel's tanh of a float32 CPU tensor (the accuracy test; the benchmarks' floor),
    into ``out`` (a contiguous float32 tensor of x's shape) where given."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native kernel is unavailable")
    x = x.contiguous().float()
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x.shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError("out must be a contiguous float32 tensor of x's shape")
    lib.tanh_values(_ptr(x), x.numel(), _ptr(out))
    return out


LANES = 16  # fused_kernel.c's items per SIMD step
#: the inner activations the kernel has (fused_kernel.c's ACT_* codes)
ACTIVATIONS: dict[Callable[[Tensor], Tensor], int] = {
    torch.relu: 0, torch.tanh: 1, torch.nn.functional.leaky_relu: 3}


@dataclass
class Tables:
    """A 1-hop plan's tables in the kernel's group-major layout (G = ceil(n / LANES), padded)."""

    const_table: Tensor  # [G_c, d, L] the user-independent items' vectors
    const_items: Tensor  # [I_c] their ids
    slots: Tensor  # [G, K, d, L] the user-dependent items' slots
    relations: Tensor  # [G * L, K] their neighbours' relations (padding: relation 0)
    rows: Tensor  # [n] their ids
    n_items: int


def _grouped(x: Tensor) -> Tensor:
    """[n, ...] -> [G, ..., L]: item i at group i // L, lane i % L (zero padding)."""
    n, rest = x.shape[0], x.shape[1:]
    padded = x.new_zeros(-(-n // LANES) * LANES, *rest)
    padded[:n] = x
    grouped = padded.reshape(-1, LANES, *rest)  # [G, L, ...]
    return grouped.permute(0, *range(2, grouped.ndim), 1).contiguous()  # [G, ..., L]


def tables(const_items: Tensor, const_vectors: Tensor, relations: Tensor, slots: Tensor,
           rows: Tensor, n_items: int) -> Tables:
    """const_items [I_c] / const_vectors [I_c, d]; relations [n, K] / slots [n, K, d] /
    rows [n] (the 1-hop user-dependent items; n = 0 for deeper plans) -> the kernel's
    :class:`Tables`."""
    padded_relations = relations.new_zeros(-(-len(rows) // LANES) * LANES, relations.shape[1])
    padded_relations[:len(rows)] = relations
    return Tables(_grouped(const_vectors.float()), const_items.long().contiguous(),
                  _grouped(slots.float()), padded_relations.long().contiguous(),
                  rows.long().contiguous(), n_items)


def _plan_args(t: Tables, exp_scores: Tensor, users: Tensor, begin: int, end: int) -> list:
    return [_ptr(exp_scores), exp_scores.shape[1], _ptr(users), begin, end, users.shape[1],
            _ptr(t.const_table), _ptr(t.const_items), len(t.const_items), _ptr(t.slots),
            _ptr(t.relations), _ptr(t.rows), len(t.rows), t.relations.shape[1]]


def scores_1hop(t: Tables, exp_scores: Tensor, users: Tensor) -> Tensor:
    """1 hop: exp_scores [B, R] (exp of the user-relation scores), users [B, d] -> the score
    of every item [B, I]."""
    lib = library()
    assert lib is not None
    exp_scores, users = exp_scores.contiguous().float(), users.contiguous().float()
    out = users.new_empty(len(users), t.n_items)  # [B, I]
    lib.kg_scores_1hop(*_plan_args(t, exp_scores, users, 0, len(users)), _ptr(out), t.n_items)
    return out


def rank_1hop(t: Tables, exp_scores: Tensor, users: Tensor, exclude_indptr: Tensor,
              exclude_items: Tensor, k: int) -> tuple[Tensor, Tensor, int]:
    """1 hop, full ranking: (top_scores [B, k], top_items [B, k], users with a NaN among their
    ranked scores). Ties: lower item id first; an item scored -inf is id -1.
    exclude_indptr [B + 1] / exclude_items [m]: each user's excluded items, CSR."""
    lib = library()
    assert lib is not None and 1 <= k <= t.n_items
    exp_scores, users = exp_scores.contiguous().float(), users.contiguous().float()
    exclude_indptr, exclude_items = exclude_indptr.contiguous().long(), exclude_items.long()
    exclude_items = exclude_items.contiguous()
    top_scores = users.new_empty(len(users), k)  # [B, k]
    top_items = torch.empty(len(users), k, dtype=torch.int64)  # [B, k]
    bad = lib.kg_rank_1hop(*_plan_args(t, exp_scores, users, 0, len(users)), t.n_items,
                           _ptr(exclude_indptr), _ptr(exclude_items), k, _ptr(top_scores),
                           _ptr(top_items))
    if bad < 0:
        raise MemoryError("the native ranking kernel could not allocate its scratch")
    return top_scores, top_items, bad


def two_hops(t: Tables, exp_scores: Tensor, users: Tensor, activation: int,
             relations0: Tensor, slots0: Tensor, shared: Tensor, weight: Tensor,
             neighbors: Tensor, own: Tensor | None, self_offset: int, bias: Tensor,
             relations1: Tensor, items: Tensor,
             exclusions: tuple[Tensor, Tensor, int] | None = None
             ) -> Tensor | tuple[Tensor, Tensor, int]:
    """Two hops, one user at a time (its round-0 rows and table stay in cache).

    Round 0: relations0 [n0, K] / slots0 [n0, K, d] (the user-dependent entities, inner
    activation code ``activation``). The last round reads the table [shared [n_s, w] ;
    h @ weight.T] (weight [w, d]) at columns neighbors [n1, K] and own [n1] (None: no self
    term, feature offset self_offset), plus bias [d]; relations1 [n1, K]; items [n1] the
    user-dependent items. Without ``exclusions``: the scores of every item [B, I]; with
    (indptr [B + 1], items [m], k): (top_scores, top_items, users with a NaN), as
    :func:`rank_1hop`."""
    lib = library()
    assert lib is not None
    f32 = [x.contiguous().float() for x in (exp_scores, users, slots0, shared, weight.T, bias)]
    exp_scores, users, slots0, shared, weight_t, bias = f32
    i64 = [x.contiguous().long() for x in (relations0, neighbors, relations1, items)]
    relations0, neighbors, relations1, items = i64
    own = None if own is None else own.contiguous().long()
    n_users, d = users.shape
    common = [_ptr(exp_scores), exp_scores.shape[1], _ptr(users), 0, n_users, d,
              _ptr(t.const_table), _ptr(t.const_items), len(t.const_items), _ptr(relations0),
              _ptr(slots0), len(slots0), activation, _ptr(shared), len(shared), _ptr(weight_t),
              weight_t.shape[1], _ptr(neighbors), None if own is None else _ptr(own),
              self_offset, _ptr(bias), _ptr(relations1), _ptr(items), len(items),
              neighbors.shape[1], t.n_items]
    if exclusions is None:
        out = users.new_empty(n_users, t.n_items)  # [B, I]
        if lib.kg_two_hops(*common, _ptr(out), t.n_items, None, None, 0, None, None) < 0:
            raise MemoryError("the native ranking kernel could not allocate its scratch")
        return out
    indptr, excluded, k = exclusions
    indptr, excluded = indptr.contiguous().long(), excluded.contiguous().long()
    top_scores = users.new_empty(n_users, k)  # [B, k]
    top_items = torch.empty(n_users, k, dtype=torch.int64)  # [B, k]
    bad = lib.kg_two_hops(*common, None, 0, _ptr(indptr), _ptr(excluded), k, _ptr(top_scores),
                          _ptr(top_items))
    if bad < 0:
        raise MemoryError("the native ranking kernel could not allocate its scratch")
    return top_scores, top_items, bad
