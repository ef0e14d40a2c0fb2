"""The LAPACK-free orthogonal initializer used by every network."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefrl import networks


@pytest.mark.parametrize("shape", [(17, 64), (64, 64), (64, 6), (6, 64), (3, 4, 5)])
def test_orthogonal_matches_flax_and_is_orthogonal(shape):
    key = jax.random.key(3)
    ours = np.asarray(networks.orthogonal(1.5)(key, shape))
    theirs = np.asarray(nn.initializers.orthogonal(1.5)(key, shape))
    # Same Gaussian draw, same positive-diagonal-R factor: equal up to float rounding.
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    m = ours.reshape(-1, shape[-1]) / 1.5
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, np.eye(gram.shape[0]), atol=1e-5)


def test_orthogonal_rejects_vectors():
    with pytest.raises(ValueError, match="rank >= 2"):
        networks.orthogonal()(jax.random.key(0), (5,))


def test_vmapped_init_has_no_lapack_call():
    # flax's orthogonal init lowers to a LAPACK QR; vmapped over seeds it can deadlock
    # XLA:CPU's thread pool (see prefrl.networks.orthogonal). Ours is matmuls only.
    policy = networks.GaussianPolicy(action_dim=6, hidden=(32, 32), state_dependent_std=True)
    mlp = networks.MLP(hidden=(32, 32), out=1)
    keys = jax.random.split(jax.random.key(0), 3)
    for module in (policy, mlp):
        text = jax.jit(jax.vmap(lambda k, m=module: m.init(k, jnp.zeros(17)))).lower(keys).as_text()
        assert "lapack" not in text and "custom_call" not in text
    flax_dense = nn.Dense(8, kernel_init=nn.initializers.orthogonal())
    text = jax.jit(jax.vmap(lambda k: flax_dense.init(k, jnp.zeros(5)))).lower(keys).as_text()
    assert "lapack" in text  # the check above can see the call it rules out
