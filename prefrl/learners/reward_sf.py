"""r̂ under the regret model online: V*_r̂ by GPI over successor features of policy snapshots.

Knox et al. (2022) fit r̂ so that its *regret* explains the labels,

    score(σ) = Σ_{t<k} γ^t r̂(s_t, a_t) + γ^k V̂*(s_k) − V̂*(s_0),

with V*_r̂ made tractable by a linear reward and successor features of a policy
library Π (docs/design.md §4; the offline learner is
:mod:`prefrl.learners.regret_sf`). Online, with ``RewardModelConfig(library_size=Π)``,
every ensemble member is an :class:`SFReward`:

    φ(s, a)      the member's last hidden layer                         [d]
    r̂(s, a)      = w·φ(s, a) + b                                        (the reward PPO sees)
    ψ^j(s)       ≈ E_{π_j}[Σ_t γ^t φ(s_t, a_t) | s_0 = s], j < Π         (one head per snapshot)
    V̂*(s)        = GPI_τ(w·ψ^j(s)) + b / (1 − γ)                         (hard max at τ = 0)

Π is the run's own policy snapshots (the last Π labelling rounds' policies, never
an expert), each represented by the segments of its rollout
(:class:`Snapshot`, stacked ``[Π, …]``). ψ is regressed on them by :func:`fit_successors`
(k-step TD: the discounted sum of φ over the rest of the segment plus
γ^{k−t} ψ^j(s_k), targets recomputed a few times), and is a constant of the
preference fit (``stop_gradient``), as in ``regret_sf``: the preference gradient
reaches w through both the return and V̂*, and φ through the return. After every
preference fit φ has moved, so ψ is refitted at the next round, on the newest
snapshot's data too (alternation, as ``successor_features.alternate``).

ψ^j's output is scaled by 1/(1 − γ), so the regression works on targets of φ's
own scale. The snapshots' rollouts are the run's own env steps: nothing extra
is simulated. Known limits: ψ^j is asked for states its policy never visited
(labelled segments of older policies): GPI's maximum then picks whichever
extrapolates highest; and the loss is not convex in w (``regret_sf``'s tabular
false minimum), so ``library_temperature > 0`` gives a soft maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl.learners.gpi import gpi_value
from prefrl.learners.reward_potential import state_inputs
from prefrl.networks import MLP, orthogonal

Array = jax.Array
PRNGKey = jax.Array


class SFReward(nn.Module):
    """One member: ``__call__(x) -> r̂ [..., 1]``, ``features(x) -> φ [..., d]``,
    ``successors(x) -> ψ [..., Π, d]`` and ``gpi(x, τ) -> V̂* [...]``.

    ``x`` is the member input (obs and action); ψ and V̂* read states as the input
    with zero action entries (:func:`reward_potential.state_inputs`).
    """

    hidden: Sequence[int]
    activation: Callable[[Array], Array]
    library_size: int
    discount: float

    def setup(self) -> None:
        hidden = tuple(int(h) for h in self.hidden)
        self.body = MLP(hidden[:-1], hidden[-1], self.activation, out_scale=2.0 ** 0.5)
        self.head = nn.Dense(1, kernel_init=orthogonal(1.0))
        self.successor = MLP(hidden, self.library_size * hidden[-1], self.activation)

    def features(self, x: Array) -> Array:
        return self.activation(self.body(x))

    def __call__(self, x: Array) -> Array:
        if self.is_initializing():  # create ψ's parameters with r̂'s
            self.successor(x)
        return self.head(self.features(x))

    def successors(self, x: Array) -> Array:
        out = self.successor(x) / (1.0 - self.discount)
        return out.reshape(*out.shape[:-1], int(self.library_size), int(self.hidden[-1]))

    def gpi(self, x: Array, temperature: float | Array) -> Array:
        psi = jax.lax.stop_gradient(self.successors(x))
        w = self.head.variables["params"]["kernel"][:, 0]
        b = self.head.variables["params"]["bias"][0]
        return gpi_value(w, psi, temperature=temperature) + b / (1.0 - self.discount)


def segment_gaps(config: Any, network: SFReward, params: Any, obs: Array,
                 final_obs: Array | None, mask: Array, act_dim: int) -> Array:
    """``[M, N]``: each member's ``m_{k−1} γ^k V̂*(s_k) − V̂*(s_0)`` for ``obs [N, k, obs]``.

    ``config``: the reward model's (``use_action``, ``discount``, ``library_temperature``);
    ``final_obs [N, obs]``: s_k; ``mask [N, k]``. ψ is a constant (no gradient).
    """
    if final_obs is None:
        raise ValueError("a regret-model reward with a snapshot library (library_size > 0) "
                         "needs each segment's final state s_k: the batch's final_obs_1/"
                         "final_obs_2 are None")
    both = jnp.stack([state_inputs(obs[:, 0], act_dim, config.use_action),
                      state_inputs(final_obs.astype(obs.dtype), act_dim, config.use_action)])
    value = lambda p, x: network.apply(p, x, config.library_temperature, method=SFReward.gpi)
    values = jax.vmap(value, in_axes=(0, None))(params, both)  # [M, 2, N]
    return (config.discount ** obs.shape[1]) * mask[None, :, -1] * values[:, 1] - values[:, 0]


# --------------------------------------------------------------------------- the library

@struct.dataclass
class Snapshot:
    """One library policy's data: the segments of one of its rollouts ``[S, k, …]``."""

    obs: Array  # [S, k, obs]
    action: Array  # [S, k, act]
    mask: Array  # [S, k]
    final_obs: Array  # [S, obs]


