"""The data layer: the MMKG object, file formats, the dataset registry, protocols and splits.

Typical use::

    from mmkgrec import data
    ds = data.load("lastfm-kgcn")             # or "synthetic", or a directory
    sp = data.split(ds, protocol="topk", seed=0)
"""

from mmkgrec.data.dataset import MMKG, build_mmkg
from mmkgrec.data.registry import DATASETS, fetch, load, read_directory

__all__ = ["DATASETS", "MMKG", "build_mmkg", "fetch", "load", "read_directory"]
