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
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl.config import field
from prefrl.learners import Learner
from prefrl.networks import (
    GaussianPolicy,
    ValueNetwork,
    gaussian_entropy,
    tanh_gaussian_log_prob,
    tanh_gaussian_mode,
    tanh_gaussian_sample,
)
from prefrl.types import Trajectory

Array = jax.Array
PRNGKey = jax.Array
Params = Any

# reward_fn(obs [..., obs], action [..., act], next_obs [..., obs], extras) -> reward [...]
RewardFn = Callable[[Array, Array, Array, Mapping[str, Any]], Array]
# apply(params, obs [..., obs]) -> (mean [..., act], log_std [..., act]) of the pre-tanh Gaussian
PolicyApply = Callable[[Params, Array], tuple[Array, Array]]


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
        if not self.policy_hidden or not self.value_hidden:
            raise ValueError("policy_hidden and value_hidden need at least one layer")


# --------------------------------------------------------------------------- running statistics


@struct.dataclass
class RunningStats:
    """Mean and (population) variance of a stream, merged batch by batch."""

    mean: Array  # [d] or []
    var: Array  # [d] or []
    count: Array  # [] float32


def running_stats_init(shape: tuple[int, ...] = ()) -> RunningStats:
    return RunningStats(
        mean=jnp.zeros(shape, jnp.float32),
        var=jnp.ones(shape, jnp.float32),
        count=jnp.zeros((), jnp.float32),
    )


def running_stats_update(stats: RunningStats, x: Array) -> RunningStats:
    """Merge a batch ``x [n, *shape]`` into ``stats`` (Chan et al.'s parallel algorithm).

    ``M2 = var_a n_a + var_b n_b + δ² n_a n_b / n`` with ``δ = mean_b − mean_a``;
    the result equals the statistics of the concatenated data.
    """
    x = x.astype(jnp.float32)
    n_b = jnp.asarray(x.shape[0], jnp.float32)
    mean_b = jnp.mean(x, axis=0)
    var_b = jnp.var(x, axis=0)
    n = stats.count + n_b
    delta = mean_b - stats.mean
    mean = stats.mean + delta * (n_b / n)
    m2 = stats.var * stats.count + var_b * n_b + delta**2 * (stats.count * n_b / n)
    return RunningStats(mean=mean, var=m2 / n, count=n)


def normalize(stats: RunningStats, x: Array, clip: float) -> Array:
    """``clip((x − mean) / sqrt(var + 1e-8), ±clip)`` for ``x [..., *shape]``."""
    mean = jnp.broadcast_to(stats.mean, x.shape)
    std = jnp.broadcast_to(jnp.sqrt(stats.var + 1e-8), x.shape)
    return jnp.clip((x - mean) / std, -clip, clip)


def _std(stats: RunningStats) -> Array:
    return jnp.sqrt(stats.var + 1e-8)


# --------------------------------------------------------------------------- losses


def gae_advantages(
    reward_t: Array,
    value_t: Array,
    next_value_t: Array,
    terminated_t: Array,
    truncated_t: Array,
    discount: float | Array,
    lambda_: float | Array,
) -> Array:
    """GAE(λ) advantages of one environment's rollout ``[T] -> [T]`` (Schulman et al. 2016).

    ``δ_t = r_t + γ (1 − term_t) V(s'_t) − V(s_t)`` and
    ``A_t = δ_t + γ λ (1 − done_t) A_{t+1}`` with ``done = term ∨ trunc``.
    ``next_value_t`` is ``V`` of the *true* next state ``s'_t``, so at a
    time-limit truncation the return is bootstrapped from ``V(s'_t)`` (the
    episode did not end in the MDP), at a termination from 0; either way the
    recursion does not run past the episode's end. The last step of the
    rollout bootstraps from ``V(s'_{T-1})``.
    """
    chex.assert_rank([reward_t, value_t, next_value_t, terminated_t, truncated_t], 1)
    chex.assert_equal_shape([reward_t, value_t, next_value_t, terminated_t, truncated_t])
    not_term = 1.0 - terminated_t.astype(reward_t.dtype)
    not_done = 1.0 - (terminated_t | truncated_t).astype(reward_t.dtype)
    delta_t = reward_t + discount * not_term * next_value_t - value_t

    def step(carry: Array, xs: tuple[Array, Array]) -> tuple[Array, Array]:
        delta, cont = xs
        adv = delta + discount * lambda_ * cont * carry
        return adv, adv

    _, adv_t = jax.lax.scan(
        step, jnp.zeros((), reward_t.dtype), (delta_t, not_done), reverse=True
    )
    return adv_t


