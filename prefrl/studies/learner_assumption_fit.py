"""Fitting in the learner-assumption study: r̂ / Â, the regret-SF r̂, AWR, PPO.

* r̂ (partial return) and Â (advantage): :mod:`prefrl.loops.fit` of
  :mod:`prefrl.learners.reward_model` (:func:`rm_config`, :data:`fit_rm`).
* The regret-model r̂ = w·φ (Knox et al. 2022, :mod:`prefrl.learners.regret_sf`):
  φ frozen (the partial-return r̂'s last hidden layer; ψ fitted once on the
  library, then w) or learned (φ, w and ψ in alternation,
  :func:`prefrl.learners.successor_features.alternate`), then standardised
  over the training segments' steps (:func:`fit_regret_sf`).
* Â used greedily: advantage-weighted regression on the training segments
  (:func:`fit_awr`, :mod:`prefrl.learners.advantage_policy`).
* PPO from scratch on any of these rewards (:func:`train_ppo`).

Every jitted function takes the shapes of the whole pool, not of a seed's
split, so all seeds of a task share one compilation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prefrl import preference
from prefrl.learners import advantage_policy, ppo, regret_sf
from prefrl.learners import reward_model as rm
from prefrl.learners import sf_networks as nets
from prefrl.learners import successor_features as sf
from prefrl.loops import fit as reward_fit
from prefrl.networks import GaussianPolicy
from prefrl.policies import Policy, PolicyFn, policy_fn
from prefrl.studies.learner_assumption_config import LearnerAssumptionConfig, named_key
from prefrl.studies.learner_assumption_data import (
    FrozenPhi,
    LearnedPhi,
    SeedSplit,
    SFValue,
    TaskData,
    ppo_reward,
    strip,
)
from prefrl.studies.learner_assumption_library import (
    check_psi_width,
    fit_library_psi,
    psi_fit_quality,
    psi_network_for,
    psi_on,
    psi_own,
    sf_fit_config,
)

Array = jax.Array
PRNGKey = jax.Array
Params = Any


def rm_config(config: LearnerAssumptionConfig, assumption: str) -> rm.RewardModelConfig:
    """r̂ (``partial_return``, γ_p = 1) or Â (``advantage``, γ)."""
    return rm.RewardModelConfig(
        assumption=rm.fitted_function(assumption),  # type: ignore[arg-type]
        hidden=tuple(config.rm_hidden), ensemble_size=config.rm_ensemble,
        num_steps=config.rm_steps, batch_size=config.rm_batch_size,
        learning_rate=config.rm_learning_rate,
        eval_every=min(config.eval_every, config.rm_steps),
        discount=1.0 if assumption == "partial_return" else config.discount)


fit_rm = jax.jit(reward_fit.fit, static_argnums=1)


@functools.partial(jax.jit, static_argnums=0)
def rm_scores(model: rm.RewardModel, state: rm.RewardModelState, obs: Array, action: Array,
              mask: Array) -> Array:
    """``[N]`` segment scores Σ γ^t f(s_t, a_t) under the model's own assumption."""
    return rm.segment_scores(model, state, obs, action, mask)


class SFResult(NamedTuple):
    """A fitted regret-model r̂: its PPO/EPIC reward, pool scores −regret ``[N]``, metrics."""

    value_fn: Callable[..., Array]
    params: Params
    scores: np.ndarray
    metrics: dict[str, float]


@functools.partial(jax.jit, static_argnames=("phi_from",))
def phi_on(phi_from: Callable[[Params], nets.PhiFn], phi_params: Params, obs: Array,
            action: Array) -> Array:
    """φ on ``[..., obs]``, ``[..., act]`` in row blocks (bounded memory)."""
    phi = phi_from(phi_params)
    lead = obs.shape[:-1]
    flat_o, flat_a = obs.reshape(-1, obs.shape[-1]), action.reshape(-1, action.shape[-1])
    out = jax.lax.map(lambda xs: phi(xs[0], xs[1]), (flat_o, flat_a), batch_size=4096)
    return out.reshape(*lead, out.shape[-1])


@functools.partial(jax.jit, static_argnames=("rm_model", "sf_config", "num_steps", "batch_size",
                                             "eval_every"))
