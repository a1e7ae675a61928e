"""``spice.distributed.select``: the selection with its rows spread over a Ray cluster.

Install with ``pip install "spice-select[ray]"``. Importing this module needs no Ray; calling
:func:`select` does, and says what to install when it is missing.

Modes: ``"exact"`` (below), ``"stochastic"`` (stochastic greedy with each sample drawn across the
shards) and ``"partition"`` (RandGreeDi: one round, (1 − 1/e)/2 in expectation at λ = 0).

``mode="exact"`` gives **the same selection as** ``spice.select(G, k, method="lazy")`` on one
machine: the same picks in the same order, bit-identical gains and log det, with the conflict
penalty, SPICE+'s early stop and k > d. Each Ray actor holds one contiguous block of rows (a
memory map of a feature store is mapped in place, only that block is read) and a C++ engine over
it (``spice._core.Stepper``). Per pick the coordinator takes the best exact candidate over the
shards (ties to the lowest row), whose row came with it, and sends it to every shard, which applies
the pick from the row itself and answers with its next candidate: one round trip a pick;
docs/distributed.md explains why that reproduces one machine bit for bit and what each pick
sends.

The shards are placed by a Ray placement group, one bundle per shard of CPUs that fit on one
node, one shard per node where there are enough nodes (STRICT_SPREAD, else SPREAD); store paths
are made absolute on the driver and checked on each node before any pick.

A shard that dies, fails or does not answer within ``shard_timeout`` stops the run with
:class:`ShardFailedError`, which names it and carries the cause. With ``checkpoint="picks.json"``
the picks made so far are kept there (written atomically every ``checkpoint_every`` seconds, at
the end, on a failure and on an interrupt; never with fewer picks than it holds), and the same call
run again replays them into fresh shards and continues: the result is the one an uninterrupted run
gives.
"""

from __future__ import annotations

# Re-exports: the public names (__all__) and the internals tests and bench/ reach as
# ``spice.distributed.<name>``. A test that patches a module-level value patches it in the module
# that reads it (``spice.distributed.connect._START_TIMEOUT_S``), so that one is not re-exported.
# ruff: noqa: F401
from ..errors import ShardFailedError
from .api import MODES, select
from .checkpoint import _PICK_FIELDS, CHECKPOINT_FORMAT, _run_key, _save_checkpoint
from .coordinator import _Run
from .partition import PARTITION_FACTOR
from .plan import _fit_cpus
from .shard import _Shard

__all__ = ["select", "ShardFailedError", "MODES"]