def clipped_surrogate_loss(
    log_prob: Array, old_log_prob: Array, advantage: Array, epsilon: float | Array
) -> Array:
    """PPO-clip loss of one sample: ``−min(ρ A, clip(ρ, 1−ε, 1+ε) A)``, ``ρ = π/π_old``."""
    chex.assert_rank([log_prob, old_log_prob, advantage], 0)
    ratio = jnp.exp(log_prob - old_log_prob)
    clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon)
    return -jnp.minimum(ratio * advantage, clipped * advantage)


def kl_penalty_loss(
    log_prob: Array, old_log_prob: Array, advantage: Array, kl: Array, beta: Array
) -> Array:
    """Adaptive-KL-penalty loss of one sample: ``−(ρ A − β KL(π_old ‖ π))``."""
    chex.assert_rank([log_prob, old_log_prob, advantage, kl], 0)
    ratio = jnp.exp(log_prob - old_log_prob)
    return -(ratio * advantage - beta * kl)


def adapt_kl_coef(beta: Array, kl: Array, target: float | Array) -> Array:
    """Schulman et al. 2017 §4: β ← 2β if KL > 1.5 δ; β ← β/2 if KL < δ/1.5; else β."""
    beta = jnp.where(kl > 1.5 * target, beta * 2.0, beta)
    return jnp.where(kl < target / 1.5, beta * 0.5, beta)


def value_loss(
    value: Array, target: Array, old_value: Array, clip_epsilon: float | None
) -> Array:
    """Value loss of one sample: ``½ (V − target)²``.

    Clipped (PPO2-style): ``½ max((V − t)², (V_old + clip(V − V_old, ±ε) − t)²)``.
    """
    chex.assert_rank([value, target, old_value], 0)
    loss = (value - target) ** 2
    if clip_epsilon is not None:
        clipped = old_value + jnp.clip(value - old_value, -clip_epsilon, clip_epsilon)
        loss = jnp.maximum(loss, (clipped - target) ** 2)
    return 0.5 * loss


def gaussian_kl(mean_p: Array, log_std_p: Array, mean_q: Array, log_std_q: Array) -> Array:
    """``KL(N_p ‖ N_q)`` of diagonal Gaussians, summed over the last axis.

    Equal to the KL between the tanh-squashed distributions (tanh is a bijection).
    """
    var_p = jnp.exp(2.0 * log_std_p)
    var_q = jnp.exp(2.0 * log_std_q)
    kl = log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2.0 * var_q) - 0.5
    return jnp.sum(kl, axis=-1)


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
    # Inputs that change between updates without changing the computation:
    # a learned reward's parameters (read by ``reward_fn`` as
    # ``extras["reward_params"]``) and π_ref's parameters (for the KL
    # penalty). They live in the state, never in a closure, so a reward refit
    # does not recompile ``update`` and seeds with different π_ref vmap.
    # Replace them with ``state.replace(reward_params=…, ref_params=…)``.
    reward_params: Any = None
    ref_params: Any = None


class PPONetworks(NamedTuple):
    policy: GaussianPolicy
    value: ValueNetwork


def make_networks(config: PPOConfig, action_dim: int) -> PPONetworks:
    return PPONetworks(
        policy=GaussianPolicy(
            action_dim=action_dim,
            hidden=tuple(config.policy_hidden),
            state_dependent_std=False,
            init_log_std=config.init_log_std,
        ),
        value=ValueNetwork(hidden=tuple(config.value_hidden)),
    )


