"""mmkgrec: music recommendation from multi-modal knowledge graphs.

Public entry points: :mod:`mmkgrec.data` (load, split, convert), :mod:`mmkgrec.graph`
(CSR knowledge graph, neighbour sampling) and :mod:`mmkgrec.evaluate` (metrics).
"""

from mmkgrec.errors import ConfigError, DataFormatError, DatasetNotFoundError, MMKGRecError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataFormatError", "DatasetNotFoundError", "MMKGRecError", "__version__"]
