"""The selection's numeric rules on the Python side (GPU driver, reference greedy, input checks).

They mirror ``csrc/spice/numerics.hpp``, the C++ core's one home for them; docs/algorithm.md §2
explains each. A candidate is in span(S) (dead, gain 0) when its residual q <= REL_TINY·‖g‖²
and its gain α·q <= GAIN_TINY; the cosine to the mean of the picks is guarded by ETA; the log-det
greedy refuses a row with α‖g‖² > MAX_ALPHA_NORM2 (beyond it round-off in q is the gain's size).
"""

REL_TINY = 1e-10
GAIN_TINY = 1e-10
ETA = 1e-8
MAX_ALPHA_NORM2 = 1e12
