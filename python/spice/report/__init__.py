"""``spice report RUN_DIR``: plots and a Markdown summary of a finished selection run.

Reads ``RUN_DIR/selection.json`` (written by ``spice select``, ``spice run`` or ``spice demo``).
What it can show depends on what is still there:

- always: the run's numbers, each with a one-line definition, and the gain, ε and conflict traces;
- the feature store it names (``config.features``): the comparison with plain Fisher greedy
  (λ = 0) on the same features, the conflict of the whole pool, each record's tokens and proxy
  loss (picks against the pool), and where the picks sit among the pool's gradient norms;
- the data (``config.data``, else the run's own ``subset`` file for the picks alone): the first
  picks' text and, when the records carry a source field (``source``, ``family``, ...), the
  picks per source against the pool's shares.

Whatever is missing is said in the report, never silently left out.

Modules: ``stats`` (norm percentiles, the high-norm warning, distributions, pool conflict),
``records`` (the records' text and source labels), ``plots`` (matplotlib, imported only when a
report is drawn) and ``make`` (:func:`make_report`, which writes report.md).
"""

from __future__ import annotations

# percentiles_of (read by spice.selection), TABLE_ROWS and GROUP_FIELDS are reached here too.
from .make import TABLE_ROWS, make_report  # noqa: F401
from .plots import require_matplotlib
from .records import GROUP_FIELDS  # noqa: F401
from .stats import (
    HIGH_NORM_PERCENTILE,
    HIGH_NORM_WARNING,
    distribution,
    high_norm_warning,
    norm_percentiles,
    percentiles_of,  # noqa: F401
)

__all__ = [
    "HIGH_NORM_PERCENTILE",
    "HIGH_NORM_WARNING",
    "distribution",
    "high_norm_warning",
    "make_report",
    "norm_percentiles",
    "require_matplotlib",
]