def _value_head(value_params: Params) -> tuple[str, str]:
    mlp = value_params["params"]["MLP_0"]
    last = max(mlp, key=lambda name: int(name.split("_")[-1]))
    return "MLP_0", last


def _popart_rescale(
    value_params: Params, old: RunningStats, new: RunningStats
) -> Params:
    """Rescale the critic's last layer so ``μ + σ v_θ(s)`` is unchanged by ``old → new``.

    ``W' = W σ/σ'``, ``b' = (σ b + μ − μ') / σ'`` (van Hasselt et al. 2016).
    """
    mlp_name, last = _value_head(value_params)
    layer = value_params["params"][mlp_name][last]
    s_old, s_new = _std(old), _std(new)
    new_layer = {
        "kernel": layer["kernel"] * (s_old / s_new),
        "bias": (layer["bias"] * s_old + old.mean - new.mean) / s_new,
    }
    mlp = {**value_params["params"][mlp_name], last: new_layer}
    return {**value_params, "params": {**value_params["params"], mlp_name: mlp}}


class Acting(NamedTuple):
    """Pure functions of a :class:`PPOState` for acting and evaluation (all ``jit``-able).

    ``act(state, obs [..., obs], key) -> action [..., act]`` samples π;
    ``mode(state, obs) -> action`` is ``tanh(mean)``;
    ``log_prob(state, obs, action) -> [...]``;
    ``value(state, obs) -> [...]`` is V in the units of the optimised reward.
    """

    act: Callable[[PPOState, Array, PRNGKey], Array]
    mode: Callable[[PPOState, Array], Array]
    log_prob: Callable[[PPOState, Array, Array], Array]
    value: Callable[[PPOState, Array], Array]


def make_acting(
    config: PPOConfig, action_dim: int, networks: PPONetworks | None = None
) -> Acting:
    nets = make_networks(config, action_dim) if networks is None else networks

    def norm(state: PPOState, obs: Array) -> Array:
        if not config.normalize_obs:
            return obs
        return normalize(state.obs_stats, obs, config.obs_clip)

    def act(state: PPOState, obs: Array, key: PRNGKey) -> Array:
        mean, log_std = nets.policy.apply(state.policy_params, norm(state, obs))
        return tanh_gaussian_sample(key, mean, log_std)[0]

    def mode(state: PPOState, obs: Array) -> Array:
        mean, _ = nets.policy.apply(state.policy_params, norm(state, obs))
        return tanh_gaussian_mode(mean)

    def log_prob(state: PPOState, obs: Array, action: Array) -> Array:
        mean, log_std = nets.policy.apply(state.policy_params, norm(state, obs))
        return tanh_gaussian_log_prob(mean, log_std, action)

    def value(state: PPOState, obs: Array) -> Array:
        v = nets.value.apply(state.value_params, norm(state, obs))
        if not config.normalize_values:
            return v
        return state.return_stats.mean + _std(state.return_stats) * v

    return Acting(act=act, mode=mode, log_prob=log_prob, value=value)


def policy_bundle(state: PPOState) -> dict[str, Any]:
    """The part of the state that acting needs: ``{"policy": params, "obs_stats": stats}``."""
    return {"policy": state.policy_params, "obs_stats": state.obs_stats}


@dataclasses.dataclass(frozen=True)
class _PolicyApply:
    # A value (hashable by config), not a closure: jitted acting keyed on it
    # compiles once per configuration, however many times it is rebuilt.
    config: PPOConfig
    action_dim: int

    def __call__(self, bundle: Mapping[str, Any], obs: Array) -> tuple[Array, Array]:
        nets = make_networks(self.config, self.action_dim)
        if self.config.normalize_obs:
            obs = normalize(bundle["obs_stats"], obs, self.config.obs_clip)
        return nets.policy.apply(bundle["policy"], obs)


