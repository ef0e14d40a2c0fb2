"""Proximal Policy Optimisation (Schulman et al. 2017, "Proximal Policy Optimization Algorithms").

``make(config, obs_dim, action_dim, …) -> Learner(init, update)``: two pure
functions over an explicit :class:`PPOState`. ``update(state, trajectory)``
is the whole PPO iteration in one ``jit``-able call:

1. recompute, under the *behaviour* parameters (the ones that collected the
   rollout), the log-probabilities ``log π_old(a|s)``, the values ``V(s)`` and
   ``V(s')`` and the reward used for learning (``reward_fn``, optionally minus
   the per-step KL penalty to a frozen reference policy);
2. GAE(λ) advantages (Schulman et al. 2016) by a reverse ``lax.scan``;
3. ``num_epochs × num_minibatches`` gradient steps, one ``lax.scan`` each;
4. the adaptive-KL coefficient rule and the running statistics.

Every policy is the project's tanh-squashed Gaussian on ``[-1, 1]^act``
(``prefrl.networks``): log-probs are densities on the environment's action
space, so PPO's ratio, the KL to π_ref and CPL's ``α log π`` agree. Because
``tanh`` is a bijection, the KL between two squashed Gaussians equals the KL
between the underlying Gaussians, which has a closed form (used by the
adaptive-KL variant and reported as ``approx_kl``).

Units. Observations are normalised by running statistics kept in the state
(parallel Welford update; Chan et al. 1979). Value targets are normalised
too, PopArt-style (van Hasselt et al. 2016, "Learning values across many
orders of magnitude"): the critic predicts ``v_θ(s)`` and
``V(s) = μ_R + σ_R · v_θ(s)``; when ``(μ_R, σ_R)`` change, the critic's last
layer is rescaled so that ``V`` is preserved exactly. So ``V`` is always in
the units of the reward PPO optimised, with discount ``config.discount``,
while the loss sees unit-scale targets — no reward scaling to undo.

Learners see arrays only: this module imports no environment.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl.config import field
from prefrl.learners import Learner, check_make
from prefrl.learners.ppo_losses import (
    adapt_kl_coef,
    clipped_surrogate_loss,
    gae_advantages,
    gaussian_kl,
    kl_penalty_loss,
    value_loss,
)
from prefrl.learners.ppo_networks import (
    Acting,
    PolicyApply,
    PPONetworks,
    make_acting,
    make_networks,
    make_policy_apply,
    policy_bundle,
)
from prefrl.networks import (
    gaussian_entropy,
    tanh_gaussian_log_prob,
)
from prefrl.normalization import (
    RunningStats,
    normalize,
    popart_rescale,
    running_stats_init,
    running_stats_update,
    std,
)
from prefrl.types import Trajectory

Array = jax.Array
PRNGKey = jax.Array
Params = Any

# reward_fn(obs [..., obs], action [..., act], next_obs [..., obs], extras) -> reward [...]
RewardFn = Callable[[Array, Array, Array, Mapping[str, Any]], Array]


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Hyper-parameters of PPO. Defaults suit half-cheetah with 64 envs × 64 steps."""

    loss: Literal["clip", "kl"] = field("clip", "surrogate: clipped ratio or adaptive KL penalty")
    clip_epsilon: float = field(0.2, "ε of the clipped surrogate")
    kl_target: float = field(0.01, "δ of the adaptive-KL variant")
    kl_init_coef: float = field(1.0, "initial β of the adaptive-KL variant")
    discount: float = field(0.99, "γ (also the discount of the exported value function)")
    gae_lambda: float = field(0.95, "λ of GAE")
    num_epochs: int = field(10, "passes over each rollout batch")
    num_minibatches: int = field(32, "minibatches per epoch (T·B must be divisible)")
    learning_rate: float = field(3e-4, "Adam learning rate (start value when annealed)")
    anneal_lr: bool = field(True, "anneal the learning rate linearly to 0")
    max_grad_norm: float = field(0.5, "global gradient-norm clip")
    value_coef: float = field(0.5, "weight of the value loss")
    value_clip_epsilon: float | None = field(None, "clip the value update (None: off)")
    entropy_coef: float = field(0.0, "weight of the (pre-tanh Gaussian) entropy bonus")
    normalize_advantages: bool = field(True, "normalise advantages per minibatch")
    normalize_obs: bool = field(True, "running observation normalisation")
    obs_clip: float = field(10.0, "clip normalised observations to ±this")
    normalize_values: bool = field(True, "PopArt value normalisation (V stays in reward units)")
    policy_hidden: tuple[int, ...] = field((64, 64), "policy MLP widths")
    value_hidden: tuple[int, ...] = field((64, 64), "value MLP widths")
    init_log_std: float = field(-0.5, "initial log-std of the pre-tanh Gaussian")
    kl_ref_coef: float = field(0.0, "β_KL of the per-step KL penalty to π_ref (RLHF)")

    def __post_init__(self) -> None:
        if self.loss not in ("clip", "kl"):
            raise ValueError(f"loss must be 'clip' or 'kl', got {self.loss!r}")
        checks = {
            "clip_epsilon": self.clip_epsilon > 0,
            "kl_target": self.kl_target > 0,
            "kl_init_coef": self.kl_init_coef > 0,
            "discount": 0 <= self.discount <= 1,
            "gae_lambda": 0 <= self.gae_lambda <= 1,
            "num_epochs": self.num_epochs >= 1,
            "num_minibatches": self.num_minibatches >= 1,
            "learning_rate": self.learning_rate > 0,
            "max_grad_norm": self.max_grad_norm > 0,
            "value_coef": self.value_coef >= 0,
            "entropy_coef": self.entropy_coef >= 0,
            "obs_clip": self.obs_clip > 0,
            "kl_ref_coef": self.kl_ref_coef >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {name: getattr(self, name) for name in bad}
            raise ValueError(f"invalid PPO config value(s): {values}")
        if self.value_clip_epsilon is not None and self.value_clip_epsilon <= 0:
            raise ValueError(
                f"value_clip_epsilon must be > 0 or None, got {self.value_clip_epsilon}"
            )
        if not self.policy_hidden or not self.value_hidden or min(
                (*self.policy_hidden, *self.value_hidden)) < 1:
            raise ValueError(f"policy_hidden and value_hidden need layers of width >= 1, got "
                             f"{self.policy_hidden} and {self.value_hidden}")


# --------------------------------------------------------------------------- state and networks


@struct.dataclass
class PPOState:
    """Everything PPO carries between updates (a pytree of arrays; vmappable over seeds)."""

    policy_params: Params
    value_params: Params
    opt_state: optax.OptState
    obs_stats: RunningStats  # [obs] running observation statistics
    return_stats: RunningStats  # [] statistics of the value targets (PopArt)
    kl_coef: Array  # [] adaptive-KL β (unused by the clip loss)
    step: Array  # [] int32: number of updates done
    key: PRNGKey
    # Inputs that change between updates without changing the computation: a learned
    # reward's parameters (``reward_fn`` reads ``extras["reward_params"]``), π_ref's and
    # β_KL (the KL penalty; None: ``config.kl_ref_coef``). In the state, never in a
    # closure: a refit does not recompile ``update``, and runs vmap over them.
    reward_params: Any = None
    ref_params: Any = None
    kl_ref_coef: Any = None


def true_reward(obs: Array, action: Array, next_obs: Array, extras: Mapping[str, Any]) -> Array:
    """The default ``reward_fn``: the reward the environment recorded in the trajectory."""
    del obs, action, next_obs
    return extras["reward"]


def make_optimizer(config: PPOConfig, num_updates: int | None) -> optax.GradientTransformation:
    """Global-norm clipping then Adam; learning rate annealed linearly to 0 over training.

    The learning rate is a schedule, not an injected hyperparameter: the
    optimiser state is part of every PPO checkpoint (the shipped experts
    included), whose structure this keeps.
    """
    if config.anneal_lr:
        if not num_updates or num_updates < 1:
            raise ValueError("anneal_lr=True needs num_updates >= 1 (the length of training)")
        total = num_updates * config.num_epochs * config.num_minibatches
        lr: float | optax.Schedule = optax.linear_schedule(config.learning_rate, 0.0, total)
    else:
        lr = config.learning_rate
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr, eps=1e-5))


