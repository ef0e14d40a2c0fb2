"""PEBBLE's policy learner (Lee et al. 2021): SAC with its own replay, a pluggable
reward, and unsupervised pre-training by state entropy.

``make(config, obs_dim, action_dim, capacity=…, reward_fn=…) -> Learner(init, update)``.
``update(state, items)`` takes the transitions the behaviour policy just
collected (:class:`prefrl.learners.sac.Transition` ``[N, …]``): it adds them to
the replay ring buffer the state holds (:func:`prefrl.data.buffers.make_ring_buffer`)
and then makes ``N × updates_per_step`` SAC updates (:mod:`prefrl.learners.sac`)
on uniform replay batches, as one ``lax.scan``. The three phases follow the
number of transitions stored *before* the call:

1. **warm-up** (``< warmup_steps``; B-Pref's ``num_seed_steps``): no update.
   The behaviour policy is uniform random (the caller's; see
   :func:`in_warmup`).
2. **unsupervised pre-training** (``< warmup_steps + unsup_steps``): the
   reward of a replayed transition is the particle estimate of state entropy
   (Liu & Abbeel 2021, APT; PEBBLE §4.1)

       r_int(s) = log(c + ‖s − s^{(k)}‖₂) / σ_run

   with ``s^{(k)}`` the k-th nearest neighbour of ``s`` among *all* states
   stored so far (exact: the buffer's first ``warmup_steps + unsup_steps``
   rows, the only rows pre-training can have written; the state itself, at
   distance 0, is not its own neighbour) and ``σ_run`` the running standard
   deviation of ``log(c + ‖s − s^{(k)}‖)`` over every batch so far (B-Pref
   divides by the running std without centring). The reward is
   batch-level: it depends on the buffer, not on ``(s, a)`` alone, so it is
   computed here and handed to SAC's update as the batch's reward.
3. **the preference phase** (afterwards): the reward is the learned
   ``reward_fn(obs, action, next_obs, extras)`` with
   ``extras["reward_params"] = state.reward_params`` — a refit replaces the
   parameters without recompiling, and every stored transition is relabelled
   by the current r̂ (PEBBLE's relabelling, free here). Before the first
   preference-phase update the critics, their targets and their optimiser
   are re-initialised (``reset_critic``; B-Pref's ``reset_critic()`` after
   pre-training): Q learnt under r_int is not a value of r̂. With
   ``reset_actor`` the actor and α are re-initialised too, so pre-training
   only explores (measured on ``run``: an actor kept from pre-training learns
   the task reward more slowly; ``experiments/bench/pebble_diagnostic.py``).

The state is a pytree of arrays: ``jax.vmap(update)`` trains seeds at once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl.config import field
from prefrl.data.buffers import RingState, make_ring_buffer
from prefrl.learners import Learner, sac
from prefrl.learners.ppo import RewardFn, true_reward
from prefrl.learners.sac_networks import SACNetworks, init_critics, make_networks

Array = jax.Array
PRNGKey = jax.Array


@dataclasses.dataclass(frozen=True)
class PEBBLEConfig:
    """PEBBLE's settings: SAC's (Haarnoja et al. 2018) plus pre-training (B-Pref's defaults)."""

    warmup_steps: int = field(1_000, "uniform-random transitions before any update "
                              "(B-Pref: num_seed_steps)")
    unsup_steps: int = field(9_000, "transitions of unsupervised pre-training on the "
                             "state-entropy reward after the warm-up (0: none)")
    entropy_k: int = field(5, "k of the k-th-nearest-neighbour entropy estimate")
    entropy_c: float = field(1.0, "c in log(c + distance) (keeps the reward finite)")
    reset_critic: bool = field(True, "re-initialise the critics after pre-training")
    reset_actor: bool = field(False, "also re-initialise the actor and the temperature after "
                              "pre-training (needs reset_critic; pre-training then only "
                              "explores: its data stay in the replay)")
    updates_per_step: int = field(1, "SAC updates per collected transition")
    replay_capacity: int = field(0, "replay transitions kept (0: the whole run)")
    discount: float = field(0.99, "γ")
    tau: float = field(0.005, "Polyak step of the target critics")
    learning_rate: float = field(3e-4, "Adam step size of actor, critics and temperature")
    batch_size: int = field(256, "transitions per SAC update")
    hidden: tuple[int, ...] = field((256, 256), "ReLU MLP widths of the actor and each critic")
    init_temperature: float = field(1.0, "initial entropy temperature α")
    target_entropy: float | None = field(None, "SAC's target entropy H̄ (None: −|A|)")

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "unsup_steps", "replay_capacity"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"PEBBLE's {name} must be an integer >= 0, got {value!r}")
        if isinstance(self.entropy_k, bool) or int(self.entropy_k) != self.entropy_k or \
                self.entropy_k < 1:
            raise ValueError(f"PEBBLE's entropy_k must be an integer >= 1 (the k-th nearest "
                             f"neighbour; k = 0 is the state itself), got {self.entropy_k!r}")
        if not (math.isfinite(self.entropy_c) and self.entropy_c > 0):
            raise ValueError(f"PEBBLE's entropy_c must be finite and > 0 (log(c + distance) "
                             f"at distance 0), got {self.entropy_c}")
        if self.reset_actor and not self.reset_critic:
            raise ValueError("PEBBLE's reset_actor needs reset_critic (a fresh actor on a "
                             "critic of the pre-training reward would follow that reward)")
        if self.updates_per_step < 1:
            raise ValueError(f"PEBBLE's updates_per_step must be >= 1, got "
                             f"{self.updates_per_step}")
        if self.replay_capacity and self.replay_capacity < self.batch_size:
            raise ValueError(f"replay_capacity = {self.replay_capacity} is smaller than one "
                             f"batch (batch_size = {self.batch_size})")
        self.sac_config()  # SAC's own checks (γ, τ, learning rate, target entropy, …)

    @property
    def pretrain_steps(self) -> int:
        """Transitions before the preference phase: warm-up plus pre-training."""
        return int(self.warmup_steps + self.unsup_steps)

    def sac_config(self, capacity: int | None = None) -> sac.SACConfig:
        """The :class:`prefrl.learners.sac.SACConfig` these settings give."""
        size = capacity or self.replay_capacity or max(self.batch_size, 1)
        return sac.SACConfig(discount=self.discount, tau=self.tau,
                             learning_rate=self.learning_rate, batch_size=self.batch_size,
                             buffer_size=max(size, self.batch_size), hidden=self.hidden,
                             init_temperature=self.init_temperature,
                             target_entropy=self.target_entropy)


