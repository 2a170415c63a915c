"""The modality Parquet codec shared by native datasets and ``features extract`` outputs.

A modality file holds, per item in order, ``vector`` fixed_size_list<float32>[d] (left out when
d = 0), ``present`` bool, and optionally ``item_id`` string first.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def modality_table(matrix: np.ndarray, mask: np.ndarray,
                   item_ids: pa.Array | None = None) -> pa.Table:
    """``matrix`` [n, d] and ``mask`` [n] bool (and ``item_ids`` [n]) as one Arrow table."""
    columns: dict[str, pa.Array] = {} if item_ids is None else {"item_id": item_ids}
    if matrix.shape[1]:
        flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel())  # [n * d]
        columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
    columns["present"] = pa.array(np.asarray(mask, dtype=bool))
    return pa.table(columns)


def is_vector_type(kind: pa.DataType, width: int) -> bool:
    """Whether ``kind`` is the ``vector`` column's type for ``width`` values."""
    return (pa.types.is_fixed_size_list(kind) and kind.list_size == width
            and kind.value_type == pa.float32())


def table_vectors(table: pa.Table, width: int) -> np.ndarray:
    """The ``vector`` column as float32 ``[n, width]`` (``[n, 0]`` when width is 0)."""
    if not width:
        return np.zeros((table.num_rows, 0), dtype=np.float32)
    vectors = table.column("vector").combine_chunks().flatten().to_numpy()
    return vectors.astype(np.float32, copy=False).reshape(-1, width)  # [n, width]
