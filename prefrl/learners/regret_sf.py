"""Reward learning under the regret preference model, via successor features and GPI.

Knox et al. (2022, "Models of human preference for learning reward
functions", §successor features) learn a reward r̂ whose *regret* explains the
preferences. Unlike ``reward_model(assumption="advantage")``, which fits the
advantage Â by the partial-return loss form, here regret is computed *from
r̂ itself*, so the learner really assumes the regret model:

    r̂(s, a)       = w · φ(s, a)                                   φ: [d]
    ψ^π(s)        = E_π[Σ_t γ^t φ(s_t, a_t) | s_0 = s]             per π ∈ Π, [d]
    V^π_r̂(s)      = w · ψ^π(s)
    V̂*_r̂(s)       = max_{π∈Π} w · ψ^π(s)                 (GPI, τ = 0)
                  or τ log Σ_π exp(w · ψ^π(s) / τ)        (soft; ≤ max + τ log|Π|)
    τ(t)          = τ_end + (τ_start − τ_end) · max(0, 1 − t / T_anneal)   (update t)
    regret_r̂(σ)   = V̂*(s_0) − [Σ_{t<k} γ^t r̂(s_t, a_t) + γ^k V̂*(s_k)]
    P(σ¹ ≻ σ²)    = sigmoid((regret_r̂(σ²) − regret_r̂(σ¹)) / β)

and the loss is the Bradley–Terry cross-entropy with soft labels (ties ½),
per-query weights and step masks, exactly as ``prefrl.preference``:
the score is ``preference.regret_score_from_values`` (so γ, the step mask
and termination are handled as the regret oracle handles them) and the loss
``preference.bt_loss(preference.logit(…))``.

**What the approximation costs.** With τ = 0, V̂* ≤ V*_r̂ everywhere
(every V^π ≤ V*), with equality where the optimal policy *of r̂* is in Π
(Barreto et al. 2017's GPI theorem). That policy moves as r̂ is learned, so
a fixed library is exact only for rewards whose optimum it happens to hold.
A bound on V does not bound the regret: V̂* enters with opposite signs at
s_0 and s_k, so approximate regret can be *negative* (a segment that beats
every policy of Π from s_0) or too large. The soft maximum (Knox's code uses
τ = 1e-3) adds up to τ log|Π| to each V̂*.

**The loss is not convex in w.** V̂* is a maximum of linear functions of w
and enters the regret with both signs, so the BT loss has false local
minima even when GPI is exact: on a random 3-state, 2-action MDP with
Π = every deterministic policy and exact soft labels
(``tests/test_regret_sf.py::test_annealed_gpi_escapes_the_false_minimum``),
hard-max GPI fitted from the default start stops well above the label
entropy (the optimum) with the fitted regret a small fraction of the true
one; a soft maximum (τ ≈ β) first, annealed to the hard max, reaches the
label entropy. τ is therefore an *array* of the state (:class:`GPISchedule`,
``state.gpi``): it anneals linearly from ``gpi_anneal_start`` to
``gpi_temperature`` over ``gpi_anneal_steps`` updates, inside the traced
update (no recompilation), and a caller may set or vmap it
(``state.replace(gpi=…)``). Annealing is off by default
(``gpi_anneal_steps = 0``) so that earlier results keep their numbers;
fits from a cold start should turn it on.

φ (frozen, or a learned module) and ψ (a network, or values in the batch)
are :mod:`prefrl.learners.sf_networks`; ψ is a constant of every update
(``stop_gradient``), fitted by regression on rollouts of each library policy
and, for a learned φ, refitted in alternation with the updates
(:mod:`prefrl.learners.successor_features`).

Public API:
  ``RegretSFConfig``, ``SFPairBatch``, ``SFSegments``, ``RegretSFState``,
  ``GPISchedule``; ``gpi_schedule(config)``, ``gpi_temperature_at(schedule, step)``,
  ``gpi_value(w, psi, *, temperature)``, ``segment_regret(w, phi_t, psi_0,
  psi_k, *, discount, gpi_temperature, mask_t, terminal_k)``;
  ``make(config, phi, optimizer=None, *, psi_network=None) -> Learner``;
  ``make_regret_fn(config, phi, *, psi_network=None, chunk=None)``;
  ``pair_batch(pool, first, second, label, weight=None)``,
  ``from_pair_batch(batch, psi_in_1, psi_in_2)``, ``psi_inputs(segments)``,
  ``reward_fn(state, phi)``, ``default_optimizer(config)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl import preference
from prefrl.config import field
from prefrl.learners import Learner, check_make
from prefrl.learners import sf_networks as nets
from prefrl.learners.gpi import GPISchedule, gpi_temperature_at, gpi_value
from prefrl.learners.sf_batches import (
    SFPairBatch,
    SFSegments,
    from_pair_batch,
    pair_batch,
    psi_inputs,
)
from prefrl.learners.sf_networks import PhiFn

Array = jax.Array
PRNGKey = jax.Array
Params = Any


# --------------------------------------------------------------------------- #
# Config, data and state
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class RegretSFConfig:
    """Options of the regret-model reward learner (Knox et al. 2022)."""

    discount: float = field(0.99, "γ of the regret model and of ψ (the oracle's γ)")
    temperature: float = field(1.0, "Boltzmann β of the preference model")
    gpi_temperature: float = field(
        0.0, "τ of the soft GPI maximum (after annealing); 0 = hard max")
    gpi_anneal_start: float = field(
        1.0, "τ at update 0 when annealing (gpi_anneal_steps > 0); ≈ β is soft")
    gpi_anneal_steps: int = field(
        0, "updates over which τ anneals linearly from gpi_anneal_start to gpi_temperature; "
        "0 = no annealing (the loss is not convex: anneal on a cold start)")
    num_policies: int = field(0, "|Π| of a ψ network (one head per policy); 0: ψ in the batch")
    learning_rate: float = field(3e-4, "Adam step size of default_optimizer")
    l2: float = field(0.0, "L2 penalty l2/2 (‖w‖² + ‖θ_φ‖²)")
    label_smoothing: float = field(0.0, "ε: targets μ(1 − ε) + ε/2")
    init_scale: float = field(0.1, "w ~ N(0, init_scale² / d) at init")

    def __post_init__(self) -> None:
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.gpi_temperature >= 0:
            raise ValueError(f"gpi_temperature must be >= 0, got {self.gpi_temperature}")
        if not self.gpi_anneal_start >= 0:
            raise ValueError(f"gpi_anneal_start must be >= 0, got {self.gpi_anneal_start}")
        if int(self.gpi_anneal_steps) < 0:
            raise ValueError(f"gpi_anneal_steps must be >= 0, got {self.gpi_anneal_steps}")
        if int(self.num_policies) < 0:
            raise ValueError(f"num_policies must be >= 0, got {self.num_policies}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {self.init_scale}")


def gpi_schedule(config: RegretSFConfig, dtype: Any = jnp.float32) -> GPISchedule:
    """The :class:`GPISchedule` of a config (``gpi_anneal_start → gpi_temperature``)."""
    steps = int(config.gpi_anneal_steps)
    start = config.gpi_anneal_start if steps > 0 else config.gpi_temperature
    return GPISchedule(jnp.asarray(start, dtype), jnp.asarray(config.gpi_temperature, dtype),
                       jnp.asarray(steps, dtype))


@struct.dataclass
class RegretSFState:
    """Training state: arrays only.

    ``params = {"w": [d], "phi": φ-network parameters ({} for frozen φ)}`` is
    what the optimizer trains; ``psi_params`` are the ψ network's parameters
    stacked ``[Π, …]`` ({} when ψ values come with the batch), set by
    ``successor_features.make_refit`` / ``fit_successor_features``, never by the update.
    ``gpi``: the GPI temperature's :class:`GPISchedule`; update ``step`` uses
    ``gpi_temperature_at(gpi, step)`` (a restart of the annealing is
    ``state.replace(step=0)``, or a new schedule ``state.replace(gpi=…)``).
    """

    params: Params
    psi_params: Params
    opt_state: optax.OptState
    step: Array  # int32 scalar
    gpi: GPISchedule


def default_optimizer(config: RegretSFConfig) -> optax.GradientTransformation:
    """Adam with ``config.learning_rate``."""
    return optax.adam(config.learning_rate)


# --------------------------------------------------------------------------- #
# The regret of one segment
# --------------------------------------------------------------------------- #


def segment_regret(
    w: Array,
    phi_t: Array,
    psi_0: Array,
    psi_k: Array,
    *,
    discount: float | Array,
    gpi_temperature: float | Array = 0.0,
    mask_t: Array | None = None,
    terminal_k: Array | bool | None = None,
) -> Array:
    """Regret of one segment under r̂ = w·φ (Knox et al. 2022, SF/GPI form).

    ``regret = V̂*(s_0) − [Σ_{t<k} γ^t w·φ_t + γ^k V̂*(s_k)]`` with V̂* from
    :func:`gpi_value`; the bracket and termination are
    ``preference.regret_score_from_values`` (regret = −score), so a mask with
    a 0 or ``terminal_k`` drops the bootstrap and masked steps count 0.

    Args:
      w: ``[d]``.
      phi_t: ``[k, d]`` φ(s_t, a_t).
      psi_0, psi_k: ``[Π, d]`` ψ^π(s_0), ψ^π(s_k).
      discount: γ.
      gpi_temperature: τ of :func:`gpi_value` (a float, or a traced scalar array).
      mask_t: optional ``[k]`` prefix-of-ones step mask.
      terminal_k: optional scalar bool.

    Returns:
      Scalar regret (0 for a segment that follows π*_r̂ when GPI is exact;
      may be negative when it is not).
    """
    chex.assert_rank([w, phi_t, psi_0, psi_k], [1, 2, 2, 2])
    chex.assert_equal_shape([psi_0, psi_k])
    rewards_t = phi_t @ w
    if mask_t is not None:
        # Padding after an episode ended may hold anything; 0 · NaN would be NaN.
        rewards_t = jnp.where(mask_t > 0, rewards_t, 0.0)
    v_0 = gpi_value(w, psi_0, temperature=gpi_temperature)
    v_k = gpi_value(w, psi_k, temperature=gpi_temperature)
    score = preference.regret_score_from_values(
        rewards_t, v_0, v_k, discount=discount, mask_t=mask_t, terminal_k=terminal_k
    )
    return -score


# --------------------------------------------------------------------------- #
# Shape checks (trace-time, so they raise before any fitting)
# --------------------------------------------------------------------------- #


def _segment_dims(obs: Array, action: Array, mask: Array, psi_in: Array, terminal: Array | None,
                  name: str) -> tuple[int, int, int, int]:
    if obs.ndim != 3:
        raise ValueError(f"obs{name} must be [B, k, obs], got shape {obs.shape}")
    size, length, obs_dim = obs.shape
    if action.ndim != 3 or action.shape[:2] != (size, length):
        raise ValueError(f"action{name} must be [B, k, act] = [{size}, {length}, act], "
                         f"got {action.shape}")
    if mask.shape != (size, length):
        raise ValueError(f"mask{name} must be [B, k] = {(size, length)}, got {mask.shape}")
    if psi_in.ndim not in (3, 4) or psi_in.shape[:2] != (size, 2):
        raise ValueError(
            f"psi_in{name} must be [B, 2, obs] (states s_0, s_k) or [B, 2, Π, d] (ψ values) "
            f"with B = {size}, got {psi_in.shape}"
        )
    if terminal is not None and terminal.shape != (size,):
        raise ValueError(f"terminal{name} must be [B] = ({size},), got {terminal.shape}")
    return size, length, obs_dim, action.shape[2]


def _check_batch(model: nets.SFModel, state_like: tuple[Params, Params], batch: SFPairBatch) -> int:
    """Raise ``ValueError`` naming the mismatch; return the feature width d."""
    dims_1 = _segment_dims(batch.obs_1, batch.action_1, batch.mask_1, batch.psi_in_1,
                           batch.terminal_1, "_1")
    dims_2 = _segment_dims(batch.obs_2, batch.action_2, batch.mask_2, batch.psi_in_2,
                           batch.terminal_2, "_2")
    if dims_1[1:] != dims_2[1:] or dims_1[0] != dims_2[0]:
        raise ValueError(f"the two segments' shapes differ: obs_1 {batch.obs_1.shape}, action_1 "
                         f"{batch.action_1.shape} vs obs_2 {batch.obs_2.shape}, action_2 "
                         f"{batch.action_2.shape}")
    if batch.psi_in_1.shape != batch.psi_in_2.shape:
        raise ValueError(f"psi_in_1 {batch.psi_in_1.shape} and psi_in_2 "
                         f"{batch.psi_in_2.shape} differ")
    size = dims_1[0]
    if batch.label.shape != (size,):
        raise ValueError(f"label must be [B] = ({size},), got {batch.label.shape}")
    if batch.weight is not None and batch.weight.shape != (size,):
        raise ValueError(f"weight must be [B] = ({size},), got {batch.weight.shape}")
    return nets.check_widths(model, state_like, batch.obs_1, batch.action_1, batch.psi_in_1)


# --------------------------------------------------------------------------- #
# The learner
# --------------------------------------------------------------------------- #


def _regrets(config: RegretSFConfig, model: nets.SFModel, params: Params, psi_params: Params,
             tau: Array, obs: Array, action: Array, mask: Array, psi_in: Array,
             terminal: Array | None) -> Array:
    """``[N]`` regrets of N segments at GPI temperature ``tau`` (a scalar array); ψ is a
    constant (no gradient flows into it)."""
    phi_ntd = model.phi(params["phi"], obs, action)
    psi = jax.lax.stop_gradient(model.psi(psi_params, psi_in))  # [N, 2, Π, d]
    one = lambda phi_t, psi_2, mask_t, term: segment_regret(
        params["w"], phi_t, psi_2[0], psi_2[1], discount=config.discount,
        gpi_temperature=tau, mask_t=mask_t.astype(phi_t.dtype),
        terminal_k=term,
    )
    if terminal is None:
        return jax.vmap(lambda a, b, c: one(a, b, c, None))(phi_ntd, psi, mask)
    return jax.vmap(one)(phi_ntd, psi, mask, terminal)


def make(
    config: RegretSFConfig,
    phi: PhiFn | nn.Module,
    optimizer: optax.GradientTransformation | None = None,
    *,
    psi_network: nn.Module | None = None,
) -> Learner:
    """Build the regret-model reward learner (Knox et al. 2022, SF/GPI).

    Args:
      config: :class:`RegretSFConfig`.
      phi: frozen features ``phi(obs [..., obs], action [..., act]) -> [..., d]``
        (only w is learned), or a flax module ``[..., obs + act] -> [..., d]``
        (learned φ, trained with w; refit ψ with ``successor_features.make_refit``). ψ is a
        constant of every update (``stop_gradient``): no gradient reaches ψ.
      optimizer: any optax transform over ``{"w": [d], "phi": θ_φ}``;
        default :func:`default_optimizer`.
      psi_network: a flax module ``[..., obs] -> [..., d]`` for one policy's ψ
        (parameters stacked over ``config.num_policies``); ``None``: the batch
        carries ψ values ``psi_in [B, 2, Π, d]``.

    Returns:
      ``Learner(init, update)``:
        ``init(key, example_batch) -> RegretSFState`` (shape errors raise
        ``ValueError`` naming the mismatch);
        ``update(state, batch) -> (state, metrics)``: one optimiser step on
        ``Σ_b w_b bt_loss(logit_b, μ_b) / Σ_b w_b`` (+ L2) with
        ``logit = (regret(σ²) − regret(σ¹)) / β``. Metrics (scalars):
        ``loss``, ``accuracy`` (ties count ½), ``grad_norm``, ``regret_mean``,
        ``negative_regret_fraction`` (segments with regret < 0: GPI is
        inexact there), ``gpi_temperature`` (the τ this update used,
        ``gpi_temperature_at(state.gpi, state.step)``).
    """
    check_make("regret_sf.make", config, RegretSFConfig,
               phi=phi, optimizer=optimizer, psi_network=psi_network)
    model = nets.make_model(phi, psi_network, num_policies=config.num_policies)
    optimizer = default_optimizer(config) if optimizer is None else optimizer

    def init(key: PRNGKey, example_batch: SFPairBatch) -> RegretSFState:
        key_w, key_phi, key_psi = jax.random.split(key, 3)
        del key
        _require_sf_batch(example_batch)
        obs0, act0 = example_batch.obs_1[0, 0], example_batch.action_1[0, 0]
        phi_params = model.phi_init(key_phi, obs0, act0)
        psi_params = model.psi_init(key_psi, example_batch.psi_in_1[0, 0])
        width = _check_batch(model, (phi_params, psi_params), example_batch)
        dtype = jnp.result_type(example_batch.obs_1.dtype, jnp.float32)
        w = config.init_scale / math.sqrt(width) * jax.random.normal(key_w, (width,), dtype)
        params = {"w": w, "phi": phi_params}
        return RegretSFState(params=params, psi_params=psi_params,
                             opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32),
                             gpi=gpi_schedule(config, dtype))

    def loss_fn(params: Params, psi_params: Params, tau: Array, batch: SFPairBatch
                ) -> tuple[Array, dict]:
        regret_1 = _regrets(config, model, params, psi_params, tau, batch.obs_1, batch.action_1,
                            batch.mask_1, batch.psi_in_1, batch.terminal_1)
        regret_2 = _regrets(config, model, params, psi_params, tau, batch.obs_2, batch.action_2,
                            batch.mask_2, batch.psi_in_2, batch.terminal_2)
        logits = preference.logit(-regret_1, -regret_2, temperature=config.temperature)
        label = batch.label.astype(logits.dtype)
        target = label * (1.0 - config.label_smoothing) + 0.5 * config.label_smoothing
        losses = preference.bt_loss(logits, target)
        weight = jnp.ones_like(losses) if batch.weight is None else batch.weight.astype(
            losses.dtype)
        total = jnp.maximum(jnp.sum(weight), 1e-8)
        loss = jnp.sum(weight * losses) / total
        if config.l2 > 0:
            loss = loss + 0.5 * config.l2 * optax.tree.norm(params, squared=True)
        correct = jnp.where(label == 0.5, 0.5, ((logits > 0) == (label > 0.5)).astype(
            logits.dtype))
        regrets = jnp.concatenate([regret_1, regret_2])
        metrics = {
            "loss": loss,
            "accuracy": jnp.sum(weight * correct) / total,
            "regret_mean": jnp.mean(regrets),
            "negative_regret_fraction": jnp.mean((regrets < 0).astype(regrets.dtype)),
        }
        return loss, metrics

    def update(state: RegretSFState, batch: SFPairBatch) -> tuple[RegretSFState, dict]:
        _require_sf_batch(batch)
        width = _check_batch(model, (state.params["phi"], state.psi_params), batch)
        if state.params["w"].shape[-1:] != (width,):
            raise ValueError(f"feature width mismatch: the state's w has shape "
                             f"{state.params['w'].shape}, φ has width {width}")
        tau = gpi_temperature_at(state.gpi, state.step)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, state.psi_params, tau,
                                                         batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["gpi_temperature"] = tau
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return Learner(init=init, update=update)


def _require_sf_batch(batch: SFPairBatch) -> None:
    if not isinstance(batch, SFPairBatch):
        raise TypeError(f"expected an SFPairBatch, got {type(batch).__name__} "
                        "(from_pair_batch adds the ψ-inputs to a PairBatch)")


def make_regret_fn(
    config: RegretSFConfig,
    phi: PhiFn | nn.Module,
    *,
    psi_network: nn.Module | None = None,
    chunk: int | None = None,
) -> Callable[[RegretSFState, SFSegments], Array]:
    """``regret(state, pool) -> [N]``: the learner's regret of every segment of a pool.

    Pure and jittable; the same computation as the loss (for query selection,
    evaluation against the oracle's regret, or labelling), at the state's current
    GPI temperature ``gpi_temperature_at(state.gpi, state.step)``. ``chunk`` bounds
    memory: segments are processed ``chunk`` at a time by ``lax.map``.
    """
    model = nets.make_model(phi, psi_network, num_policies=config.num_policies)

    def regret(state: RegretSFState, pool: SFSegments) -> Array:
        _segment_dims(pool.obs, pool.action, pool.mask, pool.psi_in, pool.terminal, "")
        nets.check_widths(model, (state.params["phi"], state.psi_params), pool.obs, pool.action,
                      pool.psi_in)
        tau = gpi_temperature_at(state.gpi, state.step)
        one = lambda x: _regrets(config, model, state.params, state.psi_params, tau, *x)
        if chunk is None:
            return one(tuple(pool))
        # lax.map over rows of size `chunk`: vmap inside each block.
        rows = (pool.obs, pool.action, pool.mask, pool.psi_in, pool.terminal)
        single = lambda x: one(tuple(None if a is None else a[None] for a in x))[0]
        return jax.lax.map(single, rows, batch_size=int(chunk))

    return regret


def reward_fn(state: RegretSFState, phi: PhiFn | nn.Module) -> Callable[[Array, Array], Array]:
    """A pure ``(obs [..., obs], action [..., act]) -> r̂ [...]`` = w·φ for RL."""
    model = nets.make_model(phi)

    def fn(obs: Array, action: Array) -> Array:
        return model.phi(state.params["phi"], obs, action) @ state.params["w"]

    return fn


__all__ = [
    "GPISchedule",
    "PhiFn",
    "RegretSFConfig",
    "RegretSFState",
    "SFPairBatch",
    "SFSegments",
    "default_optimizer",
    "from_pair_batch",
    "gpi_schedule",
    "gpi_temperature_at",
    "gpi_value",
    "make",
    "make_regret_fn",
    "pair_batch",
    "psi_inputs",
    "reward_fn",
    "segment_regret",
]