def successor_targets(phi: Array, mask: Array, psi_k: Array, discount: float) -> Array:
    """``[S, k, d]`` k-step TD targets for ψ at every step of segments ``[S, k]``.

    ``G_t = Σ_{t ≤ u < k} γ^{u−t} m_u φ_u + γ^{k−t} m_{k−1} ψ(s_k)``; ``phi [S, k, d]``,
    ``mask [S, k]``, ``psi_k [S, d]`` (ψ of this snapshot at s_k). A segment cut by an
    episode end (``m_{k−1} = 0``) gets no bootstrap (the pool keeps only s_k).
    """
    k = phi.shape[1]
    t = jnp.arange(k)
    gaps = t[None, :] - t[:, None]  # [t, u] = u − t
    weights = jnp.where(gaps >= 0, discount ** jnp.maximum(gaps, 0), 0.0).astype(phi.dtype)
    ret = jnp.einsum("tu,sud->std", weights, mask[..., None] * phi)
    boot = (discount ** (k - t)).astype(phi.dtype)[None, :, None] * (
        mask[:, -1, None, None] * psi_k[:, None, :])
    return ret + boot


def fit_successors(network: SFReward, params: Any, library: Snapshot, key: PRNGKey, *,
                   discount: float, use_action: bool, rounds: int, steps: int,
                   batch_size: int, learning_rate: float = 1e-3) -> tuple[Any, Array]:
    """Regress every member's ψ heads on its own snapshot's segments; ``(params, loss [M])``.

    ``params``: stacked ``[M, …]`` members; ``library``: ``[Π, S, k, …]`` (head j learns
    from ``library[j]``). ``rounds`` target recomputations (the bootstrap uses the
    current ψ), ``steps`` Adam updates each on ``batch_size`` uniform rows (snapshot,
    segment, step). Only ψ's parameters change; φ, w and b are read, not trained.
    """
    num_pi, size, k = library.mask.shape
    act_dim = library.action.shape[-1]
    x = jnp.concatenate([library.obs, library.action], -1) if use_action else library.obs
    states = state_inputs(library.obs, act_dim, use_action)  # [Π, S, k, in]
    finals = state_inputs(library.final_obs, act_dim, use_action)  # [Π, S, in]
    rows = num_pi * size * k
    head_of_row = jnp.repeat(jnp.arange(num_pi), size * k)
    optimizer = optax.adam(learning_rate)
    scale = 1.0 - discount

    def member(p: Any, key: PRNGKey) -> tuple[Any, Array]:
        phi = network.apply(p, x, method=SFReward.features)  # [Π, S, k, d]
        mask = library.mask.astype(phi.dtype)

        def psi_raw(sp: Any, inputs: Array) -> Array:
            full = {"params": {**p["params"], "successor": sp}}
            return network.apply(full, inputs, method=SFReward.successors) * scale

        def targets(sp: Any) -> Array:
            psi_k = psi_raw(sp, finals) / scale  # [Π, S, Π, d]
            own = jnp.take_along_axis(psi_k, jnp.arange(num_pi)[:, None, None, None],
                                      axis=2)[:, :, 0]  # [Π, S, d]
            g = jax.vmap(successor_targets, (0, 0, 0, None))(phi, mask, own, discount)
            return jax.lax.stop_gradient(g * scale).reshape(rows, -1)  # raw units

        flat_states = states.reshape(rows, -1)
        flat_mask = mask.reshape(rows)

        def loss_fn(sp: Any, idx: Array, target: Array) -> Array:
            pred = psi_raw(sp, flat_states[idx])  # [B, Π, d]
            own = jnp.take_along_axis(pred, head_of_row[idx][:, None, None], axis=1)[:, 0]
            err = jnp.sum((own - target[idx]) ** 2, -1) * flat_mask[idx]
            return jnp.sum(err) / jnp.maximum(jnp.sum(flat_mask[idx]), 1.0)

        def one_round(carry: tuple[Any, Any], key_r: PRNGKey) -> tuple[tuple[Any, Any], Array]:
            sp, opt = carry
            target = targets(sp)

            def step(c: tuple[Any, Any], key_s: PRNGKey) -> tuple[tuple[Any, Any], Array]:
                sp, opt = c
                idx = jax.random.randint(key_s, (batch_size,), 0, rows)
                loss, grads = jax.value_and_grad(loss_fn)(sp, idx, target)
                updates, opt = optimizer.update(grads, opt, sp)
                return (optax.apply_updates(sp, updates), opt), loss

            carry, losses = jax.lax.scan(step, (sp, opt), jax.random.split(key_r, steps))
            return carry, losses[-1]

        sp = p["params"]["successor"]
        (sp, _), losses = jax.lax.scan(one_round, (sp, optimizer.init(sp)),
                                       jax.random.split(key, rounds))
        return {"params": {**p["params"], "successor": sp}}, losses[-1]

    members = jax.tree.leaves(params)[0].shape[0]
    return jax.vmap(member)(params, jax.random.split(key, members))


#: Target recomputations and rows per update of :func:`refit_library` (its Adam steps are
#: the reward config's ``library_fit_steps``, spread over the rounds).
LIBRARY_ROUNDS = 4
LIBRARY_BATCH = 1024


def refit_library(config: Any, network: SFReward, params: Any, library: Snapshot,
                  key: PRNGKey) -> tuple[Any, Array]:
    """:func:`fit_successors` with a ``RewardModelConfig``'s settings (γ, input, steps)."""
    return fit_successors(network, params, library, key, discount=float(config.discount),
                          use_action=config.use_action, rounds=LIBRARY_ROUNDS,
                          steps=max(1, int(config.library_fit_steps) // LIBRARY_ROUNDS),
                          batch_size=LIBRARY_BATCH)


__all__ = ["LIBRARY_BATCH", "LIBRARY_ROUNDS", "SFReward", "Snapshot", "fit_successors",
           "refit_library", "segment_gaps", "successor_targets"]
