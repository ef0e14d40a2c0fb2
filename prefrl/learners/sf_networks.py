"""φ and ψ of the regret-model reward learner as pure functions of their parameters.

The learner of :mod:`prefrl.learners.regret_sf` scores segments with a reward
r̂ = w·φ(s, a) and successor features ψ^π(s) of a library Π
(Knox et al. 2022; Barreto et al. 2017). This module says what φ and ψ are:

* **φ: two kinds.** (i) Frozen: any ``phi(obs, action) -> [..., d]`` (e.g.
  :func:`reward_model_features`, the last hidden layer of a partial-return
  reward model); only w is learned. (ii) Learned: a flax module on
  ``concat(obs, action)`` (default :func:`default_phi_network`), trained with w.
* **ψ: two sources.** (a) A network ψ_θ(s) (default
  :func:`default_psi_network`): one module, its parameters stacked ``[Π, …]``
  and vmapped over policies, so ψ_θ(s) is ``[Π, d]``; fitted by regression
  (:mod:`prefrl.learners.successor_features`). (b) Precomputed ψ values
  carried by the batch (tabular: ``prefrl.tabular.successor_features``).

:func:`make_model` turns either kind into an :class:`SFModel` of pure
functions; :func:`check_widths` checks φ against ψ while tracing (so shape
errors raise before any fitting).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prefrl.learners import reward_model as rm
from prefrl.networks import MLP

Array = jax.Array
PRNGKey = jax.Array
Params = Any
PhiFn = Callable[[Array, Array], Array]


def default_phi_network(feature_dim: int, hidden: tuple[int, ...] = (64, 64)) -> nn.Module:
    """A learned φ: ``[..., obs + act] -> [..., d]``."""
    return MLP(hidden, feature_dim, nn.relu)


def default_psi_network(feature_dim: int, hidden: tuple[int, ...] = (64, 64)) -> nn.Module:
    """One ψ head: ``[..., obs] -> [..., d]`` (parameters stacked over Π by the learner)."""
    return MLP(hidden, feature_dim, nn.relu)


class SFModel(NamedTuple):
    """φ and ψ as pure functions of their parameters, and how to initialise them."""

    phi: Callable[[Params, Array, Array], Array]  # (θ_φ, obs, act) -> [..., d]
    phi_init: Callable[[PRNGKey, Array, Array], Params]
    psi: Callable[[Params, Array], Array]  # (θ_ψ, psi_in) -> [..., Π, d]
    psi_init: Callable[[PRNGKey, Array], Params]
    psi_network: nn.Module | None


def make_model(phi: PhiFn | nn.Module, psi_network: nn.Module | None = None, *,
               num_policies: int = 0) -> SFModel:
    """The :class:`SFModel` of a φ (function or flax module) and a ψ source.

    ``psi_network`` ``None``: ψ values come with the batch (``num_policies``
    must be 0); otherwise one head per library policy (``num_policies >= 1``).
    Raises ``TypeError`` for a φ that is neither, ``ValueError`` for a
    ``num_policies`` that does not fit the ψ source.
    """
    if isinstance(phi, nn.Module):
        module = phi

        def phi_fn(params: Params, obs: Array, action: Array) -> Array:
            return module.apply(params, jnp.concatenate([obs, action.astype(obs.dtype)], -1))

        def phi_init(key: PRNGKey, obs: Array, action: Array) -> Params:
            return module.init(key, jnp.concatenate([obs, action.astype(obs.dtype)], -1))

    elif callable(phi):
        frozen = phi

        def phi_fn(params: Params, obs: Array, action: Array) -> Array:
            del params
            return frozen(obs, action)

        def phi_init(key: PRNGKey, obs: Array, action: Array) -> Params:
            del key, obs, action
            return {}

    else:
        raise TypeError(f"phi must be a function phi(obs, action) or a flax module, got {phi!r}")

    if psi_network is None:
        if int(num_policies) != 0:
            raise ValueError(
                f"num_policies={num_policies} is for a ψ network; without psi_network "
                "the ψ values come with the batch (set num_policies=0)"
            )

        def psi_fn(params: Params, psi_in: Array) -> Array:
            del params
            return psi_in

        def psi_init(key: PRNGKey, psi_in: Array) -> Params:
            del key, psi_in
            return {}

    else:
        num_policies = int(num_policies)
        if num_policies < 1:
            raise ValueError(
                "a ψ network needs config.num_policies >= 1 (one head per library policy)"
            )
        net = psi_network

        def psi_fn(params: Params, psi_in: Array) -> Array:
            out = jax.vmap(lambda p: net.apply(p, psi_in))(params)  # [Π, ..., d]
            return jnp.moveaxis(out, 0, -2)

        def psi_init(key: PRNGKey, psi_in: Array) -> Params:
            keys = jax.random.split(key, num_policies)
            return jax.vmap(lambda k: net.init(k, psi_in))(keys)

    return SFModel(phi_fn, phi_init, psi_fn, psi_init, psi_network)


def shape_of(fn: Callable[..., Array], *args: Any, what: str) -> tuple[int, ...]:
    """The output shape of ``fn(*args)`` (traced, not run); ``ValueError`` naming ``what``."""
    try:
        out = jax.eval_shape(fn, *args)
    except Exception as err:  # flax raises its own error types for shape mismatches
        raise ValueError(f"{what}: {err}") from err
    if not hasattr(out, "shape"):
        raise ValueError(f"{what}: expected one array, got {out}")
    return tuple(out.shape)


def check_widths(model: SFModel, state_like: tuple[Params, Params], obs: Array, action: Array,
                 psi_in: Array) -> int:
    """The feature width d; ``ValueError`` naming the mismatch of φ, ψ and the inputs."""
    phi_params, psi_params = state_like
    phi_shape = shape_of(model.phi, phi_params, obs, action,
                         what="φ(obs, action) failed on the batch's observations and actions")
    if phi_shape[:-1] != obs.shape[:-1]:
        raise ValueError(f"φ(obs, action) must return [..., d] for obs {obs.shape}, "
                         f"got {phi_shape}")
    width = phi_shape[-1]
    if model.psi_network is None:
        if psi_in.ndim != 4:
            raise ValueError(
                f"without a ψ network psi_in must hold ψ values [B, 2, Π, d], got {psi_in.shape} "
                "(states [B, 2, obs] need psi_network=…)"
            )
        if psi_in.shape[-1] != width:
            raise ValueError(
                f"feature width mismatch: φ(obs, action) has width {width} but the batch's ψ "
                f"values have width {psi_in.shape[-1]}"
            )
        return width
    if psi_in.ndim != 3:
        raise ValueError(f"with a ψ network psi_in must hold the states s_0, s_k [B, 2, obs], "
                         f"got {psi_in.shape}")
    if psi_in.shape[-1] != obs.shape[-1]:
        raise ValueError(
            f"library observation size mismatch: psi_in has observations of size "
            f"{psi_in.shape[-1]} but the segments' observations have size {obs.shape[-1]}"
        )
    psi_shape = shape_of(model.psi, psi_params, psi_in,
                         what=f"the library's ψ network rejects observations of size "
                              f"{psi_in.shape[-1]}")
    if psi_shape[-1] != width:
        raise ValueError(f"feature width mismatch: φ(obs, action) has width {width} but the "
                         f"ψ network outputs width {psi_shape[-1]}")
    return width


def reward_model_features(model: rm.RewardModel, state: rm.RewardModelState) -> PhiFn:
    """φ(s, a) = the last hidden layer of a fitted reward model (all members, concatenated).

    ``model`` says what ``state``'s arrays mean (:func:`prefrl.learners.reward_model.model`).
    ``[..., obs], [..., act] -> [..., M·h]``: with these features w can
    represent the ensemble-mean output exactly (the output layers are linear,
    their biases only shift r̂, which the regret is invariant to when γ < 1).
    Needs the reward model's default MLP network.
    """
    network = model.network
    if not isinstance(network, MLP) or not network.hidden:
        raise ValueError("reward_model_features needs a reward model with the default MLP network "
                         f"(at least one hidden layer), got {network!r}")
    hidden = tuple(network.hidden)
    trunk = MLP(hidden[:-1], hidden[-1], network.activation, network.kernel_scale,
                network.kernel_scale)
    last = f"Dense_{len(hidden)}"
    params = state.params["params"]
    trunk_params = {"params": {k: v for k, v in params.items() if k != last}}
    use_action = bool(model.config.use_action)

    def phi(obs: Array, action: Array) -> Array:
        x = jnp.concatenate([obs, action.astype(obs.dtype)], -1) if use_action else obs
        h = jax.vmap(lambda p: network.activation(trunk.apply(p, x)))(trunk_params)  # [M, ..., h]
        return jnp.moveaxis(h, 0, -2).reshape(*x.shape[:-1], -1)

    return phi


# --------------------------------------------------------------------------- #
# The fitted reward r̂ = w·φ as hashable values (parameters travel as arrays)
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class LearnedPhi:
    """φ_θ(s, a) of a flax module on concat(s, a), as ``phi_from(θ) -> φ``."""

    module: nn.Module

    def __call__(self, params: Params) -> PhiFn:
        return lambda obs, action: self.module.apply(
            params, jnp.concatenate([obs, action.astype(obs.dtype)], -1))


@dataclasses.dataclass(frozen=True)
class FrozenPhi:
    """φ(s, a) = a reward model's last hidden layer, as ``phi_from(state) -> φ``."""

    model: rm.RewardModel

    def __call__(self, params: rm.RewardModelState) -> PhiFn:
        return reward_model_features(self.model, params)


