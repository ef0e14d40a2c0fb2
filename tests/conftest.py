"""Shared test settings: rank promotion raises, so silent broadcasting bugs fail.

Two host devices, as the ``prefrl`` command sets up on a 2-core machine
(``prefrl.cli.configure_jax``), so the tests run the seed-sharded update of
:mod:`prefrl.loops.ppo_seeds`; everything else runs on the first device.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

import jax  # noqa: E402
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


def _memory_maps() -> int | None:
    """This process's memory maps (Linux), or None where /proc cannot say."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


# Each XLA:CPU executable keeps ~3 memory maps; a session that compiled for ~600 tests
# exceeded Linux's default vm.max_map_count (65530) and died of a segmentation fault
# (measured: maps grew to the limit at tests/test_rollout.py). Compiled programs are
# dropped after a module once the maps pass a third of the limit — not after every
# module, which would recompile what later modules share.
MAP_BUDGET = 20_000


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop every compiled program after a test module once memory maps run high."""
    yield
    maps = _memory_maps()
    if maps is None or maps > MAP_BUDGET:
        import gc

        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def rng():
    import numpy as np

    return np.random.default_rng(0)
