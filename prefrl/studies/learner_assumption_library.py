"""The library Π of the learner-assumption study: its policies, rollouts and successor features.

Π is a set of PPO checkpoints (default: the task expert's snapshots and its
final policy). Each π ∈ Π is rolled out with the C engine (sampled actions)
from fresh resets *and* from the pool's own segment start states
(:func:`library_rollouts`, :meth:`prefrl.rollout.BatchedEnv.set_state`), so ψ
is fitted where the regret needs it. ψ^π is a :class:`PsiNetwork` head per
policy regressed on Monte-Carlo φ-returns (:func:`fit_library_psi`,
:func:`prefrl.learners.successor_features.fit_successor_features`);
:func:`psi_fit_quality` measures it on held-out rollouts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prefrl import checkpoints
from prefrl.learners import successor_features as sf
from prefrl.networks import MLP
from prefrl.policies import PolicyFn
from prefrl.studies.experts import find_experts
from prefrl.studies.learner_assumption_config import (
    LearnerAssumptionConfig,
    named_key,
    repo_root,
)
from prefrl.types import Segments

Array = jax.Array
PRNGKey = jax.Array
Params = Any


# --------------------------------------------------------------------------- #
# The library Π and its rollouts
# --------------------------------------------------------------------------- #


class StartStates(NamedTuple):
    """Stored physics states to restart environments from: ``qpos [n, nq]``, ``qvel [n, nv]``,
    ``steps [n]`` (episode steps already taken, for the time limit)."""

    qpos: np.ndarray
    qvel: np.ndarray
    steps: np.ndarray


def segment_start_states(segments: Segments, indices: Any, episode_length: int) -> StartStates:
    """The full physics state of s_0 of ``segments[indices]`` (``Segments.qpos/qvel[:, 0]``).

    ``steps`` is the segment's start time in its trajectory (``source[:, 1]``)
    modulo the episode length: pools are cut from rollouts that start at a
    reset, so that is the step of the episode.
    """
    idx = np.asarray(indices, np.int64)
    qpos = np.asarray(segments.qpos)[idx, 0]
    qvel = np.asarray(segments.qvel)[idx, 0]
    if qpos.ndim != 2 or qpos.shape[-1] == 0:
        raise ValueError(f"the pool holds no physics states (qpos {np.shape(segments.qpos)}): "
                         "segments cut by prefrl.data.segments.segment from a BatchedEnv rollout "
                         "carry them")
    steps = np.asarray(segments.source)[idx, 1].astype(np.int64) % int(episode_length)
    return StartStates(qpos.astype(np.float64), qvel.astype(np.float64), steps)


def library_rollouts(
    task: Any,
    policies: Sequence[PolicyFn],
    *,
    steps: int,
    reset_envs: int,
    starts: StartStates | None,
    seed: int,
    num_threads: int | None = None,
) -> sf.LibraryRollouts:
    """Roll out every π ∈ Π from the same B start states: ``[Π, T, B, …]`` float32 numpy.

    Environments ``0 … reset_envs − 1`` start from fresh resets
    (``BatchedEnv(seed=seed)``, the same for every policy); the next
    ``len(starts)`` restart from the stored physics states ``starts``
    (:meth:`prefrl.rollout.BatchedEnv.set_state`), so ψ is fitted where the
    regret needs it: at the pool's s_0 and s_k. Policy i acts with key
    ``fold_in(key(seed), i)`` (sampled actions: ψ^π is the successor feature
    of the stochastic policy). ``truncated`` marks the time limit (ψ's
    targets bootstrap there); half-cheetah never terminates.
    """
    from prefrl.rollout import BatchedEnv

    num_starts = 0 if starts is None else int(starts.qpos.shape[0])
    batch = int(reset_envs) + num_starts
    if batch < 1:
        raise ValueError("library rollouts need at least one environment")
    if not policies:
        raise ValueError("the library Π is empty")
    fields: dict[str, list[np.ndarray]] = {k: [] for k in sf.LibraryRollouts._fields}
    for i, policy in enumerate(policies):
        with BatchedEnv(task, batch, seed=int(seed), num_threads=num_threads,
                        dtype=np.float32) as env:
            env.reset()
            if num_starts:
                state = env.get_state()
                qpos, qvel, ep_steps = state["qpos"], state["qvel"], state["steps"]
                qpos[reset_envs:], qvel[reset_envs:] = starts.qpos, starts.qvel
                ep_steps[reset_envs:] = starts.steps
                env.set_state(qpos, qvel, ep_steps)
            traj = env.rollout(policy, int(steps), jax.random.fold_in(jax.random.key(seed), i))
        for name in fields:
            fields[name].append(np.asarray(getattr(traj, name)))
    out = {k: np.stack(v) for k, v in fields.items()}
    for name in ("obs", "action", "next_obs"):
        out[name] = out[name].astype(np.float32)
    return sf.LibraryRollouts(**out)


def start_indices(config: LearnerAssumptionConfig, name: str, candidates: Any
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pool segments whose s_0 Π's fitting and held-out rollouts restart from.

    A permutation of ``candidates`` (segment indices) keyed by ``(config.seed,
    name, "starts")``: the first ``library_pool_envs`` for the ψ fit
    (:func:`fit_rollouts`), the next ``heldout_envs − heldout_envs // 2`` for the
    ψ-fit quality (:func:`heldout_rollouts`). ``ValueError`` if there are too few.
    """
    cand = np.asarray(candidates, np.int64)
    n_lib = config.library_pool_envs
    n_held = config.heldout_envs - config.heldout_envs // 2
    if n_lib + n_held > cand.shape[0]:
        raise ValueError(f"{n_lib} + {n_held} start states requested (library_pool_envs, "
                         f"heldout_envs) from a pool of {cand.shape[0]} segments")
    order = cand[np.asarray(jax.random.permutation(named_key(config, name, "starts"),
                                                   cand.shape[0]))]
    return order[:n_lib], order[n_lib:n_lib + n_held]


