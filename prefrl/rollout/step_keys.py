"""The rollout's step keys, and the policy noise drawn from them a block of steps at a time.

``key_t`` depends on the rollout key and t only (a longer rollout starts with
the same actions); :func:`noise_block` draws what a stochastic
:class:`prefrl.policies.Actor` would draw with each ``key_t``, for many steps
in one call.
"""

from __future__ import annotations

import functools

import jax

from prefrl.networks import tanh_gaussian_noise

KEY_BLOCK = 256


def _keys(key: jax.Array, block: int) -> jax.Array:
    return jax.random.split(jax.random.fold_in(key, block), KEY_BLOCK)


@jax.jit
def key_block(key: jax.Array, block: int) -> tuple[jax.Array, ...]:
    # Step keys come in fixed-size blocks, key_t = split(fold_in(key, t // 256), 256)[t % 256],
    # so one compiled function serves every num_steps (splitting into T keys directly
    # recompiles for each new T, which costs seconds on a loaded CPU). A tuple of 256
    # outputs costs one dispatch; slicing a [256] key array costs one dispatch per key.
    # A stacked key [S] (several seeds in one env) gives [S] keys per step, key_t[s] being
    # exactly seed s's own single-key stream.
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (0 if typed else 1):  # one key (typed, or raw uint32 [2])
        return tuple(_keys(key, block))
    return tuple(jax.vmap(_keys, in_axes=(0, None))(key, block).swapaxes(0, 1))


@functools.partial(jax.jit, static_argnums=(2, 3))
def noise_block(key: jax.Array, block: int, steps: int, shape: tuple[int, int]) -> jax.Array:
    # The policy's normal draws for the first ``steps`` keys of key_block(key, block),
    # [steps, B, act] in one call: noise_t = tanh_gaussian_noise(key_t, shape), with
    # shape = (B, act), or per seed (B // S, act) for a stacked [S] key (as the stacked
    # actor draws them), so acting with noise_t equals acting with key_t.
    def draw(k: jax.Array) -> jax.Array:
        keys = _keys(k, block)[:steps]
        return jax.vmap(lambda kt: tanh_gaussian_noise(kt, shape))(keys)

    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (0 if typed else 1):
        return draw(key)
    noise = jax.vmap(draw)(key)  # [S, steps, B // S, act]
    return noise.swapaxes(0, 1).reshape(steps, -1, shape[-1])


__all__ = ["KEY_BLOCK", "key_block", "noise_block"]