def make_policy_apply(config: PPOConfig, action_dim: int) -> PolicyApply:
    """``apply(bundle, obs [..., obs]) -> (mean, log_std)`` on *raw* observations.

    ``bundle`` is :func:`policy_bundle` of a state; the observation
    normalisation is inside, so ``Policy(apply, bundle)`` is a self-contained
    policy (e.g. π_ref for the KL penalty, or ``prefrl.policies.policy_fn``).
    """
    return _PolicyApply(config, int(action_dim))


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

        # 0. Fold the rollout's observations into the normaliser first (as an
        # environment wrapper would), so the networks are fitted on the inputs
        # they will see from now on. The "behaviour" log-probs below are then
        # those of the behaviour parameters under the updated normaliser: a
        # negligible change once the statistics have settled.
        if config.normalize_obs:
            state = state.replace(
                obs_stats=running_stats_update(state.obs_stats, traj.obs.reshape(n, obs_dim))
            )

        # 1. The behaviour policy's view of the rollout.
        def norm(x: Array) -> Array:
            if not config.normalize_obs:
                return x
            return normalize(state.obs_stats, x, config.obs_clip)

        obs_n = norm(traj.obs)
        old_mean, old_log_std = nets.policy.apply(state.policy_params, obs_n)
        old_log_prob = tanh_gaussian_log_prob(old_mean, old_log_std, traj.action)
        value = acting.value(state, traj.obs)
        next_value = acting.value(state, traj.next_obs)

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
            reward = reward - config.kl_ref_coef * ref_kl

        # 2. GAE over time, one environment at a time.
        advantage = jax.vmap(gae_advantages, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1)(
            reward,
            value,
            next_value,
            traj.terminated,
            traj.truncated,
            config.discount,
            config.gae_lambda,
        )
        target = advantage + value

        # PopArt: fold this batch's targets into the statistics and keep V unchanged.
        value_params = state.value_params
        return_stats = state.return_stats
        if config.normalize_values:
            return_stats = running_stats_update(state.return_stats, target.reshape(-1))
            value_params = _popart_rescale(value_params, state.return_stats, return_stats)
            target_n = (target - return_stats.mean) / _std(return_stats)
            old_value_n = (value - return_stats.mean) / _std(return_stats)
        else:
            target_n, old_value_n = target, value

        data = {
            "obs": obs_n,
            "action": traj.action,
            "old_log_prob": old_log_prob,
            "old_mean": old_mean,
            "old_log_std": old_log_std,
            "advantage": advantage,
            "target": target_n,
            "old_value": old_value_n,
        }
        data = jax.tree.map(lambda x: x.reshape((n, *x.shape[2:])), data)
        mb_size = n // config.num_minibatches

        # 3. Epochs × minibatches, each a scan.
        def sgd_step(carry: tuple[dict, optax.OptState], mb: dict[str, Array]):
            params, opt_state = carry
            grads, metrics = jax.grad(loss_fn, has_aux=True)(params, mb, state.kl_coef)
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

        params = {"policy": state.policy_params, "value": value_params}
        (params, opt_state), sgd_metrics = jax.lax.scan(
            epoch, (params, state.opt_state), jax.random.split(perm_key, config.num_epochs)
        )

        # 4. KL of the whole update (closed form) and the adaptive-KL rule.
        new_mean, new_log_std = nets.policy.apply(params["policy"], obs_n)
        kl = jnp.mean(gaussian_kl(old_mean, old_log_std, new_mean, new_log_std))
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
        residual = target - value
        explained_var = 1.0 - jnp.var(residual) / (jnp.var(target) + 1e-8)
        # Loss statistics averaged over every epoch and minibatch of this update.
        metrics = {k: jnp.mean(v) for k, v in sgd_metrics.items()}
        metrics.update(
            kl=kl,
            kl_coef=kl_coef,
            proxy_reward=jnp.mean(proxy_reward),
            true_reward=jnp.mean(traj.reward),
            learning_reward=jnp.mean(reward),
            ref_kl=jnp.mean(ref_kl),
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
