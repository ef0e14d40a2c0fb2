"""Policy learner ``cpl``: Contrastive Preference Learning online (Hejna et al. 2023).

Under the regret preference model with max-entropy optimality,
``A*(s, a) = α log π*(a|s)``, so a segment's regret score is ``Σ_t γ^t α log π``
and the policy itself is fitted by the Bradley–Terry loss (with CPL's
conservative bias λ; :func:`prefrl.learners.cpl.cpl_loss`) on labels of its
own segments: no reward model (``reward_learner="none"``) and no RL. Online,
after each round the loop hands over the label buffer (``set_labels``); each
update takes ``steps`` CPL(-BC) gradient steps, each on ``batch_size``
training labels drawn from it (held-out and skipped queries never train);
before the first label it changes nothing.

What it fits here: the oracle's labels are regret under the *expert's* values
(A^{π_E}, not A*), so π approaches a Boltzmann improvement of π_E,
``π ∝ exp(A^{π_E}/α)``, with α tied to the oracle's β. It needs stochastic
labels (a finite β, best relative to the score scale): deterministic labels
have no finite minimiser and push log π towards ±∞ (the registry refuses them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from prefrl.config import field
from prefrl.data.buffers import RingState, filled
from prefrl.learners import cpl
from prefrl.loops.online.learner_types import PolicyLearner
from prefrl.policies import Policy, policy_fn
from prefrl.types import PairBatch, Trajectory

Array = jax.Array
PRNGKey = jax.Array


@dataclasses.dataclass(frozen=True)
class OnlineCPLConfig(cpl.CPLConfig):
    """CPL as the online loop's policy learner: :class:`CPLConfig` plus the policy and steps.

    Online CPL (``policy_learner="cpl"``) learns π from labels of its own
    segments only. It needs *stochastic* labels (``--oracle-temperature 1
    --oracle-temperature-mode relative``): with deterministic labels the loss
    has no finite minimum and pushes log π towards ±∞.
    """

    hidden: tuple[int, ...] = field((64, 64), "policy hidden sizes (ReLU)")
    learning_rate: float = field(3e-4, "Adam step size")
    batch_size: int = field(64, "labelled queries per gradient step")
    steps: int = field(16, "gradient steps per rollout (0 before any label)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("batch_size", "steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@struct.dataclass
class CPLOnlineState:
    """The CPL learner's state, the loop's label buffer (None before the first round), a key."""

    learner: cpl.CPLState
    key: PRNGKey
    labels: RingState | None = None


def training_weights(labels: RingState) -> Array:
    """``[L]``: 1 for a filled, kept, training-split label; 0 otherwise."""
    d = labels.data
    return (filled(labels) & (d.keep > 0) & (d.split == 0)).astype(jnp.float32)


def sample_pairs(labels: RingState, key: PRNGKey, batch_size: int) -> PairBatch:
    """``batch_size`` training labels drawn uniformly (with replacement) as a weighted
    :class:`PairBatch`; all weights 0 when there is none yet."""
    w = training_weights(labels)
    total = jnp.sum(w)
    probs = jnp.where(total > 0, w / jnp.maximum(total, 1.0), 1.0 / w.shape[0])
    idx = jax.random.choice(key, w.shape[0], (batch_size,), p=probs)
    d = jax.tree.map(lambda x: x[idx], labels.data)
    return PairBatch(d.obs_1, d.action_1, d.mask_1, d.obs_2, d.action_2, d.mask_2, d.label,
                     w[idx])


def make(*, config: Any, obs_dim: int, act_dim: int,
         policy_config: OnlineCPLConfig | None = None, **_: Any) -> PolicyLearner:
    """The registered ``cpl`` policy learner (see the module docstring)."""
    pc = OnlineCPLConfig() if policy_config is None else policy_config
    network = cpl.default_network(act_dim, pc.hidden)
    learner = cpl.make(pc, network, cpl.default_optimizer(pc.learning_rate))
    k = config.segment_length

    def init(key: PRNGKey) -> CPLOnlineState:
        k_pol, k_loop = jax.random.split(key)
        seg = (jnp.zeros((1, k, obs_dim)), jnp.zeros((1, k, act_dim)), jnp.ones((1, k)))
        example = PairBatch(*seg, *seg, jnp.zeros((1,)))
        return CPLOnlineState(learner=learner.init(k_pol, example), key=k_loop)

    def update(state: CPLOnlineState, traj: Trajectory
               ) -> tuple[CPLOnlineState, dict[str, Array]]:
        """``steps`` CPL steps on the label buffer (the rollout is already in the pool)."""
        if state.labels is None:
            raise ValueError("online CPL learns from labels: set_labels before update")
        key, k_steps = jax.random.split(state.key)

        def step(s: cpl.CPLState, kk: PRNGKey) -> tuple[cpl.CPLState, dict[str, Array]]:
            return learner.update(s, sample_pairs(state.labels, kk, pc.batch_size))

        new, metrics = jax.lax.scan(step, state.learner, jax.random.split(k_steps, pc.steps))
        out = {f"cpl_{n}": metrics[n][-1] for n in ("loss", "pref_loss", "bc_nll", "accuracy")}
        out.update(true_reward=jnp.mean(traj.reward), nonfinite=~jnp.all(jnp.asarray(
            [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new.params)])))
        return state.replace(learner=new, key=key), out

    def act(state: CPLOnlineState, deterministic: bool) -> Callable[..., Any]:
        return policy_fn(Policy(network.apply, state.learner.params), deterministic=deterministic)

    def segment_score(state: CPLOnlineState, obs: Array, action: Array, mask: Array) -> Array:
        return cpl.segment_scores(network, state.learner.params, obs, action, mask,
                                  alpha=pc.alpha, discount=pc.discount,
                                  squash_jacobian=pc.squash_jacobian)

    return PolicyLearner(
        init=init, update=update, set_reward=lambda s, r: s,
        behaviour=lambda s: act(s, False), greedy=lambda s: act(s, True), critic=None,
        checkpoint_view=lambda s: s.replace(labels=None),  # the loop's own label buffer
        restore=lambda loaded, fresh: loaded, discount=float(pc.discount),
        set_labels=lambda s, labels: s.replace(labels=labels), segment_score=segment_score)


__all__ = ["CPLOnlineState", "OnlineCPLConfig", "make", "sample_pairs", "training_weights"]
