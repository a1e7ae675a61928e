"""Ray, imported and initialised (the instance already connected, ``RAY_ADDRESS``, the cluster
``ray start`` recorded on this machine, a stale record of a dead one ignored, or a private one),
and the shards placed on it: a placement group of one bundle per shard, one actor in each."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._inputs import describe_bad_row
from .coordinator import _Run
from .plan import _node_cpus
from .shard import _Shard

_START_TIMEOUT_S = 600.0  # placement and start-up of the shards


def _import_ray() -> Any:
    try:
        import ray  # type: ignore[import-not-found]
    except ImportError as e:
        raise ModuleNotFoundError(
            "spice.distributed needs Ray: pip install 'spice-select[ray]' (or pip install ray)"
        ) from e
    return ray


def _answers(address: str, timeout: float = 2.0) -> bool:
    """Whether something listens at host:port (a GCS left by a dead cluster does not)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _connect(address: str | None) -> tuple[Any, str]:
    """Ray, initialised as ``address`` says, and a sentence saying which instance is used.

    None: the cluster ``RAY_ADDRESS`` names, else the one ``ray start`` recorded on this machine
    if it answers, else a private local instance (a stale record of a dead cluster is ignored,
    where Ray itself would spend 30 s failing to reach it)."""
    ray = _import_ray()
    if ray.is_initialized():
        try:
            cur = ray.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 (a client connection has no GCS address here)
            cur = None
        if address not in (None, "auto") and cur is not None:
            want = address.split("://", 1)[-1]
            if want != cur:
                raise ValueError(
                    f"address={address!r}, but this process is already connected to the Ray "
                    f"instance at {cur}: call ray.shutdown() first, or pass address=None to "
                    "use the instance already connected"
                )
        return ray, f"the Ray instance this process was already connected to ({cur})"
    kw = dict(include_dashboard=False, logging_level="WARNING")
    if address is None and not os.environ.get("RAY_ADDRESS"):
        from ray._common.utils import get_ray_address_file  # type: ignore[import-not-found]

        f = Path(get_ray_address_file(None))
        rec = f.read_text(encoding="utf-8").strip() if f.is_file() else ""
        if rec and _answers(rec):
            ray.init(address=rec, **kw)
            return ray, f"joined the running cluster at {rec} (recorded in {f})"
        ray.init(address="local", **kw)
        stale = f" ({f} names {rec}, which does not answer: ignored)" if rec else ""
        return ray, f"started a private local Ray instance{stale}"
    ray.init(address=address or os.environ["RAY_ADDRESS"], **kw)
    return ray, f"joined the cluster at {address or os.environ['RAY_ADDRESS']}"


@contextlib.contextmanager
def _placed(ray: Any, s_count: int, cpus: float, strategy: str) -> Iterator[tuple[Any, list]]:
    """A placement group of one bundle per shard, placed, and the list its actors go in; on the
    way out (done, failed or interrupted) the actors are killed and the group removed."""
    from ray.util.placement_group import (  # type: ignore[import-not-found]
        placement_group,
        remove_placement_group,
    )

    # one bundle per shard, on distinct nodes where there are enough: a node's memory bandwidth
    # and page cache serve one shard, and one lost node loses one shard
    pg = placement_group([{"CPU": cpus}] * s_count, strategy=strategy)
    actors: list = []
    try:
        if not pg.wait(timeout_seconds=_START_TIMEOUT_S):
            raise RuntimeError(
                f"Ray could not place {s_count} shards of {cpus:g} CPU(s) each ({strategy}) "
                f"within {_START_TIMEOUT_S:g} s on nodes with {_node_cpus(ray)} CPUs: other "
                "jobs hold them? (threads=... asks for fewer)"
            )
        yield pg, actors
    finally:
        for x in actors:
            try:
                ray.kill(x)
            except Exception:  # noqa: BLE001 (already gone)
                pass
        try:
            remove_placement_group(pg)
        except Exception:  # noqa: BLE001 (the cluster is gone: nothing to free)
            pass


def _start(
    run: _Run,
    pg: Any,
    specs: list,
    cpus: float,
    bf16: bool,
    options: dict,
    spills: list[str],
    fail_at: tuple | None,
    alpha: float,
    code: int,
) -> tuple[list[dict], str]:
    """Start one actor per shard in its bundle, have each map its rows and build its engine;
    returns what each reports and the kernel family they share. A bad row is named here."""
    from ray.util.scheduling_strategies import (  # type: ignore[import-not-found]
        PlacementGroupSchedulingStrategy,
    )

    remote_cls = run.ray.remote(max_restarts=0, max_task_retries=0)(_Shard)
    actors = run.actors
    for s, (spec, lo, hi, _) in enumerate(specs):
        fail = None
        if fail_at is not None and fail_at[0] == s:
            fail = (fail_at[1], fail_at[2] if len(fail_at) > 2 else "exit")
        where = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=s)
        actors.append(
            remote_cls.options(num_cpus=cpus, scheduling_strategy=where).remote(
                spec, lo, hi, bf16, dict(options, spill_dir=spills[s]), fail
            )
        )
    infos = run.gather([x.open.remote() for x in actors], timeout=_START_TIMEOUT_S, starting=True)
    run.hosts = {s: i["host"] for s, i in enumerate(infos)}
    isas = {i["isa"] for i in infos}
    if len(isas) > 1:
        raise RuntimeError(
            "the shards run different kernel families "
            f"({', '.join(sorted(isas))}): their dot products would round differently; set "
            "SPICE_KERNELS to the same family (generic, avx2, avx512) on every node"
        )
    bad = [(run.glob(s, i["bad_row"]), s) for s, i in enumerate(infos) if i["bad_row"] >= 0]
    if bad:
        g, s = min(bad)
        row = run.gather([actors[s].row.remote(run.owner(g)[1])], [s])[0]
        raise ValueError(describe_bad_row(row[None, :], code, 0, alpha, row_name=g))
    return infos, isas.pop()
