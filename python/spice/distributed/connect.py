"""Ray, imported and initialised: the instance already connected, ``RAY_ADDRESS``, the cluster
``ray start`` recorded on this machine (a stale record of a dead one ignored), or a private one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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