# --------------------------------------------------------------------------- the learner


def make(
    config: PPOConfig,
    obs_dim: int,
    action_dim: int,
    *,
    num_updates: int | None = None,
    reward_fn: RewardFn = true_reward,
    reference_apply: PolicyApply | None = None,
    optimizer: optax.GradientTransformation | None = None,
    networks: PPONetworks | None = None,
) -> Learner[PPOState, Trajectory]:
    """Build PPO's ``init`` and ``update``.

    Args:
      config: hyper-parameters.
      obs_dim, action_dim: sizes of the observation and the action box ``[-1, 1]^act``.
      num_updates: how many times ``update`` will be called (for the linear
        learning-rate annealing; required when ``config.anneal_lr``).
      reward_fn: ``reward_fn(obs, action, next_obs, extras) -> reward`` on
        ``[T, B, …]`` arrays, pure. ``extras`` holds ``"reward"`` (the
        trajectory's true reward ``[T, B]``), ``"x_velocity"``,
        ``"terminated"``, ``"truncated"`` and ``"reward_params"``
        (``state.reward_params``, e.g. a learned reward model's parameters).
        Default: the true reward.
      reference_apply: ``ref_apply(ref_params, obs) -> (mean, log_std)`` of
        a frozen policy π_ref's pre-tanh Gaussian on *raw* observations; its
        parameters travel in ``state.ref_params``. With
        ``config.kl_ref_coef = β_KL > 0`` the learning reward becomes
        ``r − β_KL (log π(a|s) − log π_ref(a|s))`` (the KL-regularised RLHF
        objective; behaviour log-probs).
      optimizer: an optax transform replacing :func:`make_optimizer`.
      networks: policy and value modules replacing :func:`make_networks`.

    Returns:
      ``Learner(init, update)`` with ``init(key, example=None) -> PPOState``
      and ``update(state, trajectory) -> (state, metrics)`` where
      ``trajectory`` is a :class:`prefrl.types.Trajectory` ``[T, B, …]``
      collected with ``state``'s policy. ``T·B`` must be divisible by
      ``config.num_minibatches``.
    """
    check_make("ppo.make", config, PPOConfig, obs_dim=obs_dim, action_dim=action_dim)
    if config.kl_ref_coef > 0 and reference_apply is None:
        raise ValueError("kl_ref_coef > 0 needs a reference policy (reference_apply=…, "
                         "and its parameters in state.ref_params)")
    nets = make_networks(config, action_dim) if networks is None else networks
    acting = make_acting(config, action_dim, nets)
    opt = optimizer if optimizer is not None else make_optimizer(config, num_updates)

    def init(key: PRNGKey, example: Trajectory | None = None) -> PPOState:
        """A fresh state; ``example`` (optional) is checked against ``obs_dim``/``action_dim``."""
        if example is not None and (example.obs.shape[-1] != obs_dim
                                    or example.action.shape[-1] != action_dim):
            raise ValueError(
                f"example trajectory has obs/action sizes {example.obs.shape[-1]}/"
                f"{example.action.shape[-1]}, PPO was made for {obs_dim}/{action_dim}"
            )
        policy_key, value_key, state_key = jax.random.split(key, 3)
        dummy = jnp.zeros((1, obs_dim), jnp.float32)
        policy_params = nets.policy.init(policy_key, dummy)
        value_params = nets.value.init(value_key, dummy)
        opt_state = opt.init({"policy": policy_params, "value": value_params})
        return PPOState(
            policy_params=policy_params,
            value_params=value_params,
            opt_state=opt_state,
            obs_stats=running_stats_init((obs_dim,)),
            return_stats=running_stats_init(()),
            kl_coef=jnp.asarray(config.kl_init_coef, jnp.float32),
            step=jnp.zeros((), jnp.int32),
            key=state_key,
        )

    def loss_fn(
        params: dict[str, Params], mb: dict[str, Array], kl_coef: Array
    ) -> tuple[Array, dict[str, Array]]:
        mean, log_std = nets.policy.apply(params["policy"], mb["obs"])
        log_prob = tanh_gaussian_log_prob(mean, log_std, mb["action"])
        kl = gaussian_kl(mb["old_mean"], mb["old_log_std"], mean, log_std)
        adv = mb["advantage"]
        if config.normalize_advantages:
            adv = (adv - jnp.mean(adv)) / (jnp.std(adv) + 1e-8)
        if config.loss == "clip":
            pg = jax.vmap(clipped_surrogate_loss, in_axes=(0, 0, 0, None))(
                log_prob, mb["old_log_prob"], adv, config.clip_epsilon
            )
        else:
            pg = jax.vmap(kl_penalty_loss, in_axes=(0, 0, 0, 0, None))(
                log_prob, mb["old_log_prob"], adv, kl, kl_coef
            )
        v = nets.value.apply(params["value"], mb["obs"])
        vl = jax.vmap(value_loss, in_axes=(0, 0, 0, None))(
            v, mb["target"], mb["old_value"], config.value_clip_epsilon
        )
        entropy = jnp.mean(gaussian_entropy(log_std))
        total = jnp.mean(pg) + config.value_coef * jnp.mean(vl) - config.entropy_coef * entropy
        ratio = jnp.exp(log_prob - mb["old_log_prob"])
        metrics = {
            "policy_loss": jnp.mean(pg),
            "value_loss": jnp.mean(vl),
            "entropy": entropy,
            "approx_kl": jnp.mean(kl),
            "clip_fraction": jnp.mean(
                (jnp.abs(ratio - 1.0) > config.clip_epsilon).astype(jnp.float32)
            ),
        }
        return total, metrics

    def behaviour_view(state: PPOState, traj: Trajectory) -> tuple[PPOState, dict[str, Array]]:
        """Steps 0–1: the normaliser, then the behaviour policy's view of the rollout.

        The rollout's observations are folded into the normaliser first (as an
        environment wrapper would), so the networks are fitted on the inputs
        they will see from now on; the "behaviour" log-probs are then those of
        the behaviour parameters under the updated normaliser: a negligible
        change once the statistics have settled.
        """
        n = traj.reward.size
        if config.normalize_obs:
            state = state.replace(
                obs_stats=running_stats_update(state.obs_stats, traj.obs.reshape(n, obs_dim))
            )
        obs_n = traj.obs
        if config.normalize_obs:
            obs_n = normalize(state.obs_stats, traj.obs, config.obs_clip)
        old_mean, old_log_std = nets.policy.apply(state.policy_params, obs_n)
        old_log_prob = tanh_gaussian_log_prob(old_mean, old_log_std, traj.action)
        extras = {
            "reward": traj.reward,
            "x_velocity": traj.x_velocity,
            "terminated": traj.terminated,
            "truncated": traj.truncated,
            "reward_params": state.reward_params,
        }
        proxy_reward = reward_fn(traj.obs, traj.action, traj.next_obs, extras)
        chex.assert_equal_shape([proxy_reward, traj.reward])
        reward = proxy_reward
        ref_kl = jnp.zeros_like(reward)
        if reference_apply is not None:
            if state.ref_params is None:
                raise ValueError("PPO was made with reference_apply but state.ref_params is "
                                 "None: set it with state.replace(ref_params=…)")
            ref_mean, ref_log_std = reference_apply(state.ref_params, traj.obs)
            ref_log_prob = tanh_gaussian_log_prob(ref_mean, ref_log_std, traj.action)
            ref_kl = old_log_prob - ref_log_prob
            reward = reward - (config.kl_ref_coef if state.kl_ref_coef is None
                               else state.kl_ref_coef) * ref_kl
        return state, {
            "obs": obs_n, "old_mean": old_mean, "old_log_std": old_log_std,
            "old_log_prob": old_log_prob, "value": acting.value(state, traj.obs),
            "next_value": acting.value(state, traj.next_obs), "proxy_reward": proxy_reward,
            "reward": reward, "ref_kl": ref_kl,
        }

    def value_targets(state: PPOState, view: dict[str, Array], traj: Trajectory):
        """Step 2: GAE per environment, and PopArt's statistics (V kept unchanged)."""
        advantage = jax.vmap(gae_advantages, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1)(
            view["reward"],
            view["value"],
            view["next_value"],
            traj.terminated,
            traj.truncated,
            config.discount,
            config.gae_lambda,
        )
        value, target = view["value"], advantage + view["value"]
        value_params, return_stats = state.value_params, state.return_stats
        if config.normalize_values:
            return_stats = running_stats_update(state.return_stats, target.reshape(-1))
            value_params = popart_rescale(value_params, state.return_stats, return_stats)
            target_n = (target - return_stats.mean) / std(return_stats)
            old_value_n = (value - return_stats.mean) / std(return_stats)
        else:
            target_n, old_value_n = target, value
        return advantage, target, target_n, old_value_n, value_params, return_stats

    def sgd(params: dict, opt_state: optax.OptState, data: dict[str, Array], kl_coef: Array,
            perm_key: PRNGKey):
        """Step 3: epochs × minibatches, each a scan."""
        n = jax.tree.leaves(data)[0].shape[0]
        mb_size = n // config.num_minibatches

        def sgd_step(carry: tuple[dict, optax.OptState], mb: dict[str, Array]):
            params, opt_state = carry
            grads, metrics = jax.grad(loss_fn, has_aux=True)(params, mb, kl_coef)
            updates, opt_state = opt.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            metrics["grad_norm"] = optax.tree.norm(grads)
            return (params, opt_state), metrics

        def epoch(carry: tuple[dict, optax.OptState], epoch_key: PRNGKey):
            perm = jax.random.permutation(epoch_key, n)
            shuffled = jax.tree.map(
                lambda x: x[perm].reshape((config.num_minibatches, mb_size, *x.shape[1:])), data
            )
            return jax.lax.scan(sgd_step, carry, shuffled)

        return jax.lax.scan(epoch, (params, opt_state),
                            jax.random.split(perm_key, config.num_epochs))

    def update(state: PPOState, traj: Trajectory) -> tuple[PPOState, dict[str, Array]]:
        chex.assert_rank(traj.reward, 2)
        num_steps, num_envs = traj.reward.shape
        n = num_steps * num_envs
        if n % config.num_minibatches:
            raise ValueError(
                f"T*B = {num_steps}*{num_envs} = {n} is not divisible by "
                f"num_minibatches = {config.num_minibatches}"
            )
        if traj.obs.shape[-1] != obs_dim:
            raise ValueError(f"trajectory obs size {traj.obs.shape[-1]} != PPO obs_dim {obs_dim}")
        key, perm_key = jax.random.split(state.key)
        state, view = behaviour_view(state, traj)
        advantage, target, target_n, old_value_n, value_params, return_stats = value_targets(
            state, view, traj)
        data = {
            "obs": view["obs"],
            "action": traj.action,
            "old_log_prob": view["old_log_prob"],
            "old_mean": view["old_mean"],
            "old_log_std": view["old_log_std"],
            "advantage": advantage,
            "target": target_n,
            "old_value": old_value_n,
        }
        data = jax.tree.map(lambda x: x.reshape((n, *x.shape[2:])), data)
        (params, opt_state), sgd_metrics = sgd(
            {"policy": state.policy_params, "value": value_params}, state.opt_state, data,
            state.kl_coef, perm_key)

        # 4. KL of the whole update (closed form) and the adaptive-KL rule.
        new_mean, new_log_std = nets.policy.apply(params["policy"], view["obs"])
        kl = jnp.mean(gaussian_kl(view["old_mean"], view["old_log_std"], new_mean, new_log_std))
        kl_coef = state.kl_coef
        if config.loss == "kl":
            kl_coef = adapt_kl_coef(kl_coef, kl, config.kl_target)

        new_state = state.replace(
            policy_params=params["policy"],
            value_params=params["value"],
            opt_state=opt_state,
            return_stats=return_stats,
            kl_coef=kl_coef,
            step=state.step + 1,
            key=key,
        )
        value, reward = view["value"], view["reward"]
        residual = target - value
        explained_var = 1.0 - jnp.var(residual) / (jnp.var(target) + 1e-8)
        # Loss statistics averaged over every epoch and minibatch of this update.
        metrics = {k: jnp.mean(v) for k, v in sgd_metrics.items()}
        metrics.update(
            kl=kl,
            kl_coef=kl_coef,
            proxy_reward=jnp.mean(view["proxy_reward"]),
            true_reward=jnp.mean(traj.reward),
            learning_reward=jnp.mean(reward),
            ref_kl=jnp.mean(view["ref_kl"]),
            value_mean=jnp.mean(value),
            explained_variance=explained_var,
            log_std=jnp.mean(new_log_std),
            nonfinite=jnp.logical_not(
                jnp.all(jnp.isfinite(reward)) & jnp.all(jnp.isfinite(kl))
            ),
        )
        return new_state, metrics

    return Learner(init=init, update=update)


def num_params(tree: Params) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


# The public face of PPO: the learner, its config and state, and the pieces
# (networks, acting, losses, normalisers) defined beside it.
__all__ = [
    "Acting",
    "PPOConfig",
    "PPONetworks",
    "PPOState",
    "PolicyApply",
    "RewardFn",
    "RunningStats",
    "adapt_kl_coef",
    "clipped_surrogate_loss",
    "gae_advantages",
    "gaussian_kl",
    "kl_penalty_loss",
    "make",
    "make_acting",
    "make_networks",
    "make_optimizer",
    "make_policy_apply",
    "num_params",
    "policy_bundle",
    "popart_rescale",
    "running_stats_init",
    "running_stats_update",
    "true_reward",
    "value_loss",
]
