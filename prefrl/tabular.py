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

For the regret learner via successor features (``prefrl.learners.regret_sf``)
there are also small random deterministic MDPs (:func:`random_mdp`), the list
of all deterministic policies, one-hot features, exact successor features by
the linear solve ``(I − γ P_π) ψ = Φ_π`` (:func:`successor_features`) and
library rollouts with time-limit truncation (:func:`policy_rollouts`).
Value iteration keeps float64 when given float64 rewards under x64.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

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
    rewards = jnp.asarray(rewards)
    # float32 unless float64 rewards arrive under x64 (exact known-answer tests).
    dtype = jnp.result_type(rewards.dtype, jnp.float32)
    rewards = rewards.astype(dtype)
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

    v0 = jnp.zeros(rewards.shape[0], dtype)
    v, _, _ = jax.lax.while_loop(cond, body, (v0, jnp.asarray(jnp.inf, dtype), 0))
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


# --------------------------------------------------------------------------- #
# Small random MDPs and exact successor features (Knox et al. 2022, §SF)
# --------------------------------------------------------------------------- #


def random_mdp(seed: int, num_states: int, num_actions: int) -> tuple[np.ndarray, np.ndarray]:
    """A random *deterministic* MDP: ``(transitions [S, A] int, rewards [S, A] float64)``.

    Next states are uniform over all states, rewards uniform in [−1, 1).
    Deterministic, so the regret of a segment is ``−Σ_t γ^t A*(s_t, a_t)``
    exactly (Knox et al. 2022) and every segment is a realised path.
    """
    if num_states < 1 or num_actions < 1:
        raise ValueError(f"need S, A >= 1, got S={num_states}, A={num_actions}")
    rng = np.random.default_rng(seed)
    transitions = rng.integers(0, num_states, (num_states, num_actions)).astype(np.int32)
    rewards = rng.uniform(-1.0, 1.0, (num_states, num_actions))
    return transitions, rewards


def deterministic_policies(num_states: int, num_actions: int) -> np.ndarray:
    """``[A^S, S]`` int: every deterministic policy, in lexicographic order.

    A library Π that holds all of them makes GPI exact for *any* reward:
    ``max_π V^π = V*`` (a deterministic optimal policy always exists).
    """
    if num_actions**num_states > 1 << 16:
        raise ValueError(f"A^S = {num_actions}^{num_states} policies is too many to list")
    return np.array(list(itertools.product(range(num_actions), repeat=num_states)), np.int32)


def one_hot_features(num_states: int, num_actions: int) -> np.ndarray:
    """``[S, A, S·A]`` float64: φ(s, a) = e_{s·A + a}, so ``w·φ = w[s·A + a]`` is any table."""
    return np.eye(num_states * num_actions).reshape(num_states, num_actions, -1)


def _policy_matrix(policy: np.ndarray, num_states: int, num_actions: int) -> np.ndarray:
    """``[S, A]`` probabilities from ``[S]`` int actions or ``[S, A]`` probabilities."""
    policy = np.asarray(policy)
    if policy.shape == (num_states,):
        return np.eye(num_actions)[policy.astype(int)]
    if policy.shape != (num_states, num_actions):
        raise ValueError(
            f"policy must be [S] actions or [S, A] probabilities with S={num_states}, "
            f"A={num_actions}, got shape {policy.shape}"
        )
    return policy.astype(np.float64)


def successor_features(
    transitions: np.ndarray, policy: np.ndarray, features: np.ndarray, *, discount: float
) -> np.ndarray:
    """Exact successor features ``ψ^π [S, d]`` by one linear solve (float64, numpy).

    ``ψ^π(s) = E_π[Σ_t γ^t φ(s_t, a_t) | s_0 = s]`` solves the Bellman
    equation ``ψ = Φ_π + γ P_π ψ``, i.e. ``(I − γ P_π) ψ = Φ_π`` with
    ``P_π[s, s'] = Σ_a π(a|s) 1[s'(s, a) = s']`` and ``Φ_π[s] = Σ_a π(a|s) φ(s, a)``
    (Barreto et al. 2017; Knox et al. 2022 use this solve). Needs γ < 1
    unless every policy reaches an absorbing zero-feature state.

    Args:
      transitions: ``[S, A]`` int next states (deterministic MDP).
      policy: ``[S]`` int actions or ``[S, A]`` action probabilities.
      features: ``[S, A, d]`` φ(s, a).
      discount: γ.

    Returns:
      ``[S, d]`` float64; with ``features = rewards[..., None]`` this is V^π.
    """
    transitions = np.asarray(transitions)
    features = np.asarray(features, np.float64)
    num_states, num_actions = transitions.shape
    if features.shape[:2] != (num_states, num_actions) or features.ndim != 3:
        raise ValueError(
            f"features must be [S, A, d] = [{num_states}, {num_actions}, d], got {features.shape}"
        )
    pi = _policy_matrix(policy, num_states, num_actions)
    p_pi = np.zeros((num_states, num_states))
    np.add.at(p_pi, (np.repeat(np.arange(num_states), num_actions), transitions.reshape(-1)),
              pi.reshape(-1))
    phi_pi = np.einsum("sa,sad->sd", pi, features)
    return np.linalg.solve(np.eye(num_states) - discount * p_pi, phi_pi)


def policy_values(
    transitions: np.ndarray, rewards: np.ndarray, policy: np.ndarray, *, discount: float
) -> np.ndarray:
    """``V^π [S]`` (float64) by the same solve: successor features of φ = r."""
    rewards = np.asarray(rewards, np.float64)
    return successor_features(transitions, policy, rewards[..., None], discount=discount)[:, 0]


def policy_rollouts(
    transitions: np.ndarray,
    policies: np.ndarray,
    starts: np.ndarray,
    num_steps: int,
    *,
    time_limit: int,
) -> dict[str, np.ndarray]:
    """Roll out each deterministic policy of a library from ``starts``; time-major.

    Each column b starts in ``starts[b]``; an episode is cut by the time limit
    after ``time_limit`` steps (a *truncation*, not a terminal state: the
    true next state is recorded, then the column restarts in ``starts[b]``).

    Args:
      transitions: ``[S, A]`` int next states.
      policies: ``[Π, S]`` int actions.
      starts: ``[B]`` int start states.
      num_steps: T.
      time_limit: steps per episode.

    Returns:
      ``state``, ``action``, ``next_state`` ``[Π, T, B]`` int and
      ``truncated``, ``terminated`` ``[Π, T, B]`` bool (never terminated here).
    """
    transitions = np.asarray(transitions)
    policies = np.asarray(policies)
    starts = np.asarray(starts)
    num_policies, batch = policies.shape[0], starts.shape[0]
    shape = (num_policies, num_steps, batch)
    state = np.zeros(shape, np.int32)
    action = np.zeros(shape, np.int32)
    next_state = np.zeros(shape, np.int32)
    truncated = np.zeros(shape, bool)
    for p in range(num_policies):
        s = starts.copy()
        for t in range(num_steps):
            a = policies[p, s]
            s_next = transitions[s, a]
            state[p, t], action[p, t], next_state[p, t] = s, a, s_next
            truncated[p, t] = (t + 1) % time_limit == 0
            s = np.where(truncated[p, t], starts, s_next)
    return {
        "state": state,
        "action": action,
        "next_state": next_state,
        "truncated": truncated,
        "terminated": np.zeros(shape, bool),
    }
