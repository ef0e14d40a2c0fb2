"""Â used as a policy: advantage-weighted regression on the data's own actions.

Knox et al. (2023, "Learning optimal advantage from preferences and mistaking
it for reward") show that a function fitted to *regret* preferences by the
partial-return loss form is an approximation Â ≈ A* + c of the optimal
advantage, not a reward. Its right use is greedy, ``π(s) = argmax_a Â(s, a)``;
using it as a reward for RL is the "mistake" of their title (DESIGN.md §4).

With continuous actions the argmax must be learned. This module uses
**advantage-weighted regression** (AWR; Peng et al. 2019, "Advantage-weighted
regression"; Nair et al. 2020, AWAC) on the segments' own state–action pairs:

    ω_i  = exp((Â_i − max_j Â_j) / β)                     j over the batch's steps
    ω̃_i  = min(ω_i / mean_j ω_j, ω_max)
    L(θ) = − Σ_i m_i ω̃_i log π_θ(a_i | s_i) / Σ_i m_i

Without the clip this is the cross-entropy from the batch's target
distribution ``∝ μ(a|s) exp(Â(s, a)/β)`` (μ the data's action distribution):
the KL-regularised greedy policy, tending to ``argmax_a Â`` over the data's
actions as β → 0. The clip ω_max (AWR's 20) caps any one step's weight at
ω_max times the mean weight, bounding the variance when β is small. The policy
is the project's tanh-squashed Gaussian (``prefrl.networks.GaussianPolicy``);
its greedy action is ``tanh(mean)``.

Â is known only up to a constant (Knox et al. 2023: A* + c; the BT loss sees
score differences only). Dividing by the mean weight makes ω̃ — clip included —
exactly invariant to Â + c; subtracting the max first only keeps exp finite
(A* itself has max_a A* = 0, so the best step in the batch plays that role).
If Â is ``reward_model.reward_fn`` of a normalised regret model it is
standardised, so β is in units of Â's standard deviation.

Why AWR and not an actor maximising Â(s, π(s)) (+ BC): Â is fitted on the
labelled segments only and is unconstrained elsewhere, and an actor
follows ∇_a Â wherever it points, off the data, where Â extrapolates (the
over-optimisation the regret/partial-return comparison must not confound).
AWR never evaluates Â off the data's actions, needs no gradient of Â (so Â
may be an ensemble, a table or any black box), and β is the single knob
between BC (β → ∞) and greedy-on-data (β → 0). The price: it cannot pick an
action better than the data's own.

Public API: ``AdvantagePolicyConfig``, ``AdvantageBatch``,
``AdvantagePolicyState``, ``awr_weights(advantage, mask, *, beta, max_weight)``,
``make(config, network, optimizer=None, *, a_hat=None) -> Learner``,
``default_network(action_dim, hidden)``, ``default_optimizer(config)``,
``greedy_action(network, params, obs)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl.config import field
from prefrl.learners import Learner, check_make
from prefrl.networks import GaussianPolicy, tanh_gaussian_log_prob, tanh_gaussian_mode

Array = jax.Array
PRNGKey = jax.Array
Params = Any
AdvantageFn = Callable[[Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class AdvantagePolicyConfig:
    """Options of the Â-greedy policy (AWR on the data's actions)."""

    beta: float = field(1.0, "temperature β of the weights exp(Â/β); → 0 is greedy")
    max_weight: float = field(20.0, "clip ω_max of the weights relative to their mean (AWR: 20)")
    entropy_weight: float = field(0.0, "bonus on the mean log-std (keeps σ from collapsing)")
    learning_rate: float = field(3e-4, "Adam step size of default_optimizer")

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not self.max_weight > 0:
            raise ValueError(f"max_weight must be > 0, got {self.max_weight}")
        if not self.entropy_weight >= 0:
            raise ValueError(f"entropy_weight must be >= 0, got {self.entropy_weight}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


class AdvantageBatch(NamedTuple):
    """State–action pairs with any leading shape ``[...]`` (segments: ``[B, k]``).

    ``advantage`` optionally carries precomputed Â(s, a) ``[...]``; otherwise
    the learner calls its ``a_hat``.
    """

    obs: Array  # [..., obs]
    action: Array  # [..., act]
    mask: Array  # [...] 1 = a step inside the episode
    advantage: Array | None = None  # [...]


@struct.dataclass
class AdvantagePolicyState:
    params: Params
    opt_state: optax.OptState
    step: Array  # int32 scalar


def default_network(action_dim: int, hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    """A tanh-Gaussian policy with a state-dependent std (as BC and CPL use)."""
    return GaussianPolicy(action_dim, hidden, nn.relu, state_dependent_std=True)


def default_optimizer(config: AdvantagePolicyConfig) -> optax.GradientTransformation:
    """Adam with ``config.learning_rate``."""
    return optax.adam(config.learning_rate)


def greedy_action(network: nn.Module, params: Params, obs: Array) -> Array:
    """``[..., act]``: the policy's mode ``tanh(mean(s))``, its greedy action."""
    mean, _ = network.apply(params, obs)
    return tanh_gaussian_mode(mean)


def awr_weights(
    advantage: Array, mask: Array, *, beta: float | Array, max_weight: float | Array
) -> Array:
    """Normalised AWR weights ``min(ω / mean ω, ω_max)``, ``ω = exp((Â − max Â)/β)``.

    Any shape; the max and the mean run over the steps with ``mask`` > 0, and
    masked steps get weight 0. Invariant to Â + c (Knox et al. 2023: Â is
    A* + c). The weights carry no gradient.
    """
    if advantage.shape != mask.shape:
        raise ValueError(f"advantage {advantage.shape} and mask {mask.shape} differ")
    advantage = jax.lax.stop_gradient(advantage)
    m = mask.astype(advantage.dtype)
    top = jnp.max(jnp.where(m > 0, advantage, -jnp.inf))
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # every step masked: all weights 0
    # ∈ [0, 1], 1 at the best step; masked steps may hold anything (even NaN).
    w = jnp.where(m > 0, jnp.exp((advantage - top) / beta), 0.0)
    mean = jnp.sum(w) / jnp.maximum(jnp.sum(m), 1.0)
    return jnp.minimum(w / jnp.maximum(mean, jnp.finfo(w.dtype).tiny), max_weight)


def make(
    config: AdvantagePolicyConfig,
    network: nn.Module,
    optimizer: optax.GradientTransformation | None = None,
    *,
    a_hat: AdvantageFn | None = None,
) -> Learner:
    """The Â-greedy policy learner (AWR; Knox et al. 2023's use of Â).

    Args:
      config: :class:`AdvantagePolicyConfig`.
      network: a ``prefrl.networks.GaussianPolicy`` (``obs -> (mean, log_std)``).
      optimizer: any optax transform; default :func:`default_optimizer`.
      a_hat: ``a_hat(obs [..., obs], action [..., act]) -> [...]``, e.g.
        ``reward_model.reward_fn(state)`` of a regret-assumption model; may be
        omitted when every batch carries ``advantage``.

    Returns:
      ``Learner(init, update)``: ``init(key, example_batch) -> state``;
      ``update(state, batch) -> (state, metrics)`` with scalar metrics
      ``loss``, ``nll`` (unweighted mean −log π), ``weight_mean``,
      ``weight_max``, ``clipped_fraction``, ``advantage_mean``, ``log_std``,
      ``grad_norm``.
    """
    check_make("advantage_policy.make", config, AdvantagePolicyConfig,
               network=network, optimizer=optimizer)
    optimizer = default_optimizer(config) if optimizer is None else optimizer

    def advantages(batch: AdvantageBatch) -> Array:
        if batch.obs.shape[:-1] != batch.mask.shape or batch.action.shape[:-1] != batch.mask.shape:
            raise ValueError(f"obs {batch.obs.shape}, action {batch.action.shape} and mask "
                             f"{batch.mask.shape} must share their leading shape")
        if batch.advantage is not None:
            adv = batch.advantage
        elif a_hat is None:
            raise ValueError("no advantage: pass a_hat to make() or put advantage in the batch")
        else:
            adv = a_hat(batch.obs, batch.action)
        if adv.shape != batch.mask.shape:
            raise ValueError(f"Â must have the batch's leading shape {batch.mask.shape}, "
                             f"got {adv.shape}")
        return adv

    def loss_fn(params: Params, batch: AdvantageBatch, adv: Array) -> tuple[Array, dict]:
        weights = awr_weights(adv, batch.mask, beta=config.beta, max_weight=config.max_weight)
        mean, log_std = network.apply(params, batch.obs)
        logp = tanh_gaussian_log_prob(mean, log_std, batch.action)
        m = batch.mask.astype(logp.dtype)
        count = jnp.maximum(jnp.sum(m), 1.0)
        logp = jnp.where(m > 0, logp, 0.0)
        weighted = -jnp.sum(weights * logp) / count
        m_act = m[..., None]
        mean_log_std = jnp.sum(log_std * m_act) / (count * log_std.shape[-1])
        loss = weighted - config.entropy_weight * mean_log_std
        clipped = (weights >= config.max_weight * (1 - 1e-6)).astype(logp.dtype)
        metrics = {
            "loss": loss,
            "nll": -jnp.sum(logp) / count,
            "weight_mean": jnp.sum(weights) / count,
            "weight_max": jnp.max(weights),
            "clipped_fraction": jnp.sum(m * clipped) / count,
            "advantage_mean": jnp.sum(m * jnp.where(m > 0, adv, 0.0)) / count,
            "log_std": mean_log_std,
        }
        return loss, metrics

    def init(key: PRNGKey, example_batch: AdvantageBatch) -> AdvantagePolicyState:
        if example_batch.obs.ndim < 1:
            raise ValueError(f"obs must be [..., obs], got {example_batch.obs.shape}")
        obs = example_batch.obs.reshape(-1, example_batch.obs.shape[-1])[0]
        params = network.init(key, obs)
        mean, _ = jax.eval_shape(network.apply, params, obs)
        if mean.shape[-1:] != example_batch.action.shape[-1:]:
            raise ValueError(f"action size mismatch: the policy outputs {mean.shape[-1]} "
                             f"actions, the batch has {example_batch.action.shape[-1]}")
        return AdvantagePolicyState(params=params, opt_state=optimizer.init(params),
                                    step=jnp.zeros((), jnp.int32))

    def update(state: AdvantagePolicyState,
               batch: AdvantageBatch) -> tuple[AdvantagePolicyState, dict]:
        adv = advantages(batch)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, adv)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return Learner(init=init, update=update)


__all__ = [
    "AdvantageBatch",
    "AdvantagePolicyConfig",
    "AdvantagePolicyState",
    "awr_weights",
    "default_network",
    "default_optimizer",
    "greedy_action",
    "make",
]
