"""Policy learner ``advantage_greedy``: Â used greedily online (Knox et al. 2023).

With ``reward_learner="advantage"`` each refit fits Â by the partial-return
loss with the oracle's γ (Â ≈ A^{π_E} + c on regret labels, docs/design.md
§4b); this learner never uses Â as a reward. Each update stores the rollout's
state–actions in a replay buffer of the newest ``replay_rollouts`` rollouts and
takes ``steps`` gradient steps of :mod:`prefrl.learners.advantage_greedy`
(an actor climbing the standardised Â ensemble at its own action, BC on the
buffer's actions), each on ``batch_size`` pairs sampled from the buffer.
Rollouts sample the tanh-Gaussian; evaluation takes its mode. Â's arrays
travel in the state (``actor.advantage_params``): a refit never recompiles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from prefrl.data.buffers import RingState, make_ring_buffer
from prefrl.learners import advantage_greedy as ag
from prefrl.learners import reward_model as rm
from prefrl.loops.online.learner_types import PolicyLearner
from prefrl.policies import Policy, policy_fn
from prefrl.types import Trajectory

Array = jax.Array
PRNGKey = jax.Array


@struct.dataclass
class GreedyState:
    """The actor (with Â's parameters), its replay buffer of ``{obs, action}`` and a key."""

    actor: ag.AdvantageGreedyState
    replay: RingState
    key: PRNGKey


def member_advantages(model: rm.RewardModel) -> ag.MemberAdvantage:
    """``(RewardModelState, obs [N, obs], action [N, act]) -> [M, N]``: each member's Â,
    standardised as the loop standardises r̂ (``(f_j − mean) / std``)."""
    def a_hat(params: rm.RewardModelState, obs: Array, action: Array) -> Array:
        out = rm.member_outputs(model, params, obs, action)
        return (out - params.reward_mean) / params.reward_std
    return a_hat


def make(*, config: Any, obs_dim: int, act_dim: int, reward_model: rm.RewardModel,
         policy_config: ag.AdvantageGreedyConfig | None = None, **_: Any) -> PolicyLearner:
    """The registered ``advantage_greedy`` policy learner (see the module docstring)."""
    pc = ag.AdvantageGreedyConfig() if policy_config is None else policy_config
    network = ag.default_network(act_dim, pc.hidden, pc.init_log_std)
    a_hat = member_advantages(reward_model)
    learner = ag.make(pc, network, a_hat=a_hat)
    replay = make_ring_buffer(pc.replay_rollouts * config.steps_per_update)

    def init(key: PRNGKey) -> GreedyState:
        k_actor, k_loop = jax.random.split(key)
        example = ag.StepBatch(jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim)), jnp.ones((1,)))
        items = {"obs": jnp.zeros((obs_dim,), jnp.float32),
                 "action": jnp.zeros((act_dim,), jnp.float32)}
        return GreedyState(actor=learner.init(k_actor, example), replay=replay.init(items),
                           key=k_loop)

    def update(state: GreedyState, traj: Trajectory) -> tuple[GreedyState, dict[str, Array]]:
        """``traj [T, B, …]`` into the buffer, then ``steps`` actor steps on buffer samples."""
        obs = traj.obs.reshape(-1, obs_dim).astype(jnp.float32)
        action = traj.action.reshape(-1, act_dim).astype(jnp.float32)
        buffer, _ = replay.add(state.replay, {"obs": obs, "action": action})
        key, k_steps = jax.random.split(state.key)

        def step(actor: ag.AdvantageGreedyState, k: PRNGKey) -> tuple[Any, dict[str, Array]]:
            batch = replay.sample(buffer, k, pc.batch_size)
            return learner.update(actor, ag.StepBatch(batch["obs"], batch["action"],
                                                      jnp.ones((pc.batch_size,))))

        actor, metrics = jax.lax.scan(step, state.actor, jax.random.split(k_steps, pc.steps))
        proxy = jnp.mean(ag.pessimistic(a_hat(actor.advantage_params, obs, action), 0.0))
        out = {k: metrics[k][-1] for k in ("loss", "advantage_gain", "bc_nll", "log_std")}
        out.update(proxy_reward=proxy, true_reward=jnp.mean(traj.reward),
                   nonfinite=~jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in
                                                   jax.tree.leaves(actor.params)])))
        return GreedyState(actor=actor, replay=buffer, key=key), out

    def act(state: GreedyState, deterministic: bool) -> Callable[..., Any]:
        return policy_fn(Policy(network.apply, state.actor.params), deterministic=deterministic)

    def set_reward(state: GreedyState, reward: rm.RewardModelState) -> GreedyState:
        return state.replace(actor=state.actor.replace(
            advantage_params=reward.replace(opt_state=None)))

    return PolicyLearner(
        init=init, update=update, set_reward=set_reward,
        behaviour=lambda s: act(s, False), greedy=lambda s: act(s, True), critic=None,
        checkpoint_view=lambda s: s.replace(actor=s.actor.replace(advantage_params=None)),
        restore=lambda loaded, fresh: loaded,
        discount=0.0)  # greedy: no return beyond the step is optimised


__all__ = ["GreedyState", "make", "member_advantages"]