@struct.dataclass
class Moments:
    """Running mean and variance of a scalar stream (Chan et al.'s parallel update)."""

    mean: Array
    var: Array
    count: Array

    @classmethod
    def empty(cls) -> Moments:
        # B-Pref's TorchRunningMeanStd starts at count ε, var 1.
        return cls(jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32),
                   jnp.full((), 1e-4, jnp.float32))

    def update(self, x: Array) -> Moments:
        n = jnp.asarray(x.size, jnp.float32)
        mean, var = jnp.mean(x), jnp.var(x)
        delta, total = mean - self.mean, self.count + n
        new_mean = self.mean + delta * n / total
        m2 = self.var * self.count + var * n + delta ** 2 * self.count * n / total
        return Moments(new_mean, m2 / total, total)


@struct.dataclass
class PEBBLEState:
    """SAC's state, the replay buffer, the entropy reward's statistics, the learned reward."""

    sac: sac.SACState
    buffer: RingState  # of sac.Transition
    env_steps: Array  # int32 []: transitions stored so far
    entropy: Moments
    critic_reset: Array  # bool []: the critics were re-initialised after pre-training
    key: PRNGKey
    reward_params: Any = None  # the learned reward (reward_fn's extras["reward_params"])


def knn_distance(x: Array, reference: Array, valid: Array, k: int) -> Array:
    """``[N]``: each row of ``x [N, d]``'s distance to its k-th nearest valid reference row.

    ``reference [M, d]``, ``valid [M]`` bool. Rows of ``x`` are themselves in the
    reference set (replayed states), so the nearest one, at distance 0, is
    skipped: the (k+1)-th smallest distance is returned (B-Pref's
    ``kthvalue(k + 1)``). Needs at least ``k + 1`` valid rows.
    """
    chex.assert_rank([x, reference, valid], [2, 2, 1])
    sq = (jnp.sum(x ** 2, -1)[:, None] + jnp.sum(reference ** 2, -1)[None, :]
          - 2.0 * x @ reference.T)
    sq = jnp.where(valid[None, :], jnp.maximum(sq, 0.0), jnp.inf)
    smallest = -jax.lax.top_k(-sq, k + 1)[0]  # [N, k+1] ascending
    return jnp.sqrt(smallest[:, k])


