"""Contrastive Preference Learning and contrastive DPO: preferences → policy, no RL.

**CPL** (Hejna et al. 2023, "Contrastive Preference Learning: Learning from
Human Feedback without RL"). Under maximum-entropy RL the optimal advantage
is ``A*(s, a) = α log π*(a|s)``, so the regret preference model (Knox et al.
2022) becomes a loss on the policy itself. For a query (σ¹, σ²) with label
μ = P(σ¹ ≻ σ²),

    S_i = Σ_t γ^t α log π(a^i_t | s^i_t)                  (masked steps excluded)
    L   = −[ μ log σ(S_1 − λ S_2) + (1 − μ) log σ(S_2 − λ S_1) ]

with temperature α, discount γ and conservative bias λ ∈ (0, 1]. With λ = 1
this is exactly the Bradley–Terry loss ``bt_loss(S_1 − S_2, μ)``; λ < 1
(0.5 is typical) additionally rewards raising the likelihood of *both*
segments, which keeps the optimum on in-distribution actions (CPL issue
#12). Ties (μ = ½) train both directions with weight ½. **CPL-BC** adds
``bc_weight × (−mean log π)`` over every step of both segments
(``bc_data="all"``, CPL's default) or over the preferred segment of each
query only (``bc_data="preferred"``: σ¹'s steps weighted by μ, σ²'s by
1 − μ); BC pre-training (``prefrl.learners.bc``) gives the initial parameters.

**Contrastive DPO** (CPL's "CPL-KL"; DPO, Rafailov et al. 2023): replace
``α log π`` by ``β log(π/π_ref)`` with π_ref a frozen behaviour-cloned
policy. The loss is the same function applied to log-ratios, so with λ = 1
it is ``bt_loss(β Σ_t γ^t log(π/π_ref)(σ¹) − β Σ_t γ^t log(π/π_ref)(σ²), μ)``.

**The policy density.** Every policy is a ``prefrl.networks.GaussianPolicy``
read as a *tanh-squashed* diagonal Gaussian on the action box ``[-1, 1]^act``:
``u ~ N(μ(s), σ(s))``, ``a = tanh(u)``. ``log π(a|s)`` is the exact density
on the box including the Jacobian of the squashing,
``log N(atanh a; μ, σ) − Σ_i log(1 − a_i²)``
(``prefrl.networks.tanh_gaussian_log_prob``); dataset actions that sit at
exactly ±1 are pulled inside by ``prefrl.networks.ACTION_EPS`` so their
log-density stays finite. CPL's usual choice is ``state_dependent_std=True``.

**Which density scores a segment** (``CPLConfig.squash_jacobian``): the box
density, or the Gaussian density of ``atanh(a)``, which drops the tanh
Jacobian's per-segment offset (docs/design.md §4, "CPL's score and the tanh
Jacobian"). Gradients are identical; the default keeps the box density.

Shapes: a :class:`PairBatch` holds ``B`` queries of two segments of length
``k``: ``obs_i [B, k, obs]``, ``action_i [B, k, act]``, ``mask_i [B, k]``,
``label [B]``. :func:`cpl_loss` and :func:`dpo_loss` take *one* query (time
axis ``_t`` only); callers ``jax.vmap``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl import config as config_lib
from prefrl import evaluation
from prefrl.learners import Learner
from prefrl.networks import ACTION_EPS, GaussianPolicy, tanh_gaussian_log_prob
from prefrl.preference import bt_loss, regret_score
from prefrl.types import PairBatch

Array = jax.Array
Params = Any


# ---------------------------------------------------------------- the loss


def _masked(values_t: Array, mask_t: Array | None) -> Array:
    # Zero masked steps *before* weighting: padding after an episode ended may
    # hold any action (even one with log π = −inf), and 0 · inf would be NaN.
    if mask_t is None:
        return values_t
    chex.assert_equal_shape([values_t, mask_t])
    return jnp.where(mask_t > 0, values_t, 0.0)


def cpl_scores(
    logp_1_t: Array,
    logp_2_t: Array,
    *,
    alpha: float | Array,
    discount: float | Array = 1.0,
    mask_1_t: Array | None = None,
    mask_2_t: Array | None = None,
) -> tuple[Array, Array]:
    """The implicit segment scores ``S_i = Σ_t γ^t α log π(a_t|s_t)`` of one query.

    Args:
      logp_1_t, logp_2_t: ``[k]`` per-step log π of segment 1 and 2 (summed over
        action dimensions).
      alpha: temperature α.
      discount: γ.
      mask_1_t, mask_2_t: optional ``[k]``; steps with mask 0 do not count.

    Returns:
      ``(S_1, S_2)``, two scalars: ``S_i`` is the regret-model score
      ``Σ γ^t Â`` of segment i with ``Â = α log π`` (a higher score is preferred).
    """
    chex.assert_rank([logp_1_t, logp_2_t], 1)
    s_1 = regret_score(alpha * _masked(logp_1_t, mask_1_t), discount=discount, mask_t=mask_1_t)
    s_2 = regret_score(alpha * _masked(logp_2_t, mask_2_t), discount=discount, mask_t=mask_2_t)
    return s_1, s_2


def cpl_loss(
    logp_1_t: Array,
    logp_2_t: Array,
    label: Array,
    *,
    alpha: float | Array,
    bias: float | Array,
    discount: float | Array = 1.0,
    mask_1_t: Array | None = None,
    mask_2_t: Array | None = None,
) -> Array:
    """CPL loss of one query (Hejna et al. 2023, eq. 5 with the conservative bias).

    ``S_i = Σ_t γ^t α log π(a^i_t|s^i_t)`` (masked steps excluded) and

        loss = −[ μ log σ(S_1 − λ S_2) + (1 − μ) log σ(S_2 − λ S_1) ],   λ = bias.

    With ``bias = 1`` this equals ``prefrl.preference.bt_loss(S_1 − S_2, μ)``.

    Args:
      logp_1_t, logp_2_t: ``[k]`` per-step log π of the two segments.
      label: scalar μ = P(σ¹ ≻ σ²): 1 first preferred, ½ tie, 0 second.
      alpha: temperature α > 0.
      bias: conservative bias λ ∈ (0, 1].
      discount: γ over steps inside a segment.
      mask_1_t, mask_2_t: optional ``[k]`` masks for segments that end early.

    Returns:
      The scalar loss.
    """
    chex.assert_rank(label, 0)
    s_1, s_2 = cpl_scores(
        logp_1_t, logp_2_t, alpha=alpha, discount=discount, mask_1_t=mask_1_t, mask_2_t=mask_2_t
    )
    if isinstance(bias, int | float) and bias == 1.0:
        # λ = 1 is exactly the Bradley–Terry model over the scores S_i.
        return bt_loss(s_1 - s_2, label)
    return -(
        label * jax.nn.log_sigmoid(s_1 - bias * s_2)
        + (1.0 - label) * jax.nn.log_sigmoid(s_2 - bias * s_1)
    )


def dpo_loss(
    logp_1_t: Array,
    logp_2_t: Array,
    ref_logp_1_t: Array,
    ref_logp_2_t: Array,
    label: Array,
    *,
    beta: float | Array,
    bias: float | Array = 1.0,
    discount: float | Array = 1.0,
    mask_1_t: Array | None = None,
    mask_2_t: Array | None = None,
) -> Array:
    """Contrastive DPO loss of one query (Rafailov et al. 2023; CPL's CPL-KL).

    :func:`cpl_loss` with ``α log π`` replaced by ``β log(π/π_ref)``:
    ``S_i = β Σ_t γ^t [log π(a^i_t|s^i_t) − log π_ref(a^i_t|s^i_t)]``. With
    ``bias = 1`` (DPO proper) the loss is ``bt_loss(S_1 − S_2, μ)`` and is
    unchanged by any shift common to both scores.

    Args:
      logp_1_t, logp_2_t: ``[k]`` per-step log π of the two segments.
      ref_logp_1_t, ref_logp_2_t: ``[k]`` per-step log π_ref (treated as constants
        by the caller: wrap in ``jax.lax.stop_gradient`` if they depend on parameters).
      label: scalar μ.
      beta: KL temperature β > 0.
      bias: conservative bias λ (1 for DPO).
      discount, mask_1_t, mask_2_t: as in :func:`cpl_loss`.
    """
    chex.assert_equal_shape([logp_1_t, ref_logp_1_t])
    chex.assert_equal_shape([logp_2_t, ref_logp_2_t])
    return cpl_loss(
        _masked(logp_1_t, mask_1_t) - _masked(ref_logp_1_t, mask_1_t),
        _masked(logp_2_t, mask_2_t) - _masked(ref_logp_2_t, mask_2_t),
        label,
        alpha=beta,
        bias=bias,
        discount=discount,
        mask_1_t=mask_1_t,
        mask_2_t=mask_2_t,
    )


# ---------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class CPLConfig:
    """Settings of the CPL learner (defaults: Hejna et al. 2023's MetaWorld setup)."""

    alpha: float = config_lib.field(0.1, "temperature α of A = α log π")
    bias: float = config_lib.field(0.5, "conservative bias λ in (0, 1]; 1 = plain BT")
    discount: float = config_lib.field(1.0, "discount γ over steps inside a segment")
    bc_weight: float = config_lib.field(
        0.0, "weight of the BC regulariser −mean log π over all steps (CPL-BC); 0 = plain CPL"
    )
    squash_jacobian: bool = config_lib.field(
        True, "score with the density on the box (incl. the tanh Jacobian); false = the "
        "Gaussian density of the pre-squash action atanh(a)"
    )
    bc_data: str = config_lib.field(
        "all", "steps the BC regulariser covers: 'all' (both segments) or 'preferred' "
        "(each segment weighted by its preference probability: μ for σ¹, 1 − μ for σ²)"
    )

    def __post_init__(self) -> None:
        _check_common(self.bias, self.discount, self.bc_weight)
        if self.bc_data not in BC_DATA:
            raise ValueError(f"bc_data must be one of {BC_DATA}, got {self.bc_data!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """Settings of contrastive DPO (CPL-KL): scores ``β Σ γ^t log(π/π_ref)``."""

    beta: float = config_lib.field(0.1, "KL temperature β of β log(π/π_ref)")
    bias: float = config_lib.field(1.0, "conservative bias λ in (0, 1]; 1 = DPO proper")
    discount: float = config_lib.field(1.0, "discount γ over steps inside a segment")
    bc_weight: float = config_lib.field(0.0, "weight of a BC regulariser −mean log π")

    def __post_init__(self) -> None:
        _check_common(self.bias, self.discount, self.bc_weight)
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


BC_DATA = ("all", "preferred")


def _check_common(bias: float, discount: float, bc_weight: float) -> None:
    if not 0.0 < bias <= 1.0:
        raise ValueError(f"bias (λ) must be in (0, 1], got {bias}")
    if not 0.0 < discount <= 1.0:
        raise ValueError(f"discount must be in (0, 1], got {discount}")
    if not bc_weight >= 0.0:
        raise ValueError(f"bc_weight must be >= 0, got {bc_weight}")


# ---------------------------------------------------------------- state


@struct.dataclass
class CPLState:
    """Learner state; ``ref_params`` is the frozen π_ref (None for CPL)."""

    params: Params
    opt_state: optax.OptState
    step: Array
    ref_params: Params = None


def policy_log_prob(network: nn.Module, params: Params, obs: Array, action: Array, *,
                    squash_jacobian: bool = True) -> Array:
    """``log π(a|s)`` of the tanh-Gaussian policy: ``[..., obs], [..., act] -> [...]``.

    With ``squash_jacobian=False`` the density of the pre-squash action
    ``u = atanh(a)``: ``log N(u; μ, σ)``, i.e. the box density plus
    ``Σ_i log(1 − a_i²)``. The two differ by a term that depends on the
    action only, so their gradients with respect to the parameters are equal.
    """
    mean, log_std = network.apply(params, obs)
    log_prob = tanh_gaussian_log_prob(mean, log_std, action)
    if squash_jacobian:
        return log_prob
    return log_prob + squash_log_det(action)


def squash_log_det(action: Array) -> Array:
    """``Σ_i log(1 − a_i²)`` (clipped as in the density): ``[..., act] -> [...]``.

    ``log N(atanh a; μ, σ) = log π_box(a) + squash_log_det(a)``.
    """
    a = jnp.clip(action, -1.0 + ACTION_EPS, 1.0 - ACTION_EPS)
    return jnp.sum(jnp.log1p(-(a**2)), axis=-1)


def pair_log_probs(
    network: nn.Module, params: Params, batch: PairBatch, *, squash_jacobian: bool = True
) -> tuple[Array, Array]:
    """Per-step log π of both segments of every query: ``([B, k], [B, k])``."""
    return (
        policy_log_prob(network, params, batch.obs_1, batch.action_1,
                        squash_jacobian=squash_jacobian),
        policy_log_prob(network, params, batch.obs_2, batch.action_2,
                        squash_jacobian=squash_jacobian),
    )


def _bc_nll(logp_1: Array, logp_2: Array, batch: PairBatch, bc_data: str = "all") -> Array:
    """BC regulariser: −(weighted) mean log π over the unmasked steps.

    ``bc_data="all"`` (CPL's default) covers every step of both segments;
    ``"preferred"`` weights segment 1's steps by μ and segment 2's by 1 − μ, so
    it clones the preferred behaviour only (ties: both at ½). Per-query
    weights, when present, multiply in.
    """
    m_1 = batch.mask_1.astype(logp_1.dtype)
    m_2 = batch.mask_2.astype(logp_2.dtype)
    if bc_data == "preferred":
        mu = batch.label.astype(logp_1.dtype)[:, None]
        m_1, m_2 = m_1 * mu, m_2 * (1.0 - mu)
    if batch.weight is not None:
        w = batch.weight.astype(logp_1.dtype)[:, None]
        m_1, m_2 = m_1 * w, m_2 * w
    total = (jnp.sum(jnp.where(m_1 > 0, logp_1 * m_1, 0.0))
             + jnp.sum(jnp.where(m_2 > 0, logp_2 * m_2, 0.0)))
    return -total / jnp.maximum(jnp.sum(m_1) + jnp.sum(m_2), 1e-8)


def segment_scores(
    network: nn.Module, params: Params, obs: Array, action: Array, mask: Array, *,
    ref_params: Params = None, alpha: float | Array = 1.0, discount: float | Array = 1.0,
    squash_jacobian: bool = True,
) -> Array:
    """The implicit scores ``S = Σ_t γ^t α log π(a_t|s_t)`` of N segments ``[N]``.

    With ``ref_params`` (contrastive DPO) ``log π`` becomes ``log π − log π_ref``.
    ``obs [N, k, obs]``, ``action [N, k, act]``, ``mask [N, k]``; ``log π`` as in
    :func:`policy_log_prob` (``squash_jacobian``). The score CPL's loss compares,
    used wherever a trained policy's preferences are read (held-out accuracy,
    sweeps, the demo).
    """
    logp = policy_log_prob(network, params, obs, action, squash_jacobian=squash_jacobian)
    if ref_params is not None:
        ref = policy_log_prob(network, ref_params, obs, action, squash_jacobian=squash_jacobian)
        logp = _masked(logp, mask) - _masked(jax.lax.stop_gradient(ref), mask)
    return jax.vmap(lambda l_t, m_t: regret_score(
        alpha * _masked(l_t, m_t), discount=discount, mask_t=m_t))(logp, mask)


def pair_scores(network: nn.Module, params: Params, batch: PairBatch, **kwargs: Any
                ) -> tuple[Array, Array]:
    """``(S_1 [B], S_2 [B])``: :func:`segment_scores` of both sides of every query."""
    return (segment_scores(network, params, batch.obs_1, batch.action_1, batch.mask_1, **kwargs),
            segment_scores(network, params, batch.obs_2, batch.action_2, batch.mask_2, **kwargs))


def implicit_advantage(network: nn.Module, params: Params, alpha: float,
                       squash_jacobian: bool = True) -> Any:
    """CPL's learned advantage ``Â(s, a) = α log π(a|s)``: ``[..., obs], [..., act] -> [...]``.

    ``log π`` as CPL was trained with it (``squash_jacobian``, see :func:`policy_log_prob`).
    """
    return lambda obs, action: alpha * policy_log_prob(network, params, obs, action,
                                                       squash_jacobian=squash_jacobian)


def preference_metrics(s_1: Array, s_2: Array, label: Array) -> dict[str, Array]:
    """Accuracy of the implicit preference ``S_1 > S_2`` on non-tied labels, ``[B]`` inputs.

    :func:`prefrl.evaluation.accuracy_sums` (traceable), plus the mean score gap.
    """
    correct, count = evaluation.accuracy_sums(s_1, s_2, label)
    return {
        "accuracy": correct / jnp.maximum(count, 1.0),
        "score_gap": jnp.mean(jnp.abs(s_1 - s_2)),
    }


# ---------------------------------------------------------------- factories


def _make(
    network: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    temperature: float,
    bias: float,
    discount: float,
    bc_weight: float,
    use_reference: bool,
    squash_jacobian: bool = True,
    bc_data: str = "all",
) -> Learner:
    def loss_fn(params: Params, ref_params: Params, batch: PairBatch) -> tuple[Array, dict]:
        chex.assert_rank([batch.obs_1, batch.action_1, batch.mask_1, batch.label], [3, 3, 2, 1])
        logp_1, logp_2 = pair_log_probs(network, params, batch,
                                        squash_jacobian=squash_jacobian)
        if use_reference:
            ref_1, ref_2 = pair_log_probs(network, ref_params, batch)
            ref_1, ref_2 = jax.lax.stop_gradient(ref_1), jax.lax.stop_gradient(ref_2)
            score_1 = _masked(logp_1, batch.mask_1) - _masked(ref_1, batch.mask_1)
            score_2 = _masked(logp_2, batch.mask_2) - _masked(ref_2, batch.mask_2)
        else:
            score_1, score_2 = logp_1, logp_2
        per_query = jax.vmap(
            lambda l1, l2, y, m1, m2: cpl_loss(
                l1, l2, y, alpha=temperature, bias=bias, discount=discount,
                mask_1_t=m1, mask_2_t=m2,
            )
        )(score_1, score_2, batch.label, batch.mask_1, batch.mask_2)
        s_1, s_2 = jax.vmap(
            lambda l1, l2, m1, m2: cpl_scores(
                l1, l2, alpha=temperature, discount=discount, mask_1_t=m1, mask_2_t=m2
            )
        )(score_1, score_2, batch.mask_1, batch.mask_2)
        if batch.weight is None:
            pref_loss = jnp.mean(per_query)
        else:  # per-query weights [B] (e.g. 0 for queries an oracle skipped)
            chex.assert_equal_shape([batch.weight, per_query])
            w = batch.weight.astype(per_query.dtype)
            pref_loss = jnp.sum(w * per_query) / jnp.maximum(jnp.sum(w), 1e-8)
        bc = _bc_nll(logp_1, logp_2, batch, bc_data)
        loss = pref_loss + bc_weight * bc
        metrics = {"loss": loss, "pref_loss": pref_loss, "bc_nll": bc}
        metrics.update(preference_metrics(s_1, s_2, batch.label))
        return loss, metrics

    def init(key: Array, example_batch: PairBatch) -> CPLState:
        """A randomly initialised policy; the example batch fixes the shapes.

        Start from given parameters (e.g. BC pre-training) with
        ``state.replace(params=p, opt_state=optimizer.init(p))``; contrastive
        DPO needs π_ref: ``state.replace(ref_params=ref)`` (and usually
        ``params=ref``: training starts at π_ref).
        """
        params = network.init(key, example_batch.obs_1[0, 0])
        return CPLState(params=params, opt_state=optimizer.init(params),
                        step=jnp.zeros((), jnp.int32))

    def update(state: CPLState, batch: PairBatch) -> tuple[CPLState, dict[str, Array]]:
        """One gradient step on a :class:`PairBatch`; returns ``(state, metrics)``."""
        if use_reference and state.ref_params is None:
            raise ValueError("contrastive DPO needs π_ref: set it with "
                             "state.replace(ref_params=…) (a frozen BC policy)")
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, state.ref_params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, metrics

    return Learner(init=init, update=update)


def default_network(action_dim: int, hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    """CPL's policy: a tanh-squashed Gaussian with a state-dependent standard deviation."""
    return GaussianPolicy(action_dim=int(action_dim), hidden=tuple(hidden),
                          state_dependent_std=True)


def default_optimizer(learning_rate: float = 1e-4) -> optax.GradientTransformation:
    """Adam at CPL's 1e-4; the learning rate is injected (an array in the optimiser state,
    so ``jax.vmap`` over states with different learning rates works)."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def make(config: CPLConfig, policy_network: nn.Module,
         optimizer: optax.GradientTransformation | None = None
         ) -> Learner[CPLState, PairBatch]:
    """CPL / CPL-BC learner over :class:`PairBatch` es.

    Args:
      config: :class:`CPLConfig` (``bc_weight > 0`` gives CPL-BC).
      policy_network: a ``prefrl.networks.GaussianPolicy`` (tanh-squashed),
        e.g. :func:`default_network`.
      optimizer: any optax transform; default :func:`default_optimizer`.

    Returns:
      ``Learner(init, update)``: ``init(key, example_batch) -> CPLState`` and
      ``update(state, batch) -> (state, metrics)`` with metrics ``loss``,
      ``pref_loss``, ``bc_nll``, ``accuracy``, ``score_gap``, ``grad_norm``.
    """
    optimizer = default_optimizer() if optimizer is None else optimizer
    return _make(
        policy_network, optimizer, temperature=config.alpha, bias=config.bias,
        discount=config.discount, bc_weight=config.bc_weight, use_reference=False,
        squash_jacobian=config.squash_jacobian, bc_data=config.bc_data,
    )


def make_dpo(config: DPOConfig, policy_network: nn.Module,
             optimizer: optax.GradientTransformation | None = None
             ) -> Learner[CPLState, PairBatch]:
    """Contrastive DPO learner: ``init(key, example_batch)``, then π_ref by ``state.replace``.

    ``state.ref_params`` (π_ref, a BC policy of the same ``policy_network``)
    receives no gradient; ``update`` refuses a state without it. Start at π_ref
    with ``state.replace(params=ref, ref_params=ref)``. Metrics as in :func:`make`.
    """
    optimizer = default_optimizer() if optimizer is None else optimizer
    return _make(
        policy_network, optimizer, temperature=config.beta, bias=config.bias,
        discount=config.discount, bc_weight=config.bc_weight, use_reference=True,
    )
