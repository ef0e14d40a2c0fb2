"""The online loop's policy-learner interface (re-exported by ``registry``).

Its own module so that policy-learner modules (``greedy``, ``cpl``) and the
registry that lists them import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from prefrl.types import Trajectory

Array = jax.Array
PRNGKey = jax.Array
Metrics = dict[str, Array]


class PolicyLearner(NamedTuple):
    """How the online loop improves its policy (pure functions; ``update`` is jittable).

    - ``init(key) -> state``;
    - ``update(state, traj [T, B, …]) -> (state, metrics)``: learn from the
      newest rollout with the learned reward the state holds (``metrics`` may
      hold ``nonfinite``, ``value_loss``, ``proxy_reward``, ``true_reward``);
    - ``set_reward(state, reward_state) -> state``: give it the refitted r̂
      (parameters in the state, so a refit never recompiles ``update``);
    - ``behaviour(state)`` / ``greedy(state)``: ``(obs, key) -> action``
      functions for the C-engine rollouts and the evaluation;
    - ``critic(state, obs) -> V`` or None;
    - ``checkpoint_view(state)`` / ``restore(loaded, fresh)``: what a
      checkpoint stores (inputs such as the reward or π_ref parameters left
      out) and how a loaded view gets them back from a fresh state;
    - ``set_labels(state, labels)`` (optional): give it the label buffer
      (a :class:`~prefrl.data.buffers.RingState` of ``core.LabelItem``) after
      each round, for learners that learn from preferences directly (CPL);
    - ``segment_score(state, obs [N, k, obs], action [N, k, act], mask [N, k])
      -> [N]`` (optional): the policy's own segment score (CPL's Σ α log π),
      which held-out accuracy reads when no reward model is fitted.
    """

    init: Callable[[PRNGKey], Any]
    update: Callable[[Any, Trajectory], tuple[Any, Metrics]]
    set_reward: Callable[[Any, Any], Any]
    behaviour: Callable[[Any], Callable[..., Any]]
    greedy: Callable[[Any], Callable[..., Any]]
    critic: Callable[[Any, Array], Array] | None
    checkpoint_view: Callable[[Any], Any]
    restore: Callable[[Any, Any], Any]
    discount: float
    set_labels: Callable[[Any, Any], Any] | None = None
    segment_score: Callable[[Any, Array, Array, Array], Array] | None = None


__all__ = ["PolicyLearner"]