def entropy_reward(x: Array, reference: Array, valid: Array, k: int, c: float) -> Array:
    """``log(c + ‖s − s^{(k)}‖)`` per row of ``x`` (unnormalised; :func:`knn_distance`)."""
    return jnp.log(c + knn_distance(x, reference, valid, k))


def in_warmup(config: PEBBLEConfig, state: PEBBLEState) -> bool:
    """Whether the behaviour policy should still act uniformly at random (host code)."""
    return int(state.env_steps) < config.warmup_steps


def make(config: PEBBLEConfig, obs_dim: int, action_dim: int, *, capacity: int,
         reward_fn: RewardFn | None = None,
         optimizer: optax.GradientTransformation | None = None,
         networks: SACNetworks | None = None) -> Learner[PEBBLEState, sac.Transition]:
    """Build PEBBLE's ``init`` and ``update``.

    Args:
      config: the settings.
      obs_dim, action_dim: sizes of the observation and the action box ``[-1, 1]^act``.
      capacity: replay rows (``config.replay_capacity`` when it is set, else this).
      reward_fn: the learned reward of the preference phase, called on replayed
        batches as SAC calls it; None: the stored (environment) reward.
      optimizer: an optax transform for SAC's actor, critics and temperature.
      networks: SAC's actor and critic modules.

    Returns:
      ``init(key, example=None) -> PEBBLEState``; ``update(state, items [N, …])
      -> (state, metrics)`` (see the module docstring).
    """
    if not isinstance(config, PEBBLEConfig):
        raise TypeError(f"pebble.make expects a PEBBLEConfig, got {type(config).__name__}")
    capacity = int(config.replay_capacity or capacity)
    if capacity < config.batch_size:
        raise ValueError(f"the replay buffer ({capacity} transitions) is smaller than one "
                         f"batch (batch_size = {config.batch_size})")
    sac_config = config.sac_config(capacity)
    nets = make_networks(action_dim, config.hidden) if networks is None else networks
    opt = sac.default_optimizer(sac_config) if optimizer is None else optimizer
    core = sac.make(sac_config, obs_dim, action_dim, optimizer=opt, networks=nets)
    ring = make_ring_buffer(capacity)
    learned = true_reward if reward_fn is None else reward_fn
    # Pre-training writes only the buffer's first rows: its k-NN reference set.
    reference_rows = min(capacity, max(config.pretrain_steps, config.entropy_k + 1))
    pretrains = config.unsup_steps > 0

    def example() -> sac.Transition:
        z = lambda *s: jnp.zeros(s, jnp.float32)  # noqa: E731
        return sac.Transition(z(obs_dim), z(action_dim), z(), z(obs_dim), jnp.zeros((), bool))

    def init(key: PRNGKey, items: sac.Transition | None = None) -> PEBBLEState:
        """A fresh state; ``items`` (optional) checks the sizes only."""
        if items is not None and (items.obs.shape[-1] != obs_dim
                                  or items.action.shape[-1] != action_dim):
            raise ValueError(f"example transitions have obs/action sizes "
                             f"{items.obs.shape[-1]}/{items.action.shape[-1]}; PEBBLE was made "
                             f"for {obs_dim}/{action_dim}")
        sac_key, key = jax.random.split(key)
        return PEBBLEState(sac=core.init(sac_key), buffer=ring.init(example()),
                           env_steps=jnp.zeros((), jnp.int32), entropy=Moments.empty(),
                           critic_reset=jnp.zeros((), bool), key=key)

    def reset_critics(state: PEBBLEState, key: PRNGKey) -> PEBBLEState:
        if config.reset_actor:  # every network, optimiser and α fresh; the step count kept
            s = core.init(key).replace(step=state.sac.step, key=state.sac.key,
                                       reward_params=state.sac.reward_params)
        else:
            fresh = init_critics(nets.critic, key, obs_dim, action_dim)
            s = state.sac.replace(critic_params=fresh, target_critic_params=fresh,
                                  critic_opt_state=opt.init(fresh))
        return state.replace(sac=s, critic_reset=jnp.ones((), bool))

    def intrinsic(buffer: RingState, moments: Moments, batch: sac.Transition
                  ) -> tuple[Array, Moments]:
        reference = buffer.data.obs[:reference_rows]
        valid = jnp.arange(reference_rows) < buffer.count
        raw = entropy_reward(batch.obs, reference, valid, config.entropy_k, config.entropy_c)
        moments = moments.update(raw)
        return raw / jnp.sqrt(moments.var + 1e-8), moments

    def learn(state: PEBBLEState, pretraining: Array, num: int) -> tuple[PEBBLEState, Any]:
        # The buffer, key and r̂ are constants of the scan (closed over, not carried, so the
        # replay is never copied per update); the carry is SAC's state and the entropy moments.
        buffer = state.buffer

        def one(carry: tuple[sac.SACState, Moments], j: Array) -> tuple[Any, dict[str, Array]]:
            sac_state, moments = carry
            batch = ring.sample(buffer, jax.random.fold_in(state.key, j), config.batch_size)
            extras = {"reward": batch.reward, "terminated": batch.terminated,
                      "reward_params": state.reward_params}

            def preference(m: Moments) -> tuple[Array, Moments]:
                return learned(batch.obs, batch.action, batch.next_obs, extras), m

            if pretrains:  # the k-NN search only runs in pre-training (a cond, not a select)
                reward, moments = jax.lax.cond(
                    pretraining, lambda m: intrinsic(buffer, m, batch), preference, moments)
            else:
                reward, moments = preference(moments)
            chex.assert_equal_shape([reward, batch.reward])
            sac_state, metrics = core.update(sac_state, batch._replace(
                reward=jax.lax.stop_gradient(reward).astype(jnp.float32)))
            metrics["true_reward"] = jnp.mean(batch.reward)
            return (sac_state, moments), metrics

        (sac_state, moments), metrics = jax.lax.scan(one, (state.sac, state.entropy),
                                                     jnp.arange(num))
        nonfinite = jnp.any(metrics.pop("nonfinite"))
        return state.replace(sac=sac_state, entropy=moments), {
            **jax.tree.map(jnp.mean, metrics), "nonfinite": nonfinite}

    def update(state: PEBBLEState, items: sac.Transition) -> tuple[PEBBLEState, dict[str, Array]]:
        chex.assert_rank([items.obs, items.action, items.reward, items.terminated],
                         [2, 2, 1, 1])
        if items.obs.shape[-1] != obs_dim or items.action.shape[-1] != action_dim:
            raise ValueError(f"transitions have obs/action sizes {items.obs.shape[-1]}/"
                             f"{items.action.shape[-1]}; PEBBLE was made for "
                             f"{obs_dim}/{action_dim}")
        n = items.obs.shape[0]
        if n > capacity:
            raise ValueError(f"{n} transitions do not fit the replay buffer ({capacity})")
        before = state.env_steps
        buffer, _ = ring.add(state.buffer, items)
        key, reset_key, learn_key = jax.random.split(state.key, 3)
        state = state.replace(buffer=buffer, env_steps=before + n, key=learn_key)
        pretraining = before < config.pretrain_steps
        if pretrains and config.reset_critic:
            due = jnp.logical_and(~pretraining, ~state.critic_reset)
            state = jax.lax.cond(due, lambda s: reset_critics(s, reset_key), lambda s: s, state)
        num = n * config.updates_per_step
        # The warm-up makes no update (under vmap the cond is a select: one program).
        shapes = jax.eval_shape(lambda s: learn(s, pretraining, num)[1], state)

        def skip(s: PEBBLEState) -> tuple[PEBBLEState, dict[str, Array]]:
            return s, {name: jnp.zeros(m.shape, bool) if name == "nonfinite"
                       else jnp.full(m.shape, jnp.nan, m.dtype) for name, m in shapes.items()}

        state, metrics = jax.lax.cond(before < config.warmup_steps, skip,
                                      lambda s: learn(s, pretraining, num), state)
        metrics.update(pretraining=pretraining.astype(jnp.float32),
                       entropy_std=jnp.sqrt(state.entropy.var),
                       buffer_size=state.buffer.count.astype(jnp.float32))
        return state.replace(key=key), metrics

    return Learner(init=init, update=update)


def policy(config: PEBBLEConfig, action_dim: int, state: PEBBLEState,
           networks: SACNetworks | None = None) -> Any:
    """The actor as a :class:`prefrl.policies.Policy`."""
    return sac.policy(config.sac_config(), action_dim, state.sac, networks)


__all__ = ["Moments", "PEBBLEConfig", "PEBBLEState", "entropy_reward", "in_warmup",
           "knn_distance", "make", "policy"]
