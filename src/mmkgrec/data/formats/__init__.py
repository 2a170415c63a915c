"""Readers and writers of on-disk formats. Each returns / takes an :class:`~mmkgrec.data.MMKG`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mmkgrec.errors import ConfigError

if TYPE_CHECKING:
    from mmkgrec.data.dataset import MMKG

WRITABLE = ("native", "recbole")


def convert(src_dataset: MMKG, dst: str | Path, to: Literal["native", "recbole"]) -> Path:
    """Write a loaded dataset to ``dst`` in another format.

    Args:
        src_dataset: the dataset (from any reader).
        dst: the output directory (created if needed).
        to: ``native`` (Parquet + dataset.json; holds any dataset) or ``recbole`` (atomic files
            named after ``dst``).

    Returns:
        The output directory.

    Raises:
        ConfigError: ``to`` is not a writable format.
    """
    # Imported here so that ``import mmkgrec.data`` does not pay for pyarrow.
    if to == "native":
        from mmkgrec.data.formats.native import write_native

        return write_native(src_dataset, dst)
    if to == "recbole":
        from mmkgrec.data.formats.recbole import write_recbole

        return write_recbole(src_dataset, dst)
    raise ConfigError(f"cannot convert to {to!r}: choose one of {', '.join(WRITABLE)}")
