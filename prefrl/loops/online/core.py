"""The online core: one state and one round, shared by the CPU and MJX backends.

Christiano et al. 2017 (docs/design.md §4b). A round is three steps over one
:class:`OnlineState`:

1. **select** (jitted): ``oversample × n`` uniform candidate pairs from the
   segment pool, the ``n`` best under the registered query rule kept
   (:data:`prefrl.data.queries.ACQUISITIONS`; B-Pref's oversample-then-select).
2. **label**: a :class:`Labeller` — scripted oracles traced inside the same
   compiled program (:func:`scripted_labeller`), or host code (a Monte-Carlo
   oracle stepping the C engine, a dataset, a person) between two jitted calls.
3. **add → refit → standardise** (jitted): the labels join the label buffer
   (every ``1/valid_fraction``-th held out for validation), the reward
   ensemble is refitted on every training label so far (warm start; round 0:
   ``initial_fit_steps`` in all), and r̂ is standardised on the newest
   rollout's state-actions so the policy always sees a unit-scale reward.
   A reward model with a snapshot library (``reward_learner="regret_sf"``)
   first stores the newest rollout as a snapshot and refits its ψ heads
   (:mod:`prefrl.learners.reward_sf`).

The segment pool and the label buffer are :func:`prefrl.data.buffers.make_ring_buffer`
states. Every rollout is cut on one fixed grid (:func:`prefrl.data.segments.grid_segments`:
starts ``0, stride, …`` of each column, windows that cross an episode end
masked after it), on both backends, so shapes never change and a round
compiles once. The pool keeps, per segment, the physics state ``qpos``/``qvel``
of its first and last step (s_0 and s_{k−1}; s_k is one step from s_{k−1}),
which a Monte-Carlo oracle and video rendering need (observations lack rootx).

The CPU backend (:mod:`prefrl.loops.online.cpu`) calls :func:`make_core`'s
functions one jit at a time around C-engine rollouts; the MJX backend
(:mod:`prefrl.loops.online.mjx`) calls :meth:`Core.traced_round` inside its
compiled round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from prefrl import evaluation, oracles
from prefrl.data import queries
from prefrl.data.buffers import RingState, filled, make_ring_buffer
from prefrl.data.segments import grid_segments
from prefrl.learners import reward_model as rm
from prefrl.learners import reward_sf
from prefrl.loops import fit as fit_loop
from prefrl.loops.active import pool_preferences
from prefrl.loops.online import registry
from prefrl.loops.online.config import OnlineConfig
from prefrl.loops.online.items import LabelItem, PoolItem, label_items, pair_batch, pool_items
from prefrl.types import Trajectory

Array = jax.Array
PRNGKey = jax.Array
Metrics = dict[str, Array]

FIT_METRICS = ("fit_train_loss", "fit_train_accuracy", "valid_loss", "valid_accuracy",
               "reward_pearson", "critic_offset_std", "fit_nonfinite")


# --------------------------------------------------------------------------- the state

@struct.dataclass
class OnlineState:
    """Everything an online run carries between rounds (a pytree; vmappable over runs).

    ``policy``: the policy learner's state (the MJX backend: with its
    environments). ``reward``: the reward ensemble, standardised (no optimiser:
    each refit starts Adam afresh from the warm parameters). ``fitted``: a fit
    has happened. ``value_scale``: σ of the r̂ the policy's critic learned,
    when the known segment terms were last computed. ``key``: the rounds' keys
    are ``fold_in(key, round)``.
    """

    policy: Any
    reward: rm.RewardModelState
    pool: RingState
    labels: RingState
    fitted: Array  # bool []
    value_scale: Array  # float32 []
    key: PRNGKey
    inputs: Any = None  # per-run array inputs (MJX: learning rates, β), vmappable
    library: Any = None  # RingState of reward_sf.Snapshot (reward_learner 'regret_sf'), or None


# --------------------------------------------------------------------------- labellers

class Labeller(NamedTuple):
    """Where labels come from.

    ``label(key, pool, first [Q], second [Q]) -> Labels [Q]``: the training
    labels; ``heldout(key, pool, first, second) -> {oracle name: Labels}``: the
    rational oracles that score held-out accuracy. ``pool`` is a
    :class:`PoolItem` pool. ``traced``: both are traceable (they run inside the
    compiled round); otherwise the backend hands them NumPy arrays on the host
    (a host labeller gets only the round's ``n`` queries). ``cost() -> {name:
    number}`` (optional, host): running totals the round records log, e.g. a
    Monte-Carlo oracle's env steps; ``close()`` (optional) frees its resources.
    """

    label: Callable[..., oracles.Labels]
    heldout: Callable[..., dict[str, oracles.Labels]]
    traced: bool
    name: str = "scripted"
    cost: Callable[[], dict[str, Any]] | None = None
    close: Callable[[], None] | None = None


def scripted_labeller(oracle: oracles.OracleConfig,
                      value_fn: Callable[[Array], Array] | None = None,
                      critic_discount: float = 0.99, temperature: Array | None = None
                      ) -> Labeller:
    """The project's scripted oracles (:func:`prefrl.oracles.label_traced`), traceable.

    ``value_fn``: the expert's V_E for the regret oracle (also adds a rational
    regret oracle with γ = ``critic_discount`` to the held-out accuracy).
    ``temperature``: β as an array (runs that differ in β share one compile).
    """
    if oracle.model == "regret" and value_fn is None:
        raise ValueError("the regret oracle needs an expert critic: set expert "
                         "(--expert PATH to a PPO checkpoint trained on the true reward)")

    def label(key: PRNGKey, pool: Any, first: Array, second: Array) -> oracles.Labels:
        beta = temperature if oracle.temperature > 0 else None
        return oracles.label_traced(oracle, key, pool, first, second,
                                    value_fn if oracle.model == "regret" else None,
                                    temperature=beta)

    def heldout(key: PRNGKey, pool: Any, first: Array, second: Array
                ) -> dict[str, oracles.Labels]:
        out = {"partial_return": oracles.label_traced(
            oracles.OracleConfig(), jax.random.fold_in(key, 0), pool, first, second)}
        if value_fn is not None:
            out["regret"] = oracles.label_traced(
                oracles.OracleConfig(model="regret", discount=critic_discount),
                jax.random.fold_in(key, 1), pool, first, second, value_fn)
        return out

    return Labeller(label=label, heldout=heldout, traced=True)


# --------------------------------------------------------------------------- the core

class Sizes(NamedTuple):
    """Static sizes of a run: every buffer and query batch has a fixed shape."""

    pool_capacity: int
    label_capacity: int  # = the label budget
    max_round: int  # the most labels of one round: the padded query count
    num_candidates: int  # oversample × max_round
    segments_per_rollout: int


class Core(NamedTuple):
    """The round's pure functions for one run's settings (see :func:`make_core`)."""

    config: OnlineConfig
    fit_config: rm.RewardModelConfig
    model: rm.RewardModel
    learner: registry.OnlineRewardLearner
    sizes: Sizes
    counts: np.ndarray  # [R] labels per round (sum = the budget)
    init: Callable[..., OnlineState]
    observe: Callable[[OnlineState, Trajectory, Array], tuple[OnlineState, Array]]
    select: Callable[[OnlineState, Array, Array], tuple[Array, Array]]
    add: Callable[[OnlineState, LabelItem, Array], OnlineState]
    logit_offsets: Callable[[OnlineState], tuple[Array | None, Array]]
    refit: Callable[..., tuple[OnlineState, Metrics]]
    heldout_pairs: Callable[[PRNGKey, Array], tuple[Array, Array]]
    heldout_accuracy: Callable[..., Array]
    round_keys: Callable[[OnlineState, Array], tuple[PRNGKey, ...]]
    traced_round: Callable[..., tuple[OnlineState, Metrics]]


def sizes(config: OnlineConfig, counts: np.ndarray) -> Sizes:
    """The run's :class:`Sizes`; ``ValueError`` for settings no round can work with."""
    c = config
    per_rollout = ((c.rollout_steps - c.segment_length) // c.segment_stride + 1) * c.num_envs
    if per_rollout < 2:
        raise ValueError(f"a rollout gives {per_rollout} segment(s); a query needs 2 (raise "
                         "num_envs or rollout_steps, or lower segment_length)")
    if c.pool_capacity < per_rollout:
        raise ValueError(f"pool_capacity {c.pool_capacity} is smaller than one rollout's "
                         f"{per_rollout} segments; the pool needs at least that many")
    max_round = max(int(np.max(counts)), 1)
    return Sizes(c.pool_capacity, c.label_budget, max_round,
                 max(2, c.oversample * max_round), per_rollout)


def make_core(config: OnlineConfig, reward_config: rm.RewardModelConfig, *,
              policy_discount: float, oracle_discount: float,
              critic: Callable[[Any, Array], Array] | None = None,
              counts: np.ndarray | None = None,
              policy_score: Callable[..., Array] | None = None) -> Core:
    """The online core's functions for these settings.

    ``critic(policy_state, obs) -> V``: the policy learner's value (needed by a
    reward learner with a known segment term). ``counts``: labels per round
    (default: the config's schedule). ``policy_score(policy_state, obs, action,
    mask) -> [N]``: the policy's own segment score, which held-out accuracy
    reads when the reward learner fits nothing (``none``; CPL's Σ α log π).
    """
    c = config
    learner = registry.reward_learner(c.reward_learner)
    fit_config = dataclasses.replace(
        learner.configure(reward_config, policy_discount, oracle_discount), normalize=False)
    model = rm.model(fit_config)
    reward_learner = rm.make(fit_config, model.network)
    counts = c.schedule_counts() if counts is None else np.asarray(counts)
    sz = sizes(c, counts)
    pool_buffer = make_ring_buffer(sz.pool_capacity)
    label_buffer = make_ring_buffer(sz.label_capacity)
    every = int(round(1 / c.valid_fraction)) if c.valid_fraction > 0 else 0
    library_size = int(fit_config.library_size)
    library_buffer = make_ring_buffer(library_size) if library_size else None
    repeats = -(-c.initial_fit_steps // fit_config.num_steps)
    k = c.segment_length

    def init(key: PRNGKey, policy_state: Any, obs_dim: int, act_dim: int, nq: int, nv: int
             ) -> OnlineState:
        """A fresh state: the reward ensemble initialised from ``key``, empty buffers."""
        rm_key, loop_key = jax.random.split(key)
        z = lambda *shape: jnp.zeros(shape, jnp.float32)
        pool_example = PoolItem(obs=z(k, obs_dim), action=z(k, act_dim), reward=z(k),
                                next_obs=z(k, obs_dim), mask=z(k), qpos=z(2, nq),
                                qvel=z(2, nv), tag=jnp.zeros((), jnp.int32))
        label_example = LabelItem(obs_1=z(k, obs_dim), action_1=z(k, act_dim), mask_1=z(k),
                                  obs_2=z(k, obs_dim), action_2=z(k, act_dim), mask_2=z(k),
                                  final_obs_1=z(obs_dim), final_obs_2=z(obs_dim), label=z(),
                                  keep=z(), split=z(), round=jnp.zeros((), jnp.int32),
                                  index_1=jnp.zeros((), jnp.int32),
                                  index_2=jnp.zeros((), jnp.int32))
        labels = label_buffer.init(label_example)
        reward = reward_learner.init(rm_key, pair_batch(labels.data)).replace(opt_state=None)
        library = None
        if library_buffer is not None:
            s = sz.segments_per_rollout
            library = library_buffer.init(reward_sf.Snapshot(
                obs=z(s, k, obs_dim), action=z(s, k, act_dim), mask=z(s, k),
                final_obs=z(s, obs_dim)))
        return OnlineState(policy=policy_state, reward=reward,
                           pool=pool_buffer.init(pool_example), labels=labels,
                           fitted=jnp.zeros((), bool), value_scale=jnp.zeros((), jnp.float32),
                           key=loop_key, library=library)

    def observe(state: OnlineState, traj: Trajectory, tag: Array) -> tuple[OnlineState, Array]:
        """Cut a rollout ``[T, B, …]`` into the pool; returns the rows written ``[N]``."""
        segs = grid_segments(traj, k, c.segment_stride)
        pool, rows = pool_buffer.add(state.pool, pool_items(segs, tag))
        return state.replace(pool=pool), rows

    def round_keys(state: OnlineState, round_idx: Array) -> tuple[PRNGKey, ...]:
        """``(select, label, fit, heldout)`` keys of a round."""
        return tuple(jax.random.split(jax.random.fold_in(state.key, round_idx), 4))

    def select(state: OnlineState, key: PRNGKey, n: Array) -> tuple[Array, Array]:
        """``max_round`` queries ``(first, second)`` into the pool, best first; use the first n.

        Only the first ``oversample × n`` of the uniform candidates compete;
        before the first fit the choice is uniform.
        """
        key_c, key_s = jax.random.split(key)
        first, second = queries.uniform_pairs(key_c, state.pool.count, sz.num_candidates)
        rule = queries.ACQUISITIONS[c.selection]
        if rule is None:
            values = jnp.zeros(sz.num_candidates)
        else:
            probs = pool_preferences(model, state.reward, state.pool.data, first, second)
            values = jnp.where(state.fitted, rule(probs), 0.0)
        chosen = queries.oversample_select(key_s, values, n * c.oversample, sz.max_round)
        return first[chosen], second[chosen]

    def add(state: OnlineState, items: LabelItem, n: Array) -> OnlineState:
        """The first ``n`` items into the label buffer; every 1/valid_fraction-th held out."""
        pos = state.labels.count + jnp.arange(items.label.shape[0])
        split = (pos % every == every - 1) if every else jnp.zeros(pos.shape, bool)
        labels, _ = label_buffer.add(state.labels,
                                     items.replace(split=split.astype(jnp.float32)), n)
        return state.replace(labels=labels)

    def term_context(state: OnlineState) -> registry.TermContext:
        bound = None if critic is None else (lambda obs: critic(state.policy, obs))
        return registry.TermContext(bound, policy_discount, k)

    def weights(labels: RingState, part: int) -> Array:
        d = labels.data
        return (filled(labels) & (d.keep > 0) & (d.split == part)).astype(jnp.float32)

    def snapshot(state: OnlineState) -> OnlineState:
        """The newest rollout's segments (the current policy's) into the snapshot library.

        The first snapshot fills every slot, so GPI's maximum never reads an empty head;
        later ones replace the oldest (Π = the last ``library_size`` rounds' policies).
        """
        n = sz.segments_per_rollout
        rows = (state.pool.head - n + jnp.arange(n)) % sz.pool_capacity
        pool = state.pool.data
        snap = reward_sf.Snapshot(obs=pool.obs[rows], action=pool.action[rows],
                                  mask=pool.mask[rows], final_obs=pool.final_obs[rows])
        library, _ = library_buffer.add(state.library, jax.tree.map(lambda x: x[None], snap))
        first = library.count == 1
        data = jax.tree.map(lambda d: jnp.where(first, jnp.broadcast_to(d[:1], d.shape), d),
                            library.data)
        return state.replace(library=library.replace(data=data))

    def logit_offsets(state: OnlineState) -> tuple[Array | None, Array]:
        """``(offset [L] or None, value_scale)``: the known logit terms of the label buffer.

        In r̂'s raw (logit) units: σ·(term(σ¹) − term(σ²)), σ = the std of the r̂
        the policy's critic learned (its mean cancels: both segments have k
        steps); zero before the first fit, when the critic has seen no r̂.
        """
        if learner.segment_term is None:
            return None, state.value_scale
        data = state.labels.data
        value_scale = jnp.where(state.fitted, state.reward.reward_std, 0.0)
        ctx = term_context(state)
        term_1 = learner.segment_term(ctx, data.obs_1[:, 0], data.final_obs_1)
        term_2 = learner.segment_term(ctx, data.obs_2[:, 0], data.final_obs_2)
        return (value_scale * (term_1 - term_2)).astype(jnp.float32), value_scale

    def refit(state: OnlineState, key: PRNGKey, obs: Array, action: Array,
              true_reward: Array, learning_rate: Array | None = None
              ) -> tuple[OnlineState, Metrics]:
        """Warm-started fits on every training label, then r̂ standardised on ``obs``/``action``.

        ``obs [..., obs]``, ``action [..., act]``, ``true_reward [...]``: the newest
        rollout (the last only for the logged Pearson correlation of r̂ with r).
        """
        data = state.labels.data
        if not learner.fits:  # no reward model (reward_learner "none"): nothing to fit
            nan = jnp.float32(jnp.nan)
            metrics = {name: nan for name in FIT_METRICS}
            metrics["fit_nonfinite"] = jnp.float32(0)
            return state.replace(fitted=jnp.ones((), bool)), metrics
        offset, value_scale = logit_offsets(state)
        metrics = {"critic_offset_std": jnp.float32(jnp.nan)}
        if library_buffer is not None:  # ψ of every snapshot for the current φ, then the fit
            state = snapshot(state)
            params, sf_loss = reward_sf.refit_library(
                fit_config, model.network, state.reward.params, state.library.data,
                jax.random.fold_in(key, 1 << 20))
            state = state.replace(reward=state.reward.replace(params=params))
            metrics["successor_loss"] = jnp.mean(sf_loss)
        if offset is not None:
            train_rows = weights(state.labels, 0)
            count = jnp.maximum(jnp.sum(train_rows), 1.0)
            mean = jnp.sum(train_rows * offset) / count
            metrics["critic_offset_std"] = jnp.sqrt(
                jnp.sum(train_rows * (offset - mean) ** 2) / count)
        train = pair_batch(data, weights(state.labels, 0), offset)
        optimizer = rm.default_optimizer(fit_config, learning_rate)

        def one(i: Array, carry: tuple[Any, Array, Array, Array]) -> tuple[Any, ...]:
            fitted = fit_loop.fit(jax.random.fold_in(key, i), fit_config, train, None,
                                  optimizer=optimizer, network=model.network,
                                  init_params=carry[0])
            m = fitted.metrics
            bad = carry[3] + jnp.sum(m["skipped"]) + jnp.sum(
                ~jnp.isfinite(m["train_loss"])) + jnp.sum(~jnp.isfinite(m["grad_norm"]))
            return fitted.state.params, m["train_loss"][-1], m["train_accuracy"][-1], bad

        members = fit_config.ensemble_size
        zeros = jnp.zeros((members,), jnp.float32)
        num_fits = jnp.where(state.fitted, 1, repeats)
        params, loss, accuracy, bad = jax.lax.fori_loop(
            0, num_fits, one, (state.reward.params, zeros, zeros, jnp.float32(0)))
        reward = state.reward.replace(params=params,
                                      step=state.reward.step + num_fits * fit_config.num_steps)
        reward, raw = fit_loop.standardize_on_steps(model, reward, obs, action)
        valid = pair_batch(data, weights(state.labels, 1), offset)
        v = rm.evaluate(model, reward, valid)
        has_valid = jnp.sum(valid.weight) > 0
        metrics.update(
            fit_train_loss=jnp.mean(loss), fit_train_accuracy=jnp.mean(accuracy),
            valid_loss=jnp.where(has_valid, jnp.mean(v["loss"]), jnp.nan),
            valid_accuracy=jnp.where(has_valid, jnp.mean(v["accuracy"]), jnp.nan),
            reward_pearson=evaluation.pearson_array(raw.ravel(), true_reward.ravel()),
            fit_nonfinite=bad)
        return state.replace(reward=reward, fitted=jnp.ones((), bool),
                             value_scale=value_scale), metrics

    def heldout_pairs(key: PRNGKey, rows: Array) -> tuple[Array, Array]:
        """``heldout_queries`` uniform pairs among pool ``rows`` (the newest rollout's)."""
        first, second = queries.uniform_pairs(key, rows.shape[0], c.heldout_queries)
        return rows[first], rows[second]

    def heldout_accuracy(state: OnlineState, first: Array, second: Array,
                         label: Array) -> Array:
        """Accuracy of the learner's own segment score on held-out labels (NaN: none)."""
        pool = state.pool.data
        if not learner.fits:
            if policy_score is None:
                return jnp.float32(jnp.nan)
            score = policy_score(state.policy, pool.obs, pool.action, pool.mask)
            correct, total = evaluation.accuracy_sums(score[first], score[second], label)
            return jnp.where(total > 0, correct / jnp.maximum(total, 1.0), jnp.nan)
        score = rm.segment_scores(model, state.reward, pool.obs, pool.action, pool.mask,
                                  pool.final_obs)
        if learner.segment_term is not None:
            # The terms were in raw units × value_scale: rescaled to the new fit's units.
            term = learner.segment_term(term_context(state), pool.obs[:, 0], pool.final_obs)
            score = score + state.value_scale / state.reward.reward_std * term
        correct, total = evaluation.accuracy_sums(score[first], score[second], label)
        return jnp.where(total > 0, correct / jnp.maximum(total, 1.0), jnp.nan)

    def traced_round(state: OnlineState, labeller: Labeller, round_idx: Array, n: Array,
                     traj: Trajectory, rows: Array, learning_rate: Array | None = None
                     ) -> tuple[OnlineState, Metrics]:
        """Select → label → add → refit → held-out accuracy, all traced (a traced labeller).

        ``traj``: the newest rollout (r̂ is standardised on it); ``rows``: its pool rows.
        """
        k_sel, k_lab, k_fit, k_held = round_keys(state, round_idx)
        first, second = select(state, k_sel, n)
        labels = labeller.label(k_lab, state.pool.data, first, second)
        state = add(state, label_items(state.pool.data, first, second, labels, round_idx), n)
        state, metrics = refit(state, k_fit, traj.obs, traj.action, traj.reward, learning_rate)
        metrics["skipped"] = jnp.sum(jnp.where(jnp.arange(sz.max_round) < n,
                                               1.0 - labels.keep, 0.0))
        if c.heldout_queries:
            f, s = heldout_pairs(k_held, rows)
            for name, lab in labeller.heldout(k_held, state.pool.data, f, s).items():
                metrics[f"heldout_acc_{name}"] = heldout_accuracy(state, f, s, lab.label)
        return state, metrics

    return Core(config=c, fit_config=fit_config, model=model, learner=learner, sizes=sz,
                counts=counts, init=init, observe=observe, select=select, add=add,
                logit_offsets=logit_offsets, refit=refit,
                heldout_pairs=heldout_pairs, heldout_accuracy=heldout_accuracy,
                round_keys=round_keys, traced_round=traced_round)


__all__ = ["FIT_METRICS", "Core", "LabelItem", "Labeller", "OnlineState", "PoolItem", "Sizes",
           "label_items", "make_core", "pair_batch", "pool_items", "scripted_labeller", "sizes"]
