"""A small, exact tabular world for checking the preference models (docs/design.md §2).

A deterministic grid world: the agent moves up/right/down/left on an
``height × width`` grid (bumping into the border leaves it in place), every
step costs ``step_reward`` (−1) until it reaches the goal, and the goal is
absorbing with reward 0. Value iteration gives the exact V*, Q* and
A* = Q* − V*, so the regret score of a segment can be computed without
approximation and compared to its partial return.

This reproduces Knox et al. (2022, "Models of human preference for learning
reward functions", Fig. 1): two segments of equal length both cost −k, so the
partial-return model is indifferent (P = ½), but only one of them moves
toward the goal, so the regret model prefers it.

States are integers ``s = row * width + col``; actions are
``0 up, 1 right, 2 down, 3 left``.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3
_MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])


@dataclasses.dataclass(frozen=True)
class GridWorld:
    """A deterministic goal-reaching grid; ``reward[s, a]`` = −1 except at the goal."""

    height: int = 5
    width: int = 5
    goal: tuple[int, int] = (0, 4)
    step_reward: float = -1.0

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"grid must be at least 1x1, got {self.height}x{self.width}")
        r, c = self.goal
        if not (0 <= r < self.height and 0 <= c < self.width):
            raise ValueError(f"goal {self.goal} lies outside the {self.height}x{self.width} grid")

    @property
    def num_states(self) -> int:
        return self.height * self.width

    @property
    def num_actions(self) -> int:
        return 4

    @property
    def goal_state(self) -> int:
        return self.state(*self.goal)

    def state(self, row: int, col: int) -> int:
        return row * self.width + col

    def coords(self, s: int) -> tuple[int, int]:
        return divmod(int(s), self.width)

    def transitions(self) -> np.ndarray:
        """``[S, A]`` int: the next state (the goal is absorbing)."""
        nxt = np.zeros((self.num_states, 4), np.int32)
        for s in range(self.num_states):
            r, c = self.coords(s)
            for a, (dr, dc) in enumerate(_MOVES):
                rr = min(max(r + dr, 0), self.height - 1)
                cc = min(max(c + dc, 0), self.width - 1)
                nxt[s, a] = self.state(rr, cc)
        nxt[self.goal_state] = self.goal_state
        return nxt

    def rewards(self) -> np.ndarray:
        """``[S, A]`` float: ``step_reward`` everywhere except 0 at the absorbing goal."""
        rew = np.full((self.num_states, 4), self.step_reward, np.float32)
        rew[self.goal_state] = 0.0
        return rew


@functools.partial(jax.jit, static_argnames=("discount", "tol", "max_iters"))
def value_iteration(
    transitions: Array,
    rewards: Array,
    *,
    discount: float = 1.0,
    tol: float = 1e-6,
    max_iters: int = 10_000,
) -> tuple[Array, Array]:
    """Exact V* and Q* of a deterministic MDP by value iteration.

    ``Q(s, a) = r(s, a) + γ V(s'(s, a))``, ``V(s) = max_a Q(s, a)``, iterated
    from V = 0 until the largest change is below ``tol``. With γ = 1 it
    converges in at most S sweeps when every state reaches an absorbing
    zero-reward state (shortest paths).

    Args:
      transitions: ``[S, A]`` int next states.
      rewards: ``[S, A]`` rewards.

    Returns:
      ``(V [S], Q [S, A])``.
    """
    transitions = jnp.asarray(transitions)
    rewards = jnp.asarray(rewards, jnp.float32)
    chex.assert_equal_shape([transitions, rewards])

    def backup(v: Array) -> Array:
        return rewards + discount * v[transitions]

    def cond(carry: tuple[Array, Array, Array]) -> Array:
        _, delta, i = carry
        return (delta > tol) & (i < max_iters)

    def body(carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        v, _, i = carry
        v_new = backup(v).max(axis=1)
        return v_new, jnp.max(jnp.abs(v_new - v)), i + 1

    v0 = jnp.zeros(rewards.shape[0], jnp.float32)
    v, _, _ = jax.lax.while_loop(cond, body, (v0, jnp.asarray(jnp.inf, jnp.float32), 0))
    return v, backup(v)


def optimal_advantages(
    transitions: Array, rewards: Array, *, discount: float = 1.0
) -> tuple[Array, Array, Array]:
    """``(V* [S], Q* [S, A], A* [S, A] = Q* − V*)``."""
    v, q = value_iteration(transitions, rewards, discount=discount)
    return v, q, q - v[:, None]


@jax.jit
def rollout(transitions: Array, rewards: Array, start: int | Array, actions_t: Array):
    """Follow ``actions_t`` ``[k]`` from ``start`` in a deterministic MDP.

    Returns:
      ``(states [k + 1], rewards [k])``: s_0 … s_k and r_0 … r_{k−1}.
    """
    transitions = jnp.asarray(transitions)
    rewards = jnp.asarray(rewards)

    def step(s: Array, a: Array) -> tuple[Array, tuple[Array, Array]]:
        return transitions[s, a], (s, rewards[s, a])

    s_k, (states_t, rewards_t) = jax.lax.scan(step, jnp.asarray(start), jnp.asarray(actions_t))
    return jnp.concatenate([states_t, s_k[None]]), rewards_t


def shaped_rewards(
    transitions: Array, rewards: Array, potential: Array, *, discount: float = 1.0
) -> Array:
    """Potential-based shaping ``r'(s, a) = r(s, a) + γ Φ(s') − Φ(s)`` (Ng et al. 1999).

    Shaping leaves A* unchanged (V'* = V* − Φ up to a constant at the
    absorbing state), so the regret model is invariant to it while partial
    return changes by ``γ^k Φ(s_k) − Φ(s_0)``.
    """
    transitions = jnp.asarray(transitions)
    potential = jnp.asarray(potential, jnp.float32)
    rewards = jnp.asarray(rewards, jnp.float32)
    return rewards + discount * potential[transitions] - potential[:, None]
