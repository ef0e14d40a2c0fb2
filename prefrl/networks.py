"""Flax modules and the one action distribution every policy uses.

Every policy in prefrl is a **tanh-squashed diagonal Gaussian** over the
``[-1, 1]^act`` action box (half-cheetah's bounds): ``u ~ N(μ(s), σ(s))``,
``a = tanh(u)``. Its density on the box is exact,

    log π(a|s) = log N(atanh a; μ, σ) − Σ_i log(1 − a_i²),

so PPO's ratios, BC's likelihood, CPL's ``α log π`` and the KL to a reference
policy all use one consistent density on the *environment's* action space.
Actions at exactly ±1 (clipped data) are pulled inside by ``ACTION_EPS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

ACTION_EPS = 1e-6
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
_LOG_2PI = math.log(2.0 * math.pi)


def _gram_schmidt(a: Array) -> Array:
    """Orthonormalise the columns of ``a [m, n]`` (m ≥ n) by Gram–Schmidt, applied twice.

    The result is the ``Q`` of ``a = QR`` with ``diag(R) > 0`` (unique), i.e.
    exactly what a LAPACK QR followed by the sign fix gives, but built from
    matrix–vector products only. Re-orthogonalising each column once more
    ("twice is enough") keeps ``QᵀQ = I`` to float precision.
    """
    n = a.shape[1]

    def column(j: Array, q: Array) -> Array:
        v = jax.lax.dynamic_index_in_dim(a, j, axis=1, keepdims=False)
        for _ in range(2):  # columns ≥ j of q are still zero, so they project out nothing
            v = v - q @ (q.T @ v)
        v = v / jnp.sqrt(jnp.sum(v * v))
        return jax.lax.dynamic_update_index_in_dim(q, v, j, axis=1)

    return jax.lax.fori_loop(0, n, column, jnp.zeros_like(a))


def orthogonal(scale: float = 1.0) -> Callable[..., Array]:
    """Orthogonal initializer for ``[in, out]`` kernels, free of LAPACK calls.

    Same distribution as ``flax.linen.initializers.orthogonal(scale)`` (and,
    for the same key, the same matrix up to float rounding): a Gaussian matrix
    made orthogonal with a positive-diagonal R. Why not flax's: its QR is a
    LAPACK custom call, and under ``vmap`` (seeds, ensemble members) XLA:CPU
    runs the batched QR through a parallel batch map on the intra-op thread
    pool. Two such kernels running at once on a 2-thread pool each wait for
    pool threads that are busy waiting themselves, and the process hangs at
    0 % CPU (seen in sweeps that vmap reward models over seeds).
    """

    def init(key: Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> Array:
        if len(shape) < 2:
            raise ValueError(f"orthogonal init needs a kernel of rank >= 2, got shape {shape}")
        n_cols = shape[-1]
        n_rows = math.prod(shape) // n_cols
        tall = n_rows >= n_cols
        matrix_shape = (n_rows, n_cols) if tall else (n_cols, n_rows)
        a = jax.random.normal(key, matrix_shape, jnp.float32)
        q = _gram_schmidt(a)
        if not tall:
            q = q.T
        return (scale * q).reshape(shape).astype(dtype)

    return init


class MLP(nn.Module):
    """``[..., in] -> [..., out]``: dense layers with ``activation`` between them."""

    hidden: Sequence[int]
    out: int
    activation: Callable[[Array], Array] = nn.tanh
    kernel_scale: float = math.sqrt(2.0)
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for width in self.hidden:
            x = nn.Dense(width, kernel_init=orthogonal(self.kernel_scale))(x)
            x = self.activation(x)
        return nn.Dense(self.out, kernel_init=orthogonal(self.out_scale))(x)


class GaussianPolicy(nn.Module):
    """``obs [..., obs] -> (mean [..., act], log_std [..., act])`` of the pre-tanh Gaussian.

    ``state_dependent_std=False`` learns one log-std vector (PPO's usual
    choice); ``True`` predicts it from the state (CPL/BC's usual choice).
    """

    action_dim: int
    hidden: Sequence[int] = (256, 256)
    activation: Callable[[Array], Array] = nn.tanh
    state_dependent_std: bool = False
    init_log_std: float = -0.5

    @nn.compact
    def __call__(self, obs: Array) -> tuple[Array, Array]:
        x = obs
        for width in self.hidden:
            x = nn.Dense(width, kernel_init=orthogonal(math.sqrt(2.0)))(x)
            x = self.activation(x)
        mean = nn.Dense(self.action_dim, kernel_init=orthogonal(0.01))(x)
        if self.state_dependent_std:
            log_std = nn.Dense(
                self.action_dim,
                kernel_init=orthogonal(0.01),
                bias_init=nn.initializers.constant(self.init_log_std),
            )(x)
        else:
            log_std = self.param(
                "log_std", nn.initializers.constant(self.init_log_std), (self.action_dim,)
            )
            log_std = jnp.broadcast_to(log_std, mean.shape)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


class NormalizedGaussianPolicy(nn.Module):
    """``GaussianPolicy`` on standardised observations ``(s − mean) / std``.

    The statistics are constants of the module (fixed from the training data,
    stored in the policy file's header), not parameters: no optimiser or
    weight decay can move them. Outputs as ``GaussianPolicy``: ``(mean,
    log_std)`` of the pre-tanh Gaussian.
    """

    action_dim: int
    hidden: tuple[int, ...]
    state_dependent_std: bool
    obs_mean: tuple[float, ...]
    obs_std: tuple[float, ...]

    @nn.compact
    def __call__(self, obs: Array) -> tuple[Array, Array]:
        shape = (1,) * (obs.ndim - 1) + (len(self.obs_mean),)
        mean = jnp.asarray(self.obs_mean, obs.dtype).reshape(shape)
        std = jnp.asarray(self.obs_std, obs.dtype).reshape(shape)
        return GaussianPolicy(self.action_dim, tuple(self.hidden),
                              state_dependent_std=self.state_dependent_std,
                              name="policy")((obs - mean) / std)


# Hidden activations a policy file may name (its header's "activation").
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"tanh": nn.tanh, "relu": nn.relu}


def activation_name(fn: Callable[[Array], Array]) -> str:
    """The :data:`ACTIVATIONS` name of ``fn`` (``ValueError`` for one a file cannot name)."""
    for name, known in ACTIVATIONS.items():
        if fn is known:
            return name
    raise ValueError(f"activation {fn!r} has no name in prefrl.networks.ACTIVATIONS")


def make_network(action_dim: int, hidden: Sequence[int], state_dependent_std: bool,
                 obs_mean: Sequence[float] = (), obs_std: Sequence[float] = (),
                 activation: str = "tanh") -> nn.Module:
    """A plain ``GaussianPolicy``, or a :class:`NormalizedGaussianPolicy` given statistics.

    ``activation`` (a key of :data:`ACTIVATIONS`) applies to the plain policy
    (SAC's actors are ReLU); the normalised one is tanh.
    """
    if len(obs_mean) != len(obs_std):
        raise ValueError("obs_mean and obs_std must have the same length")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if not obs_mean:
        return GaussianPolicy(action_dim=int(action_dim), hidden=tuple(int(h) for h in hidden),
                              state_dependent_std=bool(state_dependent_std),
                              activation=ACTIVATIONS[activation])
    if activation != "tanh":
        raise ValueError("a policy with observation statistics is tanh")
    return NormalizedGaussianPolicy(
        action_dim=int(action_dim), hidden=tuple(int(h) for h in hidden),
        state_dependent_std=bool(state_dependent_std),
        obs_mean=tuple(float(x) for x in obs_mean), obs_std=tuple(float(x) for x in obs_std))


class ValueNetwork(nn.Module):
    """``obs [..., obs] -> value [...]``."""

    hidden: Sequence[int] = (256, 256)
    activation: Callable[[Array], Array] = nn.tanh

    @nn.compact
    def __call__(self, obs: Array) -> Array:
        return MLP(self.hidden, 1, self.activation)(obs)[..., 0]


def _log_one_minus_tanh_sq(u: Array) -> Array:
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
    return 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))


def gaussian_log_prob(mean: Array, log_std: Array, x: Array) -> Array:
    """Diagonal Gaussian log-density, summed over the last axis: ``[..., d] -> [...]``."""
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * _LOG_2PI, axis=-1)


def gaussian_entropy(log_std: Array) -> Array:
    """Entropy of the pre-tanh Gaussian, summed over the last axis."""
    return jnp.sum(log_std + 0.5 * (_LOG_2PI + 1.0), axis=-1)


def tanh_gaussian_noise(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """The standard-normal draw behind :func:`tanh_gaussian_sample` for ``mean`` of ``shape``.

    Drawn apart from the network (e.g. a whole rollout's noise in one call,
    :meth:`prefrl.rollout.BatchedEnv.rollout`) and passed to
    :func:`tanh_gaussian_from_noise`, it gives the same action as sampling with ``key``.
    """
    return jax.random.normal(key, shape, dtype)


def tanh_gaussian_from_noise(mean: Array, log_std: Array, noise: Array) -> Array:
    """The pre-tanh sample ``u = mean + exp(log_std) · noise`` (``a = tanh(u)``)."""
    return mean + jnp.exp(log_std) * noise


def tanh_gaussian_sample(key: Array, mean: Array, log_std: Array) -> tuple[Array, Array]:
    """Sample ``a = tanh(u)``, ``u ~ N(mean, exp(log_std))``; returns ``(a, log π(a))``."""
    u = tanh_gaussian_from_noise(mean, log_std, tanh_gaussian_noise(key, mean.shape, mean.dtype))
    log_p = gaussian_log_prob(mean, log_std, u) - jnp.sum(_log_one_minus_tanh_sq(u), axis=-1)
    return jnp.tanh(u), log_p


def tanh_gaussian_log_prob(mean: Array, log_std: Array, action: Array) -> Array:
    """Exact log-density of an action in the box: ``[..., act] -> [...]``.

    ``log π(a) = log N(atanh a; mean, σ) − Σ log(1 − a²)``; actions are clipped
    to ``±(1 − ACTION_EPS)`` first so that clipped data at the bounds stays finite.
    """
    a = jnp.clip(action, -1.0 + ACTION_EPS, 1.0 - ACTION_EPS)
    u = jnp.arctanh(a)
    return gaussian_log_prob(mean, log_std, u) - jnp.sum(jnp.log1p(-(a**2)), axis=-1)


def tanh_gaussian_mode(mean: Array) -> Array:
    """The deterministic action used for evaluation: ``tanh(mean)``."""
    return jnp.tanh(mean)