def _fit_w(key: PRNGKey, rm_state: rm.RewardModelState, pool: regret_sf.SFSegments,
           train: tuple[Array, Array, Array], valid: tuple[Array, Array, Array], *,
           rm_model: rm.RewardModel, sf_config: regret_sf.RegretSFConfig, num_steps: int,
           batch_size: int, eval_every: int) -> tuple[regret_sf.RegretSFState, dict]:
    """w on frozen φ (the r̂ model's last hidden layer), ψ values in the pool ``[N, 2, Π, d]``.

    ``num_steps`` updates in one scan; every ``eval_every`` the validation BT
    loss is computed and the best w is kept (early stopping).
    """
    phi = nets.reward_model_features(rm_model, rm_state)
    learner = regret_sf.make(sf_config, phi)
    regret_fn = regret_sf.make_regret_fn(sf_config, phi)
    key_init, key_steps = jax.random.split(key)
    first, second, label = train
    take = lambda idx: regret_sf.pair_batch(pool, first[idx], second[idx], label[idx])
    state = learner.init(key_init, take(jnp.arange(batch_size) % first.shape[0]))
    sub = lambda idx: regret_sf.SFSegments(*(None if x is None else x[idx] for x in pool))

    def valid_loss(state: regret_sf.RegretSFState) -> Array:
        v_first, v_second, v_label = valid
        logit = preference.logit(-regret_fn(state, sub(v_first)), -regret_fn(state, sub(v_second)),
                                 temperature=sf_config.temperature)
        return jnp.mean(preference.bt_loss(logit, v_label))

    num_evals = max(num_steps // eval_every, 1)
    inner = num_steps // num_evals

    def chunk(carry: tuple, i: Array) -> tuple[tuple, dict]:
        state, best, best_loss = carry

        def step(state: regret_sf.RegretSFState, j: Array) -> tuple:
            k = jax.random.fold_in(key_steps, i * inner + j)
            return learner.update(state, take(jax.random.randint(k, (batch_size,), 0,
                                                                 first.shape[0])))

        state, m = jax.lax.scan(step, state, jnp.arange(inner))
        loss = valid_loss(state)
        better = loss < best_loss
        best = jax.tree.map(lambda a, b: jnp.where(better, a, b), state.params, best)
        out = {"train_loss": m["loss"][-1], "train_accuracy": jnp.mean(m["accuracy"]),
               "valid_loss": loss,
               "negative_regret_fraction": m["negative_regret_fraction"][-1]}
        return (state, best, jnp.minimum(loss, best_loss)), out

    carry = (state, state.params, jnp.asarray(jnp.inf, jnp.float32))
    (state, best, _), metrics = jax.lax.scan(chunk, carry, jnp.arange(num_evals))
    return state.replace(params=best), metrics


@functools.partial(jax.jit, static_argnames=("sf_config", "fit_config", "phi_network",
                                             "psi_network", "num_steps", "batch_size",
                                             "refit_every"))
def _fit_learned(key: PRNGKey, rollouts: sf.LibraryRollouts, pool: regret_sf.SFSegments,
                 train: tuple[Array, Array, Array], *, sf_config: regret_sf.RegretSFConfig,
                 fit_config: sf.SFFitConfig, phi_network: nn.Module,
                 psi_network: nn.Module, num_steps: int, batch_size: int, refit_every: int
                 ) -> tuple[regret_sf.RegretSFState, dict]:
    """Learned φ, w and ψ in alternation (``successor_features.alternate``), ψ refitted once
    more at the end so that it matches the final φ. The pool carries states
    ``psi_in [N, 2, obs]``."""
    learner = regret_sf.make(sf_config, phi_network, psi_network=psi_network)
    refit = sf.make_refit(sf_config, fit_config, phi_network, psi_network)
    key_init, key_alt, key_final = jax.random.split(key, 3)
    first, second, label = train
    take = lambda idx: regret_sf.pair_batch(pool, first[idx], second[idx], label[idx])
    state = learner.init(key_init, take(jnp.arange(batch_size) % first.shape[0]))
    sample = lambda k: take(jax.random.randint(k, (batch_size,), 0, first.shape[0]))
    state, metrics = sf.alternate(learner.update, refit, state, key_alt, rollouts, sample,
                                  num_updates=num_steps, refit_every=refit_every)
    state, _ = refit(state, key_final, rollouts)
    return state, metrics


@functools.partial(jax.jit, static_argnames=("sf_config", "phi_from", "psi_network"))
def _pool_regrets(state: regret_sf.RegretSFState, pool: regret_sf.SFSegments,
                  phi_params: Params, *, sf_config: regret_sf.RegretSFConfig,
                  phi_from: Callable[[Params], nets.PhiFn],
                  psi_network: nn.Module | None) -> Array:
    """``[N]`` regrets of the pool with φ = ``phi_from(phi_params)`` (learned θ or r̂'s state)."""
    regret_fn = regret_sf.make_regret_fn(sf_config, phi_from(phi_params),
                                         psi_network=psi_network, chunk=64)
    return regret_fn(state, pool)


class _PhiFit(NamedTuple):
    """w (and φ) fitted with one kind of φ: what the common evaluation needs."""

    state: regret_sf.RegretSFState
    phi_from: Callable[[Params], nets.PhiFn]
    phi_params: Params
    psi_network: nn.Module
    psi_params: Params
    scores: np.ndarray  # [N] −regret of every pool segment
    metrics: dict[str, float]


Rows = Callable[[np.ndarray], tuple[Array, Array, Array]]


def _frozen_phi(config: LearnerAssumptionConfig, pool: regret_sf.SFSegments, rows: Rows,
                split: SeedSplit, rollouts: sf.LibraryRollouts, rm_model: rm.RewardModel,
                rm_state: rm.RewardModelState, key_psi: PRNGKey, key_w: PRNGKey) -> _PhiFit:
    """φ = r̂'s last hidden layer; ψ fitted once on the library; w by the BT loss."""
    phi_from = FrozenPhi(rm_model)
    phi_params = strip(rm_state)
    phi_lib = phi_on(phi_from, phi_params, jnp.asarray(rollouts.obs),
                     jnp.asarray(rollouts.action))
    psi_net = psi_network_for(config, rollouts.obs, int(phi_lib.shape[-1]))
    psi_params, psi_metrics = fit_library_psi(key_psi, sf_fit_config(config), psi_net, rollouts,
                                              phi_lib, discount=config.discount)
    # ψ values at s_0 and s_k of every segment: [N, 2, Π, d].
    pool = pool._replace(psi_in=jnp.moveaxis(psi_on(psi_net, psi_params, pool.psi_in), 0, -2))
    sf_cfg = regret_sf.RegretSFConfig(
        discount=config.discount, gpi_temperature=config.gpi_temperature,
        learning_rate=config.sf_learning_rate, l2=config.sf_l2)
    state, fit_metrics = _fit_w(key_w, phi_params, pool, rows(split.train), rows(split.valid),
                                rm_model=rm_model, sf_config=sf_cfg, num_steps=config.sf_steps,
                                batch_size=config.sf_batch_size,
                                eval_every=min(config.eval_every, config.sf_steps))
    scores = -np.asarray(_pool_regrets(state, pool, phi_params, sf_config=sf_cfg,
                                       phi_from=phi_from, psi_network=None))
    metrics = {
        "psi_loss": float(np.mean(np.asarray(psi_metrics["loss"])[-1])),
        "sf_valid_loss": float(np.min(np.asarray(fit_metrics["valid_loss"]))),
        "sf_train_accuracy": float(np.asarray(fit_metrics["train_accuracy"])[-1]),
        "negative_regret_fraction": float(
            np.asarray(fit_metrics["negative_regret_fraction"])[-1]),
    }
    return _PhiFit(state, phi_from, phi_params, psi_net, psi_params, scores, metrics)


def _learned_phi(config: LearnerAssumptionConfig, pool: regret_sf.SFSegments, rows: Rows,
                 split: SeedSplit, rollouts: sf.LibraryRollouts, key_w: PRNGKey) -> _PhiFit:
    """φ, w learned by the BT loss in alternation with ψ refits on the library."""
    phi_net = nets.default_phi_network(config.phi_width, tuple(config.phi_hidden))
    phi_from = LearnedPhi(phi_net)
    psi_net = psi_network_for(config, rollouts.obs, config.phi_width)
    check_psi_width(psi_net, rollouts.obs, config.phi_width)
    sf_cfg = regret_sf.RegretSFConfig(
        discount=config.discount, gpi_temperature=config.gpi_temperature,
        num_policies=int(rollouts.obs.shape[0]), learning_rate=config.sf_learning_rate,
        l2=config.sf_l2)
    jlib = sf.LibraryRollouts(*(jnp.asarray(x) for x in rollouts))
    state, fit_metrics = _fit_learned(
        key_w, jlib, pool, rows(split.train), sf_config=sf_cfg, fit_config=sf_fit_config(config),
        phi_network=phi_net, psi_network=psi_net, num_steps=config.sf_steps,
        batch_size=config.sf_batch_size, refit_every=config.refit_every)
    phi_params, psi_params = state.params["phi"], state.psi_params
    scores = -np.asarray(_pool_regrets(state, pool, phi_params, sf_config=sf_cfg,
                                       phi_from=phi_from, psi_network=psi_net))
    last = slice(-min(config.eval_every, config.sf_steps), None)
    metrics = {
        "psi_loss": float(np.nanmean(np.asarray(fit_metrics["psi_loss"]))),
        "sf_train_accuracy": float(np.mean(np.asarray(fit_metrics["accuracy"])[last])),
        "negative_regret_fraction": float(
            np.asarray(fit_metrics["negative_regret_fraction"])[-1]),
    }
    return _PhiFit(state, phi_from, phi_params, psi_net, psi_params, scores, metrics)


def fit_regret_sf(config: LearnerAssumptionConfig, data: TaskData, split: SeedSplit, label: str,
                  rm_model: rm.RewardModel, rm_state: rm.RewardModelState, seed: int, *,
                  rollouts: sf.LibraryRollouts, heldout: sf.LibraryRollouts) -> SFResult:
    """The regret-model r̂ = w·φ of one cell, with its ψ-fit quality.

    ``rm_model``/``rm_state``: the partial-return r̂ fitted on the same labels
    (φ = its last hidden layer when ``config.phi == "frozen"``). ``rollouts``:
    the library's, which ψ is fitted on; ``heldout``: other rollouts of Π,
    which the ψ-fit quality is measured on (:func:`psi_fit_quality`).
    """
    seg = data.segments
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    # The ψ-inputs are the states s_0, s_k [N, 2, obs]; frozen φ swaps in ψ's values there.
    pool = regret_sf.SFSegments(f32(seg.obs), f32(seg.action), f32(seg.mask),
                                f32(regret_sf.psi_inputs(seg)))
    rows = lambda r: (jnp.asarray(data.first[r]), jnp.asarray(data.second[r]),
                      jnp.asarray(data.labels[label][r]))
    key_psi, key_w = jax.random.split(named_key(config, data.name, seed, label, "regret_sf"))
    if config.phi == "frozen":
        fit = _frozen_phi(config, pool, rows, split, rollouts, rm_model, rm_state, key_psi, key_w)
    else:
        fit = _learned_phi(config, pool, rows, split, rollouts, key_w)
    metrics = {"library_size": float(rollouts.obs.shape[0]), **fit.metrics}
    w = fit.state.params["w"]
    # ψ-fit quality on held-out rollouts (other start states).
    phi_h = phi_on(fit.phi_from, fit.phi_params, jnp.asarray(heldout.obs),
                   jnp.asarray(heldout.action))
    quality = psi_fit_quality(
        psi_own(fit.psi_network, fit.psi_params, jnp.asarray(heldout.obs)),
        psi_own(fit.psi_network, fit.psi_params, jnp.asarray(heldout.next_obs)), phi_h,
        jnp.asarray(heldout.terminated), jnp.asarray(heldout.truncated),
        discount=config.discount, w=w)
    metrics.update({k: float(v) for k, v in quality.items()})
    # Standardise r̂ over the training segments' steps, as the reward models are.
    train_segs = split.train_segments
    values = np.asarray(phi_on(fit.phi_from, fit.phi_params, pool.obs, pool.action) @ w)
    values = values[train_segs]
    on = np.asarray(seg.mask)[train_segs] > 0
    mean, std = float(values[on].mean()), float(values[on].std()) + 1e-8
    params = {"phi": fit.phi_params, "w": w, "mean": jnp.float32(mean), "std": jnp.float32(std)}
    return SFResult(SFValue(fit.phi_from), params, fit.scores, metrics)


class _NormalizedPolicy(nn.Module):
    """The AWR policy: ``GaussianPolicy`` (state-dependent σ) on standardised observations."""

    action_dim: int
    hidden: tuple[int, ...]
    obs_mean: tuple[float, ...]
    obs_std: tuple[float, ...]

    @nn.compact
    def __call__(self, obs: Array) -> tuple[Array, Array]:
        shape = (1,) * (obs.ndim - 1) + (-1,)
        mean = jnp.asarray(self.obs_mean, obs.dtype).reshape(shape)
        std = jnp.asarray(self.obs_std, obs.dtype).reshape(shape)
        return GaussianPolicy(self.action_dim, tuple(self.hidden), nn.relu,
                              state_dependent_std=True)((obs - mean) / std)


@functools.partial(jax.jit, static_argnames=("awr_config", "network", "num_steps", "batch_size"))
def _fit_awr(key: PRNGKey, obs: Array, action: Array, mask: Array, advantage: Array,
             eligible: Array, *, awr_config: advantage_policy.AdvantagePolicyConfig,
             network: nn.Module, num_steps: int, batch_size: int) -> tuple[Params, dict]:
    """AWR on the ``eligible [N]`` segments of a pool ``[N, k, …]``, ``batch_size`` segments
    (uniform, with replacement) a step; Â ≡ 0 gives BC. Shapes do not depend on the seed's
    split, so every seed reuses one compilation."""
    learner = advantage_policy.make(awr_config, network)
    key_init, key_steps = jax.random.split(key)
    take = lambda idx: advantage_policy.AdvantageBatch(obs[idx], action[idx], mask[idx],
                                                       advantage[idx])
    p = eligible.astype(jnp.float32) / jnp.sum(eligible)
    draw = lambda k: jax.random.choice(k, obs.shape[0], (batch_size,), p=p)
    state = learner.init(key_init, take(draw(key_init)))

    def step(state: Any, i: Array) -> tuple:
        return learner.update(state, take(draw(jax.random.fold_in(key_steps, i))))

    state, metrics = jax.lax.scan(step, state, jnp.arange(num_steps))
    return state.params, jax.tree.map(lambda x: x[-1], metrics)


def fit_awr(config: LearnerAssumptionConfig, data: TaskData, split: SeedSplit,
            advantage: np.ndarray | None, key: PRNGKey) -> tuple[Policy, dict[str, float]]:
    """The Â-greedy policy on the training segments (``advantage [N, k]`` over the whole pool;
    None: BC). Observations are standardised by the pool's (label-free) statistics."""
    seg = data.segments
    obs = jnp.asarray(seg.obs, jnp.float32)
    action = jnp.asarray(seg.action, jnp.float32)
    mask = jnp.asarray(seg.mask, jnp.float32)
    adv = jnp.zeros(mask.shape, jnp.float32) if advantage is None else jnp.asarray(advantage)
    eligible = np.zeros(mask.shape[0], bool)
    eligible[split.train_segments] = True
    flat = np.asarray(seg.obs, np.float64).reshape(-1, obs.shape[-1])
    network = _NormalizedPolicy(int(action.shape[-1]), tuple(config.awr_hidden),
                                tuple(float(x) for x in flat.mean(0)),
                                tuple(float(x) for x in np.maximum(flat.std(0), 1e-3)))
    awr_cfg = advantage_policy.AdvantagePolicyConfig(beta=config.awr_beta,
                                                     learning_rate=config.awr_learning_rate)
    params, metrics = _fit_awr(key, obs, action, mask, adv, jnp.asarray(eligible),
                               awr_config=awr_cfg, network=network, num_steps=config.awr_steps,
                               batch_size=config.awr_batch_size)
    return Policy(network.apply, params), {f"awr_{k}": float(v) for k, v in metrics.items()}


def train_ppo(config: LearnerAssumptionConfig, data: TaskData, value_fn: Callable[..., Array],
              params: Params, seed: int, name: str,
              reference: Policy | None = None) -> tuple[PolicyFn, dict[str, float]]:
    """PPO from scratch on a learned reward; returns its deterministic policy and metrics."""
    from prefrl.loops import ppo as ppo_loop
    from prefrl.rollout import BatchedEnv

    spec = data.spec
    train_config = ppo_loop.TrainConfig(
        task=spec.name, total_steps=config.ppo_steps, num_envs=config.ppo_envs,
        rollout_steps=config.ppo_rollout_steps, seed=config.seed * 1000 + seed, eval_every=0,
        eval_episodes=1, checkpoint_every=0, snapshots=(), out_dir=None, resume=False,
        progress=config.progress)
    ppo_config = ppo.PPOConfig(num_epochs=config.ppo_epochs,
                               num_minibatches=config.ppo_minibatches,
                               discount=config.discount, kl_ref_coef=config.kl_ref_coef)
    ref = None if reference is None else (reference.params, reference.apply)
    result = ppo_loop.train(
        train_config, ppo_config,
        env_factory=lambda n, s: BatchedEnv(spec, num_envs=n, seed=s, dtype=np.float32),
        task_header=spec.to_header(), target_speed=spec.params_dict.get("target_speed"),
        reward_fn=ppo_reward(value_fn), reward_params=params, reward_name=f"learned:{name}",
        reference=ref)
    apply = ppo.make_policy_apply(ppo_config, spec.act_dim)
    policy = policy_fn(Policy(apply, ppo.policy_bundle(result.state)), deterministic=True)
    last = result.history[-1] if result.history else {}
    return policy, {"ppo_env_steps": float(result.env_steps), "ppo_wall_s": result.wall_s,
                    "ppo_ref_kl": float(last.get("ref_kl", float("nan")))}


__all__ = [
    "SFResult",
    "fit_awr",
    "fit_regret_sf",
    "fit_rm",
    "phi_on",
    "rm_config",
    "rm_scores",
    "train_ppo",
]
