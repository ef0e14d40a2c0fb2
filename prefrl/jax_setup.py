"""The ``prefrl`` command's JAX settings for CPUs (:func:`configure_jax`), and their record.

Kept apart from :mod:`prefrl.cli` so that benchmarks can record the settings
without importing the command line.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# XLA:CPU's concurrency-optimised HLO scheduler deadlocks MJX rollouts from B = 1024
# environments up (jaxlib 0.10.2, mujoco-mjx 3.17, 2-core box: the compiled scan never
# returns, every XLA worker thread waits; B = 512 runs; with the scheduler off, 5 of 5
# runs at B = 1024 and B = 4096 completed, at the same speed).
MJX_CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def configure_jax(environ: MutableMapping[str, str] = os.environ, *, mjx: bool = False) -> None:
    """The command line's JAX settings for the CPU, made before JAX starts a backend.

    - One host device per core (``--xla_force_host_platform_device_count``):
      XLA runs one computation at a time per device, so this is what lets the
      update of several seeds use every core (:mod:`prefrl.loops.ppo_seeds`
      shards the seed axis over them). Everything else runs on the first device.
    - Synchronous CPU dispatch (``jax_cpu_enable_async_dispatch=False``): the
      per-step policy call of a rollout waits for its action anyway, and handing
      it to another thread costs 78 µs against 26 µs a call at B = 64 (2-core box, load ≈ 0.5).
    - With ``mjx=True`` (the command runs ``--backend mjx``): :data:`MJX_CPU_FLAG`,
      without which MJX on XLA:CPU deadlocks at large batches. Code that
      runs MJX on a CPU itself sets it in ``XLA_FLAGS`` before importing JAX.

    None of them changes a number computed (the scheduler flag reorders, not
    changes, the operations: the same rollout returns to the last bit).
    ``PREFRL_JAX_DEFAULTS=1`` leaves JAX's own defaults; an ``XLA_FLAGS`` that
    already sets the device count or the scheduler is kept. After a
    backend has started (a test calling :func:`main` in-process) this changes nothing.
    """
    if environ.get("PREFRL_JAX_DEFAULTS") == "1":
        return
    flags = environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        count = max(1, os.cpu_count() or 1)
        flags = environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={count}".strip())
    if mjx and "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        environ["XLA_FLAGS"] = f"{flags} {MJX_CPU_FLAG}".strip()
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)


def jax_settings() -> dict[str, object]:
    """What :func:`configure_jax` chose, as a benchmark records it."""
    import jax

    return {"cpu_async_dispatch": bool(jax.config.read("jax_cpu_enable_async_dispatch")),
            "cpu_devices": len(jax.devices("cpu")),
            "mjx_cpu_flag": MJX_CPU_FLAG in os.environ.get("XLA_FLAGS", "")}


__all__ = ["MJX_CPU_FLAG", "configure_jax", "jax_settings"]