def fit_rollouts(config: LearnerAssumptionConfig, task: Any, segments: Segments,
                 policies: Sequence[PolicyFn], starts: np.ndarray) -> sf.LibraryRollouts:
    """Π's rollouts ψ is fitted on: ``library_reset_envs`` fresh resets, then the pool's
    segments ``starts`` (:func:`start_indices`), ``library_steps`` long."""
    return library_rollouts(task, policies, steps=config.library_steps,
                            reset_envs=config.library_reset_envs,
                            starts=segment_start_states(segments, starts, task.episode_length),
                            seed=config.seed * 1000 + 17)


def heldout_rollouts(config: LearnerAssumptionConfig, task: Any, segments: Segments,
                     policies: Sequence[PolicyFn], starts: np.ndarray) -> sf.LibraryRollouts:
    """Other rollouts of Π (other resets, other pool start states) for the ψ-fit quality."""
    return library_rollouts(task, policies, steps=config.heldout_steps,
                            reset_envs=config.heldout_envs // 2,
                            starts=segment_start_states(segments, starts, task.episode_length),
                            seed=config.seed * 1000 + 29)


class Library(NamedTuple):
    """Π: checkpoint paths (sorted by training progress) and their sampling policies."""

    paths: tuple[Path, ...]
    policies: tuple[PolicyFn, ...]

    @property
    def names(self) -> list[str]:
        return [f"{p.parent.name}/{p.name}" for p in self.paths]


def load_library(config: LearnerAssumptionConfig, task: Any) -> Library:
    """Load Π for ``task`` and check every policy's observation size (before any fitting).

    ``config.library`` empty: every checkpoint of the task's expert folder
    (``prefrl.studies.experts.find_experts``: snapshots and ``final.npz``, the 100 %
    snapshot merged with ``final.npz``); otherwise the listed files and
    folders. ``library_final=False`` drops the final expert of each folder.
    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for a
    policy whose observation size is not the task's.
    """
    experts_root = Path(config.experts_dir) if config.experts_dir else (
        repo_root() / "experiments" / "experts")
    sources = [Path(p) for p in config.library] or [experts_root / task.name]
    paths: list[Path] = []
    for src in sources:
        if src.is_dir():
            found = list(find_experts(src, None).checkpoints)
            paths += found if config.library_final else found[:-1]
        elif src.is_file():
            paths.append(src)
        else:
            raise FileNotFoundError(f"library path {src} does not exist (a PPO checkpoint "
                                    "file or a folder of them)")
    if not paths:
        raise ValueError(f"the library Π for {task.name} is empty ({[str(s) for s in sources]}, "
                         f"library_final={config.library_final})")
    policies = []
    for path in paths:
        try:
            policy, _ = checkpoints.load_policy(path, deterministic=False, obs_dim=task.obs_dim)
        except ValueError as err:  # keeps its kind: a bad file stays an input error (exit 1)
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            raise type(err)(f"library policy {message}") from err
        policies.append(policy)
    return Library(tuple(paths), tuple(policies))


