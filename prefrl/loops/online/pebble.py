"""Policy learner ``pebble``: PEBBLE (Lee et al. 2021) in the online core.

SAC on the learned reward r̂ with its own replay buffer
(:mod:`prefrl.learners.pebble`). Each policy update stores the newest rollout
``[T, B]`` (time-major) in the replay and makes ``T·B·updates_per_step`` SAC
updates: the policy acts ``T`` steps between learning phases (Spinning Up's
``update_every``; with B = 4 and T = 50, 200 transitions, then 200 updates).

The run's phases: ``warmup_steps`` uniform-random transitions; then
``unsup_steps`` of unsupervised pre-training on the state-entropy reward; then
the preference phase on r̂, whose first labelling round the loop holds at the
end of pre-training (``OnlineConfig.label_from_step``, which defaults to it for
this learner), on the segments of the newest rollouts — the pool, a FIFO of
the replay's recent data (B-Pref samples queries from recent episodes).
r̂'s parameters travel in the state: a refit relabels the whole replay for
the next update without recompiling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from prefrl.learners import pebble, sac
from prefrl.learners import reward_model as rm
from prefrl.loops.online.learner_types import PolicyLearner
from prefrl.policies import Policy, policy_fn, random_policy
from prefrl.types import Trajectory

Array = jax.Array
PRNGKey = jax.Array


def replay_capacity(config: Any, pc: pebble.PEBBLEConfig) -> int:
    """Replay rows: ``pc.replay_capacity``, else every transition of the run."""
    return int(pc.replay_capacity or config.num_updates * config.steps_per_update)


def make(*, config: Any, obs_dim: int, act_dim: int, reward_model: rm.RewardModel,
         policy_config: pebble.PEBBLEConfig | None = None, task_reward: bool = False,
         **_: Any) -> PolicyLearner:
    """The registered ``pebble`` policy learner (see the module docstring).

    ``task_reward``: SAC learns from the environment's stored reward instead of r̂
    (labels are still gathered and fitted): the learner's ceiling with every other
    part of the run unchanged, a diagnostic (``experiments/bench/pebble_diagnostic.py``).
    """
    pc = pebble.PEBBLEConfig() if policy_config is None else policy_config
    learner = pebble.make(pc, obs_dim, act_dim, capacity=replay_capacity(config, pc),
                          reward_fn=None if task_reward else rm.PPOReward(reward_model))
    actor = sac.make_networks(act_dim, pc.hidden).actor
    explore = random_policy(act_dim)

    def update(state: pebble.PEBBLEState, traj: Trajectory
               ) -> tuple[pebble.PEBBLEState, dict[str, Array]]:
        flat = lambda x, *tail: x.reshape(-1, *tail).astype(jnp.float32)  # noqa: E731
        items = sac.Transition(flat(traj.obs, obs_dim), flat(traj.action, act_dim),
                               flat(traj.reward), flat(traj.next_obs, obs_dim),
                               traj.terminated.reshape(-1))
        state, metrics = learner.update(state, items)
        metrics["true_reward"] = jnp.mean(traj.reward)
        metrics["proxy_reward"] = metrics.pop("learning_reward")
        return state, metrics

    def act(state: pebble.PEBBLEState, deterministic: bool) -> Callable[..., Any]:
        if not deterministic and pebble.in_warmup(pc, state):
            return explore
        return policy_fn(Policy(actor.apply, state.sac.actor_params),
                         deterministic=deterministic)

    return PolicyLearner(
        init=lambda key: learner.init(key), update=update,
        set_reward=lambda s, r: s.replace(reward_params=r.replace(opt_state=None)),
        behaviour=lambda s: act(s, False), greedy=lambda s: act(s, True), critic=None,
        checkpoint_view=lambda s: s.replace(reward_params=None),
        restore=lambda loaded, fresh: loaded.replace(reward_params=fresh.reward_params),
        discount=float(pc.discount))


def label_from_step(policy_config: pebble.PEBBLEConfig | None) -> int:
    """Env steps before PEBBLE's first labelling round: its warm-up and pre-training."""
    pc = pebble.PEBBLEConfig() if policy_config is None else policy_config
    return pc.pretrain_steps


__all__ = ["label_from_step", "make", "replay_capacity"]