@dataclasses.dataclass(frozen=True)
class SFValue:
    """The standardised regret-model reward ``(w·φ(s, a) − mean) / std``.

    ``value(params, obs, action, next_obs)`` with ``params = {"phi", "w",
    "mean", "std"}``; frozen dataclasses, so jitted code taking them as static
    arguments compiles once per kind of φ, not once per fit.
    """

    phi_from: Callable[[Params], PhiFn]

    def __call__(self, params: Params, obs: Array, action: Array, next_obs: Array) -> Array:
        del next_obs
        phi = self.phi_from(params["phi"])
        return (phi(obs, action) @ params["w"] - params["mean"]) / params["std"]


@dataclasses.dataclass(frozen=True)
class SFReward:
    """PPO's ``reward_fn`` for r̂ = w·φ; its parameters travel in ``state.reward_params``."""

    value: SFValue

    def __call__(self, obs: Array, action: Array, next_obs: Array, extras: Any) -> Array:
        return self.value(extras["reward_params"], obs, action, next_obs)


__all__ = [
    "FrozenPhi",
    "LearnedPhi",
    "SFReward",
    "SFValue",
    "PhiFn",
    "SFModel",
    "check_widths",
    "default_phi_network",
    "default_psi_network",
    "make_model",
    "reward_model_features",
    "shape_of",
]
