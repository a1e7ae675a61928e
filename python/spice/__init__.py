"""spice: choose which examples to fine-tune a large language model on.

The selector (numpy only)::

    import spice
    sel = spice.select(G, 0.1)          # G: (n, d) per-sample gradient features
    sel.indices, sel.gains, sel.logdet, sel.stop_reason
    opts = spice.SelectOptions(conflict_penalty=0.2, early_stop=0.3)   # checked once, here
    quota = spice.Constraints(groups=source_of_each_row, quotas={"wiki": 0.5})
    sel = spice.select(G, 0.1, options=opts, constraints=quota)

Gradient features from Hugging Face models live in :mod:`spice.features` (extra ``[hf]``).
"""

from __future__ import annotations

from . import _core, formats, stores
from .analysis import Curvature, curvature, logdet
from .constraints import Constraints
from .errors import SpiceError
from .options import SelectOptions
from .selection import Selection, resolve_k, select
from .store import FeatureStore, merge_stores

__version__ = "0.1.0"

__all__ = [
    "Constraints",
    "Curvature",
    "FeatureStore",
    "Selection",
    "SpiceError",
    "__version__",
    "curvature",
    "kernel_isa",
    "logdet",
    "merge_stores",
    "resolve_k",
    "select",
    "formats",
    "SelectOptions",
    "stores",
]


def kernel_isa() -> str:
    """Which compiled kernel family runs on this CPU: ``"avx2-fma"`` or ``"generic"``."""
    return str(_core.kernel_isa())
