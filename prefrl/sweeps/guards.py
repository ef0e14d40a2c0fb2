"""Guards of a sweep's result directory and cluster, checked before anything is written (no JAX).

- :func:`default_compile_cache` / :func:`check_compile_cache`: JAX's
  compilation cache lives in the user's cache folder, never in a result
  directory (compiled code is native code; a result folder may come from
  someone else).
- :func:`check_ray_address`: an unreachable ``--ray HOST:PORT`` fails within a
  bounded time instead of retrying until killed.
- :func:`check_same_sweep`: a result directory holds one sweep's records.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prefrl.sweeps.spec import SweepError, SweepSpec
from prefrl.sweeps.store import ResultStore

CACHE_ENV = "PREFRL_JAX_CACHE"


def default_compile_cache() -> Path:
    """The compilation cache folder: ``$PREFRL_JAX_CACHE``, else ``$XDG_CACHE_HOME/prefrl/jax``
    (``~/.cache/prefrl/jax``). JAX keys its entries by program, backend and versions."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prefrl" / "jax"


def check_compile_cache(cache: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Refuse a compilation cache inside the result directory ``out`` (or holding it)."""
    cache_path, out_path = Path(cache).resolve(), Path(out).resolve()
    if cache_path == out_path or out_path in cache_path.parents or cache_path in out_path.parents:
        raise SweepError(f"compilation cache {cache} is inside the result directory {out} (or "
                         "holds it); a result folder never holds compiled code: choose a cache "
                         f"elsewhere (--compile-cache or ${CACHE_ENV})")
    return cache_path


def check_ray_address(address: str, timeout: float) -> None:
    """Refuse, within ``timeout`` seconds, a Ray address ``HOST:PORT`` nothing answers at.

    ``local`` and ``auto`` (and ``ray://`` client addresses) are left to Ray.
    Ray itself retries an unreachable address for minutes.
    """
    import socket

    if address in ("local", "auto") or "://" in address:
        return
    if not 0 < timeout <= 3600:
        raise SweepError(f"--ray-timeout must be in (0, 3600] seconds, got {timeout}")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SweepError(f"--ray {address}: expected HOST:PORT (or 'local' / 'auto')")
    import threading

    # Name resolution has no timeout of its own: connect in a thread and stop waiting.
    result: dict[str, BaseException | None] = {}

    def connect() -> None:
        # Ray's GCS is a gRPC server: it answers HTTP/2's connection preface with a
        # SETTINGS frame (type 4). A port that merely accepts connections is not enough.
        try:
            with socket.create_connection((host, int(port)), timeout=timeout) as conn:
                conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)[:3]
                             + b"\x04" + bytes(5))
                frame = conn.recv(9)
            result["error"] = None if len(frame) == 9 and frame[3] == 4 else OSError(
                "connected, but no gRPC server (Ray's GCS) answered")
        except OSError as err:
            result["error"] = err

    start = time.monotonic()
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    waited = time.monotonic() - start
    if "error" not in result or isinstance(result["error"], TimeoutError):
        # (the socket's own timeout equals ours: whichever fires first, the same answer)
        raise SweepError(f"--ray {address}: no answer within --ray-timeout {timeout:g} s; is a "
                         "Ray cluster running there?")
    err = result["error"]
    if err is not None:
        reason = getattr(err, "strerror", None) or str(err)
        raise SweepError(f"--ray {address}: no Ray cluster answers there ({reason}; gave up "
                         f"after {waited:.1f} s)")


def check_same_sweep(spec: SweepSpec, store: ResultStore, budget_scale: float) -> None:
    """Refuse a result directory that holds another sweep's results, naming the difference.

    Its ``sweep.json`` (written by the sweep that made it) must name this sweep
    and its cells; records of two sweeps never mix, and ``sweep.json`` /
    ``sweep.toml`` are never overwritten by another sweep's.
    """
    import json

    manifest = store.root / "sweep.json"
    if not manifest.is_file():
        return
    try:
        theirs = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SweepError(f"{manifest}: unreadable ({err}); a result directory of another "
                         "sweep? choose another --out") from err
    if not isinstance(theirs, dict):
        raise SweepError(f"{manifest}: not a sweep manifest; choose another --out")
    # Cells are compared without their files' paths: a moved checkout is the same sweep
    # (run ids identify data by content).
    ours = {"name": spec.name, "budget_scale": budget_scale, "seeds": list(spec.seeds),
            "cells": [_without_paths(c.to_dict()) for c in spec.cells()]}
    diffs = []
    for key in ("name", "budget_scale", "seeds"):
        if theirs.get(key) != ours[key]:
            diffs.append(f"{key} {theirs.get(key)!r} there, {ours[key]!r} here")
    their_cells = [_without_paths(c) for c in theirs.get("cells")] if isinstance(
        theirs.get("cells"), list) else []
    if their_cells != ours["cells"]:
        diffs.append(_cell_difference(their_cells, ours["cells"]))
    if diffs:
        raise SweepError(f"{store.root} holds the results of another sweep "
                         f"({theirs.get('source')}): " + "; ".join(diffs)
                         + "; choose another --out")


def _without_paths(cell: Any) -> Any:
    return {k: v for k, v in cell.items() if k not in ("dataset", "expert")} if isinstance(
        cell, dict) else cell


def _cell_difference(theirs: list[Any], ours: list[dict[str, Any]]) -> str:
    if len(theirs) != len(ours):
        return f"{len(theirs)} cells there, {len(ours)} here"
    for a, b in zip(theirs, ours, strict=True):
        if a != b:
            if isinstance(a, dict):
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                return "cells differ in " + ", ".join(
                    f"{k} ({a.get(k)!r} there, {b.get(k)!r} here)" for k in keys[:3])
            break
    return "the cells differ"


__all__ = ["CACHE_ENV", "check_compile_cache", "check_ray_address", "check_same_sweep",
           "default_compile_cache"]
