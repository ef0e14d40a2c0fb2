"""Shared test settings: rank promotion raises, so silent broadcasting bugs fail."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def rng():
    import numpy as np

    return np.random.default_rng(0)
