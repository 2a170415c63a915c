"""The data layer: the MMKG object, file formats, the dataset registry, protocols and splits.

Typical use::

    from mmkgrec import data
    ds = data.load("lastfm-kgcn")                  # or "synthetic", or a directory
    sp = data.split(ds, protocol="topk", seed=0)   # leak-free; see mmkgrec.data.split

(``data.split`` is the function; import the module's other names with
``from mmkgrec.data.split import Split, apply_presplit``.)
"""

from mmkgrec.data.dataset import MMKG, build_mmkg
from mmkgrec.data.registry import DATASETS, fetch, load, read_directory
from mmkgrec.data.split import Split, apply_presplit, split

__all__ = ["DATASETS", "MMKG", "Split", "apply_presplit", "build_mmkg", "fetch", "load",
           "read_directory", "split"]