# --------------------------------------------------------------------------- #
# Successor features ψ^π of the library
# --------------------------------------------------------------------------- #


class PsiNetwork(nn.Module):
    """One policy's ψ: ``[..., obs] -> [..., d]``.

    Inputs standardised by fixed statistics (the library rollouts'); the MLP's
    output is multiplied by ``scale`` (1/(1 − γ), the size of a discounted sum
    of unit features), so the net itself works at unit scale.
    """

    hidden: tuple[int, ...]
    width: int
    obs_mean: tuple[float, ...]
    obs_std: tuple[float, ...]
    scale: float = 1.0

    @nn.compact
    def __call__(self, obs: Array) -> Array:
        shape = (1,) * (obs.ndim - 1) + (-1,)
        mean = jnp.asarray(self.obs_mean, obs.dtype).reshape(shape)
        std = jnp.asarray(self.obs_std, obs.dtype).reshape(shape)
        out = MLP(tuple(self.hidden), int(self.width), nn.relu, out_scale=0.01)((obs - mean) / std)
        return self.scale * out


def psi_network_for(config: LearnerAssumptionConfig, obs: np.ndarray, width: int) -> PsiNetwork:
    """A :class:`PsiNetwork` standardised by the statistics of ``obs [..., obs]``."""
    flat = np.asarray(obs, np.float64).reshape(-1, np.shape(obs)[-1])
    mean, std = flat.mean(0), np.maximum(flat.std(0), 1e-3)
    return PsiNetwork(tuple(config.psi_hidden), int(width), tuple(float(x) for x in mean),
                      tuple(float(x) for x in std), 1.0 / (1.0 - config.discount))


def sf_fit_config(config: LearnerAssumptionConfig) -> sf.SFFitConfig:
    """The ψ-regression settings of ``config`` (``psi_*``)."""
    return sf.SFFitConfig(method=config.psi_method, num_rounds=config.psi_rounds,
                                 steps_per_round=config.psi_steps_per_round,
                                 batch_size=config.psi_batch_size,
                                 learning_rate=config.psi_learning_rate)


def check_psi_width(psi_network: nn.Module, obs: Any, width: int) -> None:
    """``ValueError`` unless ``psi_network`` maps observations like ``obs`` to ``[width]``."""
    try:
        params = jax.eval_shape(psi_network.init, jax.random.key(0), jnp.zeros(obs.shape[-1:]))
        out = jax.eval_shape(psi_network.apply, params, jnp.zeros(obs.shape[-1:]))
    except Exception as err:  # flax raises its own error types on shape mismatches
        raise ValueError(f"the ψ network rejects observations of size {obs.shape[-1]}: "
                         f"{err}") from err
    if out.shape != (width,):
        raise ValueError(f"feature width mismatch: φ has width {width} but the ψ network "
                         f"outputs shape {out.shape}")


@functools.partial(jax.jit, static_argnames=("fit_config", "psi_network", "discount"))
def _fit_psi(key: PRNGKey, rollouts: sf.LibraryRollouts, phi_t: Array, *,
             fit_config: sf.SFFitConfig, psi_network: nn.Module, discount: float
             ) -> tuple[Params, dict]:
    key_init, key_fit = jax.random.split(key)
    num_policies = rollouts.obs.shape[0]
    init = lambda k: psi_network.init(k, rollouts.obs[0, 0, 0])
    params = jax.vmap(init)(jax.random.split(key_init, num_policies))
    return sf.fit_successor_features(key_fit, fit_config, psi_network, params, rollouts,
                                            phi_t, discount=discount)


