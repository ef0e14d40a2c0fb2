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


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop every compiled program after each test module.

    Each XLA:CPU executable keeps ~3 memory maps; a session that compiles for
    ~600 tests exceeded Linux's default ``vm.max_map_count`` (65530) and died of
    a segmentation fault (measured: maps grew to the limit at tests/test_rollout.py).
    """
    yield
    import gc

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def rng():
    import numpy as np

    return np.random.default_rng(0)
