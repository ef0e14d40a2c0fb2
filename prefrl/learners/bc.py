"""Behaviour cloning of the tanh-Gaussian policy: the reference policy π_ref ("SFT").

Maximum likelihood of the dataset's state–action pairs under the
tanh-squashed Gaussian policy (``prefrl.networks``):

    L(θ) = − Σ_{i,t} m_{i,t} log π_θ(a_{i,t} | s_{i,t}) / Σ_{i,t} m_{i,t}

over every step of every segment, with the segment mask ``m`` excluding
steps after an episode ended. ``log π`` is the exact density on the action
box (``tanh_gaussian_log_prob``, Jacobian of tanh included, actions at ±1
pulled in by ``ACTION_EPS``). The result is the π_ref of contrastive DPO
(``prefrl.learners.cpl.make_dpo``), of best-of-n and of the KL penalty in
RLHF-PPO, and CPL's BC pre-training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl import config as config_lib
from prefrl.learners import Learner, check_make
from prefrl.networks import GaussianPolicy, tanh_gaussian_log_prob

Array = jax.Array
Params = Any


@dataclasses.dataclass(frozen=True)
class BCConfig:
    """Settings of behaviour cloning."""

    entropy_weight: float = config_lib.field(
        0.0, "weight of a bonus on the pre-tanh Gaussian's log-std (keeps π_ref from collapsing)"
    )

    def __post_init__(self) -> None:
        if not self.entropy_weight >= 0.0:
            raise ValueError(f"entropy_weight must be >= 0, got {self.entropy_weight}")


class Batch(NamedTuple):
    """State–action pairs with any leading shape ``[...]`` (e.g. segments ``[B, k]``)."""

    obs: Array  # [..., obs]
    action: Array  # [..., act]
    mask: Array  # [...] 1 = a step inside the episode


@struct.dataclass
class BCState:
    params: Params
    opt_state: optax.OptState
    step: Array


def nll_loss(logp_t: Array, mask_t: Array) -> Array:
    """Masked negative log-likelihood of one sequence: ``−Σ m_t log π_t / Σ m_t``.

    Args:
      logp_t: ``[k]`` per-step log π(a_t|s_t).
      mask_t: ``[k]``; masked steps are excluded (even if their log π is −inf).
    """
    chex.assert_rank(logp_t, 1)
    chex.assert_equal_shape([logp_t, mask_t])
    m = mask_t.astype(logp_t.dtype)
    return -jnp.sum(jnp.where(m > 0, logp_t, 0.0)) / jnp.maximum(jnp.sum(m), 1.0)


def default_network(action_dim: int, hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    """A tanh-squashed Gaussian policy with a state-dependent standard deviation."""
    return GaussianPolicy(action_dim=int(action_dim), hidden=tuple(hidden),
                          state_dependent_std=True)


def default_optimizer(learning_rate: float = 3e-4) -> optax.GradientTransformation:
    """Adam; the learning rate is injected (an array in the optimiser state, so
    ``jax.vmap`` over states with different learning rates works)."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def make(config: BCConfig, network: nn.Module,
         optimizer: optax.GradientTransformation | None = None) -> Learner[BCState, Batch]:
    """Behaviour-cloning learner.

    Args:
      config: :class:`BCConfig`.
      network: a ``prefrl.networks.GaussianPolicy`` (e.g. :func:`default_network`).
      optimizer: any optax transform; default :func:`default_optimizer`.

    Returns:
      ``Learner(init, update)``: ``init(key, example_batch) -> BCState``;
      ``update(state, batch) -> (state, metrics)`` with metrics ``loss``,
      ``nll`` (mean −log π over unmasked steps), ``log_std`` (mean), ``grad_norm``.
    """
    check_make("bc.make", config, BCConfig, network=network, optimizer=optimizer)

    optimizer = default_optimizer() if optimizer is None else optimizer

    def loss_fn(params: Params, batch: Batch) -> tuple[Array, dict[str, Array]]:
        mean, log_std = network.apply(params, batch.obs)
        logp = tanh_gaussian_log_prob(mean, log_std, batch.action)
        chex.assert_equal_shape([logp, batch.mask])
        nll = nll_loss(logp.reshape(-1), batch.mask.reshape(-1))
        m = batch.mask.astype(log_std.dtype)[..., None]
        mean_log_std = jnp.sum(log_std * m) / jnp.maximum(jnp.sum(m) * log_std.shape[-1], 1.0)
        loss = nll - config.entropy_weight * mean_log_std
        return loss, {"loss": loss, "nll": nll, "log_std": mean_log_std}

    def init(key: Array, example_batch: Batch) -> BCState:
        obs = example_batch.obs.reshape(-1, example_batch.obs.shape[-1])[0]
        params = network.init(key, obs)
        return BCState(params=params, opt_state=optimizer.init(params),
                       step=jnp.zeros((), jnp.int32))

    def update(state: BCState, batch: Batch) -> tuple[BCState, dict[str, Array]]:
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return Learner(init=init, update=update)