def fit_library_psi(
    key: PRNGKey,
    fit_config: sf.SFFitConfig,
    psi_network: nn.Module,
    rollouts: sf.LibraryRollouts,
    phi_t: Array,
    *,
    discount: float,
) -> tuple[Params, dict[str, Array]]:
    """Fresh ψ heads ``[Π, …]`` regressed on the library's rollouts (one jitted call).

    ``phi_t [Π, T, B, d]`` is φ on ``rollouts``; the widths of φ and of the
    ψ network, and the observation size, are checked before anything runs
    (``ValueError``). Returns ``(psi_params, {"loss": [rounds, Π]})``.
    """
    phi_t = jnp.asarray(phi_t)
    if phi_t.ndim != 4 or phi_t.shape[:3] != np.shape(rollouts.obs)[:3]:
        raise ValueError(f"phi_t must be [Π, T, B, d] matching the rollouts "
                         f"{np.shape(rollouts.obs)[:3]}, got {phi_t.shape}")
    check_psi_width(psi_network, rollouts.obs, int(phi_t.shape[-1]))
    rollouts = sf.LibraryRollouts(*(jnp.asarray(x) for x in rollouts))
    return _fit_psi(key, rollouts, phi_t, fit_config=fit_config, psi_network=psi_network,
                    discount=float(discount))


def psi_fit_quality(
    psi_t: Array,
    next_psi_t: Array,
    phi_t: Array,
    terminated_t: Array,
    truncated_t: Array,
    *,
    discount: float,
    w: Array | None = None,
) -> dict[str, Array]:
    """How well ψ predicts Monte-Carlo discounted φ-returns on held-out rollouts.

    All inputs ``[Π, T, B, …]`` (``d`` last for ψ, φ). ``G_t`` is
    ``sf.successor_targets(…, method="mc")``: Σ γ^j φ_{t+j} to the end
    of the rollout (or a truncation), bootstrapped there with ψ(s_{t+1}).
    Only t < ⌈T/2⌉ counts, so the bootstrap term γ^(T−t) ψ(s_T) weighs at
    most ``tail_weight = γ^(T − ⌈T/2⌉ + 1)``.

    Returns scalars ``psi_rel_error = ‖ψ − G‖_F / ‖G‖_F`` (0: exact, 1: ψ ≡ 0),
    ``tail_weight`` and, with ``w [d]``, ``value_rel_error = ‖w·ψ − w·G‖ /
    ‖w·G − mean(w·G)‖`` (0: exact values; 1: no better than the mean value).
    """
    chex_shapes = [np.shape(x) for x in (psi_t, next_psi_t, phi_t)]
    if len(set(chex_shapes)) != 1 or len(chex_shapes[0]) != 4:
        raise ValueError(f"psi_t, next_psi_t, phi_t must be equal [Π, T, B, d], got "
                         f"{chex_shapes}")
    targets = jax.vmap(lambda p, n, te, tr: sf.successor_targets(
        p, n, te, tr, discount=discount, method="mc"))(phi_t, next_psi_t, terminated_t,
                                                       truncated_t)
    steps = psi_t.shape[1]
    keep = max(1, math.ceil(steps / 2))
    psi, g = psi_t[:, :keep], targets[:, :keep]
    out = {
        "psi_rel_error": jnp.linalg.norm(psi - g) / jnp.maximum(jnp.linalg.norm(g), 1e-12),
        "tail_weight": jnp.asarray(discount ** (steps - keep + 1), jnp.float32),
    }
    if w is not None:
        v_psi, v_g = psi @ w, g @ w
        spread = jnp.linalg.norm(v_g - jnp.mean(v_g))
        out["value_rel_error"] = jnp.linalg.norm(v_psi - v_g) / jnp.maximum(spread, 1e-12)
    return out


@functools.partial(jax.jit, static_argnames=("psi_network",))
def psi_on(psi_network: nn.Module, psi_params: Params, obs: Array) -> Array:
    """``[Π, …, d]``: every head on ``obs [..., obs]`` (the same states for each π)."""
    return jax.vmap(lambda p: psi_network.apply(p, obs))(psi_params)


@functools.partial(jax.jit, static_argnames=("psi_network",))
def psi_own(psi_network: nn.Module, psi_params: Params, obs: Array) -> Array:
    """``[Π, …, d]``: head π on its own rows ``obs [Π, …, obs]``."""
    return jax.vmap(psi_network.apply)(psi_params, obs)


__all__ = [
    "Library",
    "PsiNetwork",
    "StartStates",
    "check_psi_width",
    "fit_library_psi",
    "fit_rollouts",
    "heldout_rollouts",
    "library_rollouts",
    "load_library",
    "psi_fit_quality",
    "psi_network_for",
    "psi_on",
    "psi_own",
    "segment_start_states",
    "sf_fit_config",
    "start_indices",
]
