"""Soft Actor-Critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications").

``make(config, obs_dim, action_dim, …) -> Learner(init, update)``: two pure
functions over an explicit :class:`SACState`. ``update(state, batch)`` is one
SAC gradient step on a batch of transitions sampled from a replay buffer
(:func:`prefrl.data.buffers.make_ring_buffer`; the buffer is the caller's):

1. **critic** (twin Q, clipped double-Q; Fujimoto et al. 2018): with
   ``ã' ~ π(·|s')`` and the target critics ``Q̄_i``,

       y = r̂(s, a) + γ (1 − terminated) [min_i Q̄_i(s', ã') − α log π(ã'|s')]
       J_Q = Σ_i ½ E[(Q_i(s, a) − y)²]

   Only ``terminated`` stops bootstrapping: a time-limit truncation is not a
   terminal state, so the stored ``next_obs`` (the true last state) is
   bootstrapped (Pardo et al. 2018, "Time limits in reinforcement learning").
2. **actor**, with the critics just updated and ``ã = tanh(μ + σ ε)``
   (reparameterised): ``J_π = E[α log π(ã|s) − min_i Q_i(s, ã)]``.
3. **temperature** towards the target entropy H̄ (default −|A|; their Eq. 18):
   ``J(α) = E[−α (log π(ã|s) + H̄)]`` with ``α = exp(log α)`` learnt.
4. **target critics** by Polyak averaging: ``θ̄ ← τ θ + (1 − τ) θ̄``.

The reward is pluggable as PPO's is (:data:`prefrl.learners.ppo.RewardFn`):
``reward_fn(obs, action, next_obs, extras)`` is evaluated *inside* the update
on the sampled ``(s, a, s')``, with ``extras["reward"]`` (the stored true
reward), ``extras["terminated"]`` and ``extras["reward_params"]`` (=
``state.reward_params``). A learned reward's parameters therefore travel in
the state: replacing them (a refit) never recompiles, and every stored
transition is relabelled by the current r̂ for free (PEBBLE, Lee et al. 2021).

The state is a pytree of arrays: ``jax.vmap(update)`` trains several seeds
at once. Learners see arrays only: this module imports no environment.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl.config import field
from prefrl.learners import Learner, check_make
from prefrl.learners.ppo import RewardFn, true_reward
from prefrl.learners.sac_networks import (
    SACNetworks,
    init_critics,
    make_networks,
    q_values,
)
from prefrl.networks import tanh_gaussian_sample
from prefrl.policies import Policy

Array = jax.Array
PRNGKey = jax.Array
Params = Any


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """Hyper-parameters of SAC (defaults: Haarnoja et al. 2018, Table 1, with auto-α)."""

    discount: float = field(0.99, "γ")
    tau: float = field(0.005, "Polyak step of the target critics: θ̄ ← τθ + (1−τ)θ̄")
    learning_rate: float = field(3e-4, "Adam step size of actor, critics and temperature")
    batch_size: int = field(256, "transitions per gradient update")
    buffer_size: int = field(1_000_000, "replay capacity in transitions (FIFO)")
    hidden: tuple[int, ...] = field((256, 256), "ReLU MLP widths of the actor and each critic")
    init_temperature: float = field(1.0, "initial entropy temperature α")
    learn_temperature: bool = field(True, "tune α towards the target entropy (else fixed)")
    target_entropy: float | None = field(None, "target entropy H̄ (None: −|A|)")

    def __post_init__(self) -> None:
        checks = {
            "discount": 0.0 <= self.discount <= 1.0,
            "tau": 0.0 < self.tau <= 1.0,
            "learning_rate": self.learning_rate > 0,
            "batch_size": self.batch_size >= 1,
            "buffer_size": self.buffer_size >= 1,
            "init_temperature": self.init_temperature > 0 and math.isfinite(
                self.init_temperature),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid SAC config value(s): "
                             f"{ {name: getattr(self, name) for name in bad} }")
        if self.buffer_size < self.batch_size:
            raise ValueError(f"buffer_size = {self.buffer_size} is smaller than one batch "
                             f"(batch_size = {self.batch_size}): the replay buffer must hold "
                             "at least a batch")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ValueError(f"target_entropy must be finite (or None for −|A|), got "
                             f"{self.target_entropy}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden needs layers of width >= 1, got {self.hidden}")

    def entropy_target(self, action_dim: int) -> float:
        """H̄: ``target_entropy``, or −|A| (Haarnoja et al. 2018) when it is None."""
        return -float(action_dim) if self.target_entropy is None else float(self.target_entropy)


# --------------------------------------------------------------------------- types


class Transition(NamedTuple):
    """One transition (a replay item) or a batch ``[N, …]`` of them."""

    obs: Array  # [..., obs]
    action: Array  # [..., act] in [-1, 1]
    reward: Array  # [...] the environment's (true) reward
    next_obs: Array  # [..., obs] s' (the true last state at a truncation)
    terminated: Array  # [...] bool: s' is terminal (a truncation is not)


@struct.dataclass
class SACState:
    """Everything SAC carries between updates (a pytree of arrays; vmappable over seeds)."""

    actor_params: Params
    critic_params: Params  # leaves [2, …]: the twin critics
    target_critic_params: Params  # leaves [2, …]
    log_alpha: Array  # [] log of the temperature α
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    alpha_opt_state: optax.OptState
    step: Array  # [] int32: updates done
    key: PRNGKey
    # A learned reward's parameters (reward_fn reads extras["reward_params"]): in the
    # state, never in a closure, so a refit does not recompile ``update``.
    reward_params: Any = None


# --------------------------------------------------------------------------- pure losses


def soft_td_target(reward: Array, terminated: Array, next_q_min: Array, next_log_prob: Array,
                   alpha: Array, discount: float) -> Array:
    """``y = r + γ (1 − d) (min_i Q̄_i(s', ã') − α log π(ã'|s'))`` for one transition ``[]``.

    ``d`` is ``terminated`` only (a truncation bootstraps). Haarnoja et al. 2018, Eq. 3 with
    the soft value ``V(s') = E[Q(s', a') − α log π(a'|s')]`` estimated by one sample.
    """
    chex.assert_rank([reward, terminated, next_q_min, next_log_prob], 0)
    not_done = 1.0 - terminated.astype(reward.dtype)
    return reward + discount * not_done * (next_q_min - alpha * next_log_prob)


def critic_loss(q: Array, target: Array) -> Array:
    """``Σ_i ½ (Q_i − y)²`` for one transition: ``q [2]`` the members' values, ``target []``."""
    chex.assert_rank([q, target], [1, 0])
    return 0.5 * jnp.sum((q - target) ** 2)


def actor_loss(log_prob: Array, q_min: Array, alpha: Array) -> Array:
    """``α log π(ã|s) − min_i Q_i(s, ã)`` for one state (Haarnoja et al. 2018, Eq. 7)."""
    chex.assert_rank([log_prob, q_min], 0)
    return alpha * log_prob - q_min


def temperature_loss(alpha: Array, log_prob: Array, target_entropy: float) -> Array:
    """``−α (log π(ã|s) + H̄)`` for one state (Haarnoja et al. 2018, Eq. 18).

    Its gradient in α is ``−(log π + H̄)``: α grows while the policy's entropy
    ``−log π`` is below H̄ and shrinks above it.
    """
    chex.assert_rank(log_prob, 0)
    return -alpha * (log_prob + target_entropy)


def polyak(online: Params, target: Params, tau: float) -> Params:
    """``θ̄ ← τ θ + (1 − τ) θ̄`` leaf by leaf (Lillicrap et al. 2016)."""
    return jax.tree.map(lambda o, t: tau * o + (1.0 - tau) * t, online, target)


# --------------------------------------------------------------------------- the learner


def default_optimizer(config: SACConfig) -> optax.GradientTransformation:
    """Adam at ``config.learning_rate`` (one instance per parameter group)."""
    return optax.adam(config.learning_rate)


def make(
    config: SACConfig,
    obs_dim: int,
    action_dim: int,
    *,
    reward_fn: RewardFn | None = None,
    optimizer: optax.GradientTransformation | None = None,
    networks: SACNetworks | None = None,
) -> Learner[SACState, Transition]:
    """Build SAC's ``init`` and ``update``.

    Args:
      config: hyper-parameters.
      obs_dim, action_dim: sizes of the observation and the action box ``[-1, 1]^act``.
      reward_fn: ``reward_fn(obs [N, obs], action [N, act], next_obs [N, obs], extras)
        -> [N]``, pure (e.g. :class:`prefrl.learners.reward_model.PPOReward`);
        ``extras`` holds ``"reward"`` (the stored reward), ``"terminated"`` and
        ``"reward_params"`` (``state.reward_params``). None: the stored reward.
      optimizer: an optax transform for the actor, the critics and log α (each
        gets its own state); default :func:`default_optimizer`.
      networks: actor and critic modules replacing :func:`make_networks`.

    Returns:
      ``Learner(init, update)``: ``init(key, example=None) -> SACState`` and
      ``update(state, batch: Transition [N, …]) -> (state, metrics)``.
    """
    check_make("sac.make", config, SACConfig, obs_dim=obs_dim, action_dim=action_dim,
               reward_fn=reward_fn, optimizer=optimizer)
    nets = make_networks(action_dim, config.hidden) if networks is None else networks
    opt = default_optimizer(config) if optimizer is None else optimizer
    reward_fn = true_reward if reward_fn is None else reward_fn
    target_entropy = config.entropy_target(action_dim)

    def init(key: PRNGKey, example: Transition | None = None) -> SACState:
        """A fresh state (target critics = critics); ``example`` checks the sizes only."""
        if example is not None and (example.obs.shape[-1] != obs_dim
                                    or example.action.shape[-1] != action_dim):
            raise ValueError(f"example batch has obs/action sizes {example.obs.shape[-1]}/"
                             f"{example.action.shape[-1]}, SAC was made for "
                             f"{obs_dim}/{action_dim}")
        actor_key, critic_key, state_key = jax.random.split(key, 3)
        del key
        actor_params = nets.actor.init(actor_key, jnp.zeros((1, obs_dim), jnp.float32))
        critic_params = init_critics(nets.critic, critic_key, obs_dim, action_dim)
        log_alpha = jnp.log(jnp.asarray(config.init_temperature, jnp.float32))
        return SACState(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=critic_params,
            log_alpha=log_alpha,
            actor_opt_state=opt.init(actor_params),
            critic_opt_state=opt.init(critic_params),
            alpha_opt_state=opt.init(log_alpha),
            step=jnp.zeros((), jnp.int32),
            key=state_key,
        )

    def sample_action(actor_params: Params, obs: Array, key: PRNGKey) -> tuple[Array, Array]:
        mean, log_std = nets.actor.apply(actor_params, obs)
        return tanh_gaussian_sample(key, mean, log_std)

    def critic_step(state: SACState, batch: Transition, reward: Array, alpha: Array,
                    key: PRNGKey) -> tuple[Params, optax.OptState, dict[str, Array]]:
        next_action, next_log_prob = sample_action(state.actor_params, batch.next_obs, key)
        next_q = q_values(nets.critic, state.target_critic_params, batch.next_obs, next_action)
        target = jax.vmap(soft_td_target, in_axes=(0, 0, 0, 0, None, None))(
            reward, batch.terminated, jnp.min(next_q, axis=0), next_log_prob, alpha,
            config.discount)
        target = jax.lax.stop_gradient(target)

        def loss_fn(params: Params) -> tuple[Array, Array]:
            q = q_values(nets.critic, params, batch.obs, batch.action)  # [2, N]
            return jnp.mean(jax.vmap(critic_loss, in_axes=(1, 0))(q, target)), q

        (loss, q), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.critic_params)
        updates, opt_state = opt.update(grads, state.critic_opt_state, state.critic_params)
        params = optax.apply_updates(state.critic_params, updates)
        return params, opt_state, {"critic_loss": loss, "q_mean": jnp.mean(q),
                                   "target_mean": jnp.mean(target),
                                   "critic_grad_norm": optax.tree.norm(grads)}

    def actor_step(state: SACState, critic_params: Params, obs: Array, alpha: Array,
                   key: PRNGKey) -> tuple[Params, optax.OptState, Array, dict[str, Array]]:
        def loss_fn(params: Params) -> tuple[Array, Array]:
            action, log_prob = sample_action(params, obs, key)
            q_min = jnp.min(q_values(nets.critic, critic_params, obs, action), axis=0)
            loss = jax.vmap(actor_loss, in_axes=(0, 0, None))(log_prob, q_min, alpha)
            return jnp.mean(loss), log_prob

        (loss, log_prob), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.actor_params)
        updates, opt_state = opt.update(grads, state.actor_opt_state, state.actor_params)
        params = optax.apply_updates(state.actor_params, updates)
        return params, opt_state, log_prob, {"actor_loss": loss,
                                             "entropy": -jnp.mean(log_prob),
                                             "actor_grad_norm": optax.tree.norm(grads)}

    def alpha_step(state: SACState, log_prob: Array) -> tuple[Array, optax.OptState, Array]:
        log_prob = jax.lax.stop_gradient(log_prob)

        def loss_fn(log_alpha: Array) -> Array:
            loss = jax.vmap(temperature_loss, in_axes=(None, 0, None))(
                jnp.exp(log_alpha), log_prob, target_entropy)
            return jnp.mean(loss)

        loss, grad = jax.value_and_grad(loss_fn)(state.log_alpha)
        if not config.learn_temperature:
            return state.log_alpha, state.alpha_opt_state, loss
        updates, opt_state = opt.update(grad, state.alpha_opt_state, state.log_alpha)
        return optax.apply_updates(state.log_alpha, updates), opt_state, loss

    def update(state: SACState, batch: Transition) -> tuple[SACState, dict[str, Array]]:
        chex.assert_rank([batch.obs, batch.action, batch.reward, batch.terminated],
                         [2, 2, 1, 1])
        if batch.obs.shape[-1] != obs_dim or batch.action.shape[-1] != action_dim:
            raise ValueError(f"batch obs/action sizes {batch.obs.shape[-1]}/"
                             f"{batch.action.shape[-1]} != SAC's {obs_dim}/{action_dim}")
        key, critic_key, actor_key = jax.random.split(state.key, 3)
        extras: Mapping[str, Any] = {"reward": batch.reward, "terminated": batch.terminated,
                                     "reward_params": state.reward_params}
        reward = reward_fn(batch.obs, batch.action, batch.next_obs, extras)
        chex.assert_equal_shape([reward, batch.reward])
        alpha = jnp.exp(state.log_alpha)

        critic_params, critic_opt_state, critic_metrics = critic_step(
            state, batch, reward, alpha, critic_key)
        actor_params, actor_opt_state, log_prob, actor_metrics = actor_step(
            state, critic_params, batch.obs, alpha, actor_key)
        log_alpha, alpha_opt_state, alpha_loss = alpha_step(state, log_prob)
        target_critic_params = polyak(critic_params, state.target_critic_params, config.tau)

        new_state = state.replace(
            actor_params=actor_params, critic_params=critic_params,
            target_critic_params=target_critic_params, log_alpha=log_alpha,
            actor_opt_state=actor_opt_state, critic_opt_state=critic_opt_state,
            alpha_opt_state=alpha_opt_state, step=state.step + 1, key=key)
        metrics = {**critic_metrics, **actor_metrics, "alpha_loss": alpha_loss,
                   "alpha": jnp.exp(log_alpha), "learning_reward": jnp.mean(reward),
                   "true_reward": jnp.mean(batch.reward)}
        metrics["nonfinite"] = jnp.logical_not(jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(v)) for v in metrics.values()])))
        return new_state, metrics

    return Learner(init=init, update=update)


def policy(config: SACConfig, action_dim: int, state: SACState,
           networks: SACNetworks | None = None) -> Policy:
    """The actor as a :class:`prefrl.policies.Policy` (act with ``prefrl.policies.policy_fn``)."""
    nets = make_networks(action_dim, config.hidden) if networks is None else networks
    return Policy(nets.actor.apply, state.actor_params)


__all__ = [
    "SACConfig",
    "SACNetworks",
    "SACState",
    "Transition",
    "actor_loss",
    "critic_loss",
    "default_optimizer",
    "make",
    "make_networks",
    "policy",
    "polyak",
    "soft_td_target",
    "temperature_loss",
]
