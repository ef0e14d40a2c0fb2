"""Learners that really assume regret: label model × learner on half-cheetah (issue #13).

Rows: the preference model that produced the labels (DESIGN.md §2–§3) —
partial return Σ_t r_t, or regret Σ_t γ^t A_E(s_t, a_t) with the expert
critic V_E standing in for V*. Columns: four learners (DESIGN.md §4), all
fitted to the *same* queries of a seed:

* ``reward_ppo`` — r̂ by the partial-return BT loss (Christiano et al. 2017,
  ``reward_model``), then PPO from scratch on the standardised r̂;
* ``regret_sf_ppo`` — r̂ = w·φ fitted under the **regret** model (Knox et al.
  2022, ``regret_sf``)::

      regret_r̂(σ) = V̂*(s_0) − [Σ_{t<k} γ^t w·φ(s_t, a_t) + γ^k V̂*(s_k)]
      V̂*(s)       = max_{π∈Π} w·ψ^π(s),   ψ^π(s) = E_π[Σ_t γ^t φ(s_t, a_t) | s_0 = s]

  Π is a library of policies (default: the task expert's snapshots and its
  final policy; ``library_final=False`` drops the final expert, whose critic
  is the regret oracle's V_E). Each π ∈ Π is rolled out with the C engine
  (sampled actions) from fresh resets *and* from the pool's own segment start
  states (:func:`library_rollouts`, :meth:`prefrl.rollout.BatchedEnv.set_state`),
  ψ^π is regressed on Monte-Carlo φ-returns of its rollouts (bootstrapped
  with ψ at truncation: :func:`prefrl.learners.regret_sf.fit_successor_features`),
  then w is fitted by the BT loss on −regret_r̂. φ is frozen (the last hidden
  layer of the partial-return r̂ fitted on the same labels) or learned with
  ψ refitted every ``refit_every`` updates (``regret_sf.alternate``). Then
  PPO on the standardised r̂;
* ``advantage_ppo`` — Â fitted by the BT loss on Σ γ^t Â (Knox et al. 2023,
  ``reward_model(assumption="advantage")``) and handed to PPO as if it were a
  reward: the "mistake" of their title;
* ``advantage_greedy`` — the same Â used greedily: advantage-weighted
  regression on the training segments' own actions (``advantage_policy``).

Per cell: held-out preference accuracy against *both* oracles' labels (ties
excluded; the learned score is Σ r̂, −regret_r̂ or Σ γ^t Â), EPIC distance
(Gleave et al. 2021) of the function PPO optimises to the true reward, and
the true return of the resulting policy (deterministic actions, the same
start states for every policy). Across seeds: IQM with a 95 % bootstrap
interval. A seed resamples the held-out half of the segments, the queries,
the validation split and every initialisation.

ψ-fit quality (``regret_sf_ppo`` cells): on held-out rollouts of every
π ∈ Π (other resets and pool start states, ``heldout_steps`` long),
``psi_rel_error = ‖ψ^π(s_t) − G_t‖_F / ‖G_t‖_F`` with G_t the Monte-Carlo
discounted φ-return to the end of the rollout (tail bootstrapped with ψ;
only the first half of each rollout counts, so the tail weighs at most
``tail_weight`` ≈ γ^(T/2)), and ``value_rel_error`` the same for the values
w·ψ vs w·G relative to the spread of w·G (1 − R² under a square root).

Cells are resumable: one JSON file per (task, label, learner, seed), written
atomically and skipped when present (its settings fingerprint must match).

Public API: ``LearnerAssumptionConfig``, ``QUICK``, ``quick_config``,
``StartStates``, ``segment_start_states``, ``library_rollouts``,
``load_library``, ``PsiNetwork``, ``fit_library_psi``, ``psi_fit_quality``,
``TaskContext``, ``run_cell``, ``cell_path``, ``run``, ``format_markdown``,
``summary_line``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prefrl import config as config_lib
from prefrl import evaluation, preference
from prefrl.config import field
from prefrl.learners import advantage_policy, ppo, regret_sf
from prefrl.learners import reward_model as rm
from prefrl.networks import MLP, GaussianPolicy
from prefrl.policies import Policy, PolicyFn, policy_fn
from prefrl.types import PairBatch, Segments

Array = jax.Array
PRNGKey = jax.Array
Params = Any
Log = Callable[[str], None]

LABELS = ("partial_return", "regret")
LEARNERS = ("reward_ppo", "regret_sf_ppo", "advantage_ppo", "advantage_greedy")
PPO_LEARNERS = ("reward_ppo", "regret_sf_ppo", "advantage_ppo")
METRICS = ("acc_pr", "acc_regret", "epic_r", "return")
TASKS = ("target-speed", "run")
RESULT_STEM = "learner_assumption"

# Fields that do not change any cell's numbers (which cells run, where, how loudly).
_NOT_FINGERPRINTED = ("tasks", "labels", "learners", "seeds", "out_dir", "progress",
                      "bootstrap_reps")


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class LearnerAssumptionConfig:
    """Every budget of the study (``experiments/learner_assumption.py``)."""

    tasks: tuple[str, ...] = field(TASKS, "tasks; each needs DATA_DIR/TASK.npz, EXPERTS_DIR/TASK/")
    labels: tuple[str, ...] = field(LABELS, "label models (rows)")
    learners: tuple[str, ...] = field(LEARNERS, "learners (columns)")
    seeds: int = field(3, "seeds per cell (resample segment halves, queries, initialisations)")
    seed: int = field(0, "base seed")
    data_dir: str = field("", "folder of the labelled pools TASK.npz ('' = experiments/data)")
    experts_dir: str = field("", "folder of expert folders TASK/ ('' = experiments/experts)")
    library: tuple[str, ...] = field(
        (), "regret-SF library Π: checkpoint files or folders (empty = the task expert's "
        "snapshots + final.npz)")
    library_final: bool = field(
        True, "keep the final expert in Π (false: the ablation; its critic is the regret "
        "oracle's)")
    out_dir: str = field("experiments/results/learner_assumption",
                         "output folder: cells/ and the JSON + Markdown report")
    discount: float = field(0.99, "γ of the regret model and labels, ψ, EPIC and PPO")
    # queries
    num_train: int = field(2000, "training queries per seed (incl. validation)")
    num_test: int = field(1000, "held-out queries per seed (on the held-out segment half)")
    valid_fraction: float = field(0.1, "training queries held out for early stopping")
    # r̂ and Â (prefrl.learners.reward_model)
    rm_hidden: tuple[int, ...] = field((64, 64), "reward-model hidden widths")
    rm_ensemble: int = field(3, "reward-model ensemble size")
    rm_steps: int = field(600, "reward-model updates")
    rm_batch_size: int = field(64, "queries per reward-model update")
    rm_learning_rate: float = field(1e-3, "reward-model Adam step size")
    eval_every: int = field(50, "updates between validation checks (r̂, Â, w)")
    # regret r̂ via successor features (prefrl.learners.regret_sf)
    phi: Literal["frozen", "learned"] = field(
        "frozen", "φ: the partial-return r̂'s last hidden layer, or learned with ψ refits")
    phi_width: int = field(32, "learned φ: feature width d")
    phi_hidden: tuple[int, ...] = field((64, 64), "learned φ: hidden widths")
    refit_every: int = field(250, "learned φ: updates between ψ refits")
    library_reset_envs: int = field(32, "library rollouts per policy from fresh resets")
    library_pool_envs: int = field(32, "library rollouts per policy from pool segment starts")
    library_steps: int = field(300, "steps of every library rollout (T)")
    heldout_envs: int = field(16, "held-out rollouts per policy for the ψ-fit quality")
    heldout_steps: int = field(500, "steps of every held-out rollout (tail weight γ^(T/2))")
    psi_hidden: tuple[int, ...] = field((128, 128), "ψ network hidden widths (one per π)")
    psi_method: Literal["mc", "td"] = field("mc", "ψ targets: Monte-Carlo or one-step TD")
    psi_rounds: int = field(4, "ψ target recomputations")
    psi_steps_per_round: int = field(250, "ψ gradient steps per round")
    psi_batch_size: int = field(1024, "ψ rows per step (0: all)")
    psi_learning_rate: float = field(1e-3, "ψ Adam step size")
    sf_steps: int = field(1000, "updates of w (and learned φ) on the preference loss")
    sf_batch_size: int = field(64, "queries per w update")
    sf_learning_rate: float = field(1e-3, "w Adam step size")
    sf_l2: float = field(0.0, "L2 penalty on w (and learned φ)")
    gpi_temperature: float = field(0.0, "τ of the soft GPI maximum (0 = max)")
    # Â used greedily (prefrl.learners.advantage_policy)
    awr_steps: int = field(3000, "AWR updates")
    awr_batch_size: int = field(16, "segments per AWR update")
    awr_beta: float = field(1.0, "AWR temperature β (Â is standardised)")
    awr_hidden: tuple[int, ...] = field((256, 256), "AWR policy hidden widths")
    awr_learning_rate: float = field(3e-4, "AWR Adam step size")
    # PPO on a learned reward (prefrl.training)
    ppo_steps: int = field(1_000_000, "environment steps of each PPO run")
    ppo_envs: int = field(64, "PPO environments")
    ppo_rollout_steps: int = field(64, "PPO steps per environment per update")
    ppo_epochs: int = field(10, "PPO epochs per update")
    ppo_minibatches: int = field(32, "PPO minibatches per epoch")
    kl_ref_coef: float = field(0.0, "β_KL to π_ref = BC on the training segments (0: none)")
    # evaluation
    eval_episodes: int = field(8, "evaluation episodes per policy")
    eval_steps: int = field(0, "steps per evaluation episode (0 = the task's 1000)")
    epic_transitions: int = field(1000, "EPIC transitions (held-out segments' steps)")
    bootstrap_reps: int = field(2000, "bootstrap replicates of the IQM intervals")
    progress: bool = field(False, "PPO progress bars")

    def __post_init__(self) -> None:
        unknown = {
            "labels": [x for x in self.labels if x not in LABELS],
            "learners": [x for x in self.learners if x not in LEARNERS],
        }
        for name, bad in unknown.items():
            if bad or not getattr(self, name):
                valid = LABELS if name == "labels" else LEARNERS
                raise ValueError(f"{name} must be a non-empty subset of {valid}, got "
                                 f"{list(getattr(self, name))}")
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        from prefrl.envs.tasks import make_task

        for task in self.tasks:
            make_task(task)  # unknown names fail here, listing the valid ones
        positive = ("seeds", "num_train", "num_test", "heldout_envs", "heldout_steps",
                    "rm_ensemble", "rm_steps",
                    "rm_batch_size", "eval_every", "phi_width", "refit_every", "library_steps",
                    "psi_rounds", "psi_steps_per_round", "sf_steps", "sf_batch_size",
                    "awr_steps", "awr_batch_size", "ppo_steps", "ppo_envs", "ppo_rollout_steps",
                    "ppo_epochs", "ppo_minibatches", "eval_episodes", "epic_transitions",
                    "bootstrap_reps")
        bad = {n: getattr(self, n) for n in positive if int(getattr(self, n)) < 1}
        nonneg = ("library_reset_envs", "library_pool_envs", "psi_batch_size", "eval_steps")
        bad.update({n: getattr(self, n) for n in nonneg if int(getattr(self, n)) < 0})
        if bad:
            raise ValueError(f"invalid LearnerAssumptionConfig values: {bad}")
        if self.library_reset_envs + self.library_pool_envs < 1:
            raise ValueError("library rollouts need library_reset_envs + library_pool_envs >= 1")
        if not 0.0 < self.discount < 1.0:
            raise ValueError(f"discount must be in (0, 1) (successor features), got "
                             f"{self.discount}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.phi not in ("frozen", "learned"):
            raise ValueError(f"phi must be 'frozen' or 'learned', got {self.phi!r}")
        if (self.ppo_envs * self.ppo_rollout_steps) % self.ppo_minibatches:
            raise ValueError("ppo_envs × ppo_rollout_steps must be divisible by ppo_minibatches")
        for name in ("rm_learning_rate", "psi_learning_rate", "sf_learning_rate",
                     "awr_learning_rate", "awr_beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.sf_l2 < 0 or self.kl_ref_coef < 0 or self.gpi_temperature < 0:
            raise ValueError("sf_l2, kl_ref_coef and gpi_temperature must be >= 0")

    @property
    def num_valid(self) -> int:
        return max(1, int(round(self.valid_fraction * self.num_train)))

    def fingerprint(self) -> str:
        """A hash of every setting that changes a cell's numbers (not which cells run)."""
        values = {k: v for k, v in config_lib.to_dict(self).items()
                  if k not in _NOT_FINGERPRINTED}
        return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


# Every budget shrunk to a smoke test of every stage on both tasks (about 2–3 min on a
# loaded 2-core machine, nearly all of it compiling each jitted function once).
QUICK: dict[str, Any] = {
    "seeds": 2,
    "out_dir": "runs/learner_assumption_quick",
    "num_train": 120,
    "num_test": 60,
    "rm_hidden": (16,),
    "rm_ensemble": 2,
    "rm_steps": 20,
    "rm_batch_size": 16,
    "eval_every": 10,
    "phi_width": 8,
    "phi_hidden": (16,),
    "refit_every": 10,
    "library_reset_envs": 2,
    "library_pool_envs": 2,
    "library_steps": 20,
    "heldout_envs": 2,
    "heldout_steps": 20,
    "psi_hidden": (16,),
    "psi_rounds": 1,
    "psi_steps_per_round": 5,
    "psi_batch_size": 32,
    "sf_steps": 20,
    "sf_batch_size": 16,
    "awr_steps": 20,
    "awr_batch_size": 4,
    "awr_hidden": (16,),
    "ppo_steps": 512,
    "ppo_envs": 4,
    "ppo_rollout_steps": 64,
    "ppo_epochs": 1,
    "ppo_minibatches": 4,
    "eval_episodes": 2,
    "eval_steps": 50,
    "epic_transitions": 64,
    "bootstrap_reps": 200,
}


def quick_config(**overrides: Any) -> LearnerAssumptionConfig:
    """:data:`QUICK` budgets with ``overrides`` on top."""
    return LearnerAssumptionConfig(**{**QUICK, **overrides})


def _repo_root() -> Path:
    import prefrl

    return Path(prefrl.__file__).resolve().parent.parent


def _key(config: LearnerAssumptionConfig, *names: Any) -> PRNGKey:
    """A key named by its purpose: fold_in(key(seed), crc32("task/seed/purpose"))."""
    tag = zlib.crc32("/".join(str(n) for n in names).encode()) & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.key(config.seed), tag)


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
) -> regret_sf.LibraryRollouts:
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
    fields: dict[str, list[np.ndarray]] = {k: [] for k in regret_sf.LibraryRollouts._fields}
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
    return regret_sf.LibraryRollouts(**out)


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
    (``prefrl.pipeline.find_experts``: snapshots and ``final.npz``, the 100 %
    snapshot merged with ``final.npz``); otherwise the listed files and
    folders. ``library_final=False`` drops the final expert of each folder.
    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for a
    policy whose observation size is not the task's.
    """
    from prefrl import checkpoint
    from prefrl.pipeline import find_experts

    experts_root = Path(config.experts_dir) if config.experts_dir else (
        _repo_root() / "experiments" / "experts")
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
            policy, _ = checkpoint.load_policy(path, deterministic=False, obs_dim=task.obs_dim)
        except ValueError as err:
            raise ValueError(f"library policy {path}: {err}") from err
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


def sf_fit_config(config: LearnerAssumptionConfig) -> regret_sf.SFFitConfig:
    return regret_sf.SFFitConfig(method=config.psi_method, num_rounds=config.psi_rounds,
                                 steps_per_round=config.psi_steps_per_round,
                                 batch_size=config.psi_batch_size,
                                 learning_rate=config.psi_learning_rate)


def _check_psi_width(psi_network: nn.Module, obs: Any, width: int) -> None:
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
def _fit_psi(key: PRNGKey, rollouts: regret_sf.LibraryRollouts, phi_t: Array, *,
             fit_config: regret_sf.SFFitConfig, psi_network: nn.Module, discount: float
             ) -> tuple[Params, dict]:
    key_init, key_fit = jax.random.split(key)
    num_policies = rollouts.obs.shape[0]
    init = lambda k: psi_network.init(k, rollouts.obs[0, 0, 0])
    params = jax.vmap(init)(jax.random.split(key_init, num_policies))
    return regret_sf.fit_successor_features(key_fit, fit_config, psi_network, params, rollouts,
                                            phi_t, discount=discount)


def fit_library_psi(
    key: PRNGKey,
    fit_config: regret_sf.SFFitConfig,
    psi_network: nn.Module,
    rollouts: regret_sf.LibraryRollouts,
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
    _check_psi_width(psi_network, rollouts.obs, int(phi_t.shape[-1]))
    rollouts = regret_sf.LibraryRollouts(*(jnp.asarray(x) for x in rollouts))
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
    ``regret_sf.successor_targets(…, method="mc")``: Σ γ^j φ_{t+j} to the end
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
    targets = jax.vmap(lambda p, n, te, tr: regret_sf.successor_targets(
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


# --------------------------------------------------------------------------- #
# Reward functions as (params, obs, action, next_obs) -> r, hashable for jit caches
# --------------------------------------------------------------------------- #


def _rm_value(params: rm.RewardModelState, obs: Array, action: Array, next_obs: Array) -> Array:
    """The standardised r̂ or Â of a reward model."""
    del next_obs
    return rm.reward_fn(params)(obs, action)


@dataclasses.dataclass(frozen=True)
class _LearnedPhi:
    """φ_θ(s, a) of a flax module on concat(s, a), as ``phi_from(θ) -> φ``."""

    module: nn.Module

    def __call__(self, params: Params) -> regret_sf.PhiFn:
        return lambda obs, action: self.module.apply(
            params, jnp.concatenate([obs, action.astype(obs.dtype)], -1))


@dataclasses.dataclass(frozen=True)
class _SFValue:
    """The standardised regret-model reward (w·φ(s, a) − mean) / std."""

    phi_from: Callable[[Params], regret_sf.PhiFn]

    def __call__(self, params: Params, obs: Array, action: Array, next_obs: Array) -> Array:
        del next_obs
        phi = self.phi_from(params["phi"])
        return (phi(obs, action) @ params["w"] - params["mean"]) / params["std"]


@dataclasses.dataclass(frozen=True)
class _TrueReward:
    """The task's reward for EPIC; the root x-velocity of s' (obs index 8) stands in for
    the frame-averaged velocity the observation does not hold (as ``prefrl.study``)."""

    task: Any

    def __call__(self, params: Any, obs: Array, action: Array, next_obs: Array) -> Array:
        del params, obs
        return self.task.reward(next_obs[..., 8], action)


@functools.cache
def _ppo_reward(value_fn: Callable[..., Array]) -> ppo.RewardFn:
    """PPO's ``reward_fn``; the reward's parameters travel in ``state.reward_params``."""

    def reward(obs: Array, action: Array, next_obs: Array, extras: Mapping[str, Any]) -> Array:
        return value_fn(extras["reward_params"], obs, action, next_obs)

    return reward


def _strip(state: rm.RewardModelState) -> rm.RewardModelState:
    return state.replace(opt_state=None)


# --------------------------------------------------------------------------- #
# Data of one task and one seed
# --------------------------------------------------------------------------- #


class TaskData(NamedTuple):
    """A labelled pool: segments ``[N, k, …]``, queries ``[Q]`` and both oracles' labels."""

    name: str
    spec: Any  # prefrl.envs.TaskSpec
    segments: Segments
    first: np.ndarray
    second: np.ndarray
    labels: dict[str, np.ndarray]


def load_task_data(config: LearnerAssumptionConfig, name: str) -> TaskData:
    """``DATA_DIR/NAME.npz`` with both labels on every query and the regret labels' γ checked."""
    from prefrl.data import dataset as dataset_io
    from prefrl.envs import tasks

    folder = Path(config.data_dir) if config.data_dir else _repo_root() / "experiments" / "data"
    path = folder / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"labelled pool {path} not found (see experiments/data/README.md)")
    ds, header = dataset_io.load(path)
    if header.get("task") != name:
        raise ValueError(f"{path}: pool of task {header.get('task')!r}, expected {name!r}")
    missing = [n for n in LABELS if n not in ds.labels]
    if missing:
        raise ValueError(f"{path}: the study needs labels {list(LABELS)}; missing {missing}")
    if not all(bool(np.all(np.asarray(ds.label_mask[n]))) for n in LABELS):
        raise ValueError(f"{path}: every query must be labelled by both oracles (none skipped)")
    gamma = dict(header.get("oracles", {})).get("regret", {}).get("discount")
    if gamma is not None and abs(float(gamma) - config.discount) > 1e-9:
        raise ValueError(f"--discount {config.discount} differs from the regret labels' "
                         f"γ = {gamma} in {path}")
    params = dict(header.get("meta", {})).get("task_params") or {}
    spec = tasks.make_task(name, **dict(params))
    seg = jax.tree.map(np.asarray, ds.segments)
    if seg.obs.shape[-1] != spec.obs_dim:
        raise ValueError(f"{path}: observations of size {seg.obs.shape[-1]}, task {name} has "
                         f"{spec.obs_dim}")
    return TaskData(name, spec, seg, np.asarray(ds.first), np.asarray(ds.second),
                    {n: np.asarray(ds.labels[n], np.float32) for n in LABELS})


class SeedSplit(NamedTuple):
    """Query indices of one seed: ``train``, ``valid`` (both on the training segment half),
    ``test`` (on the held-out half); ``train_segments`` the segments of training queries."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    train_segments: np.ndarray


def seed_split(config: LearnerAssumptionConfig, data: TaskData, seed: int) -> SeedSplit:
    """Resample the held-out segment half, the queries and the validation split for ``seed``."""
    from prefrl.study import split_by_segments

    n = int(data.segments.obs.shape[0])
    tr, te = split_by_segments(_key(config, data.name, seed, "split"), n, data.first,
                               data.second, config.num_train, config.num_test)
    order = np.asarray(jax.random.permutation(_key(config, data.name, seed, "valid"), tr.shape[0]))
    valid, train = tr[order[:config.num_valid]], tr[order[config.num_valid:]]
    segs = np.unique(np.concatenate([data.first[train], data.second[train]]))
    return SeedSplit(train, valid, te, segs)


def _pairs(data: TaskData, rows: np.ndarray, label: str) -> PairBatch:
    seg = data.segments
    f, s = data.first[rows], data.second[rows]
    as32 = lambda x: jnp.asarray(np.asarray(x, np.float32))
    return PairBatch(as32(seg.obs[f]), as32(seg.action[f]), as32(seg.mask[f]), as32(seg.obs[s]),
                     as32(seg.action[s]), as32(seg.mask[s]), as32(data.labels[label][rows]))


def _accuracies(scores: np.ndarray, data: TaskData, rows: np.ndarray) -> dict[str, float]:
    """Held-out accuracy of segment scores ``[N]`` against both oracles (ties excluded)."""
    f, s = data.first[rows], data.second[rows]
    return {f"acc_{'pr' if n == 'partial_return' else n}": evaluation.preference_accuracy(
        scores[f], scores[s], data.labels[n][rows]) for n in LABELS}


class EpicSample(NamedTuple):
    """EPIC's transitions ``[E, …]`` and coverage draws ``[J, …]`` (held-out steps)."""

    obs: Array
    action: Array
    next_obs: Array
    coverage_obs: Array
    coverage_action: Array


def _epic_sample(config: LearnerAssumptionConfig, data: TaskData, split: SeedSplit,
                 seed: int) -> EpicSample:
    seg = data.segments
    segs = np.unique(np.concatenate([data.first[split.test], data.second[split.test]]))
    on = np.asarray(seg.mask)[segs] > 0
    obs, act = np.asarray(seg.obs)[segs][on], np.asarray(seg.action)[segs][on]
    nxt = np.asarray(seg.next_obs)[segs][on]
    key_pick, key_s, key_a = jax.random.split(_key(config, data.name, seed, "epic"), 3)
    pick = np.asarray(jax.random.permutation(key_pick, obs.shape[0]))[:config.epic_transitions]
    num_cov = min(256, obs.shape[0])
    cov_s = np.asarray(jax.random.choice(key_s, obs.shape[0], (num_cov,), replace=False))
    cov_a = np.asarray(jax.random.choice(key_a, obs.shape[0], (num_cov,), replace=False))
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return EpicSample(f32(obs[pick]), f32(act[pick]), f32(nxt[pick]), f32(obs[cov_s]),
                      f32(act[cov_a]))


@functools.partial(jax.jit, static_argnames=("value_fn", "discount"))
def _canonical(value_fn: Callable[..., Array], params: Any, sample: EpicSample,
               discount: float) -> Array:
    """C(R) on the EPIC sample (Gleave et al. 2021), R = value_fn(params, ·)."""
    reward = lambda s, a, s2: value_fn(params, s, a, s2)
    return evaluation.canonicalize(reward, sample.obs, sample.action, sample.next_obs,
                                   sample.coverage_obs, sample.coverage_action, discount=discount)


# --------------------------------------------------------------------------- #
# Fitting: r̂ / Â, the regret-SF r̂, the AWR policy, PPO
# --------------------------------------------------------------------------- #


def rm_config(config: LearnerAssumptionConfig, assumption: str) -> rm.RewardModelConfig:
    """r̂ (``partial_return``, γ_p = 1) or Â (``advantage``, γ)."""
    return rm.RewardModelConfig(
        assumption=assumption,  # type: ignore[arg-type]
        hidden=tuple(config.rm_hidden), ensemble_size=config.rm_ensemble,
        num_steps=config.rm_steps, batch_size=config.rm_batch_size,
        learning_rate=config.rm_learning_rate,
        eval_every=min(config.eval_every, config.rm_steps),
        discount=1.0 if assumption == "partial_return" else config.discount)


_fit_rm = jax.jit(rm.fit, static_argnums=1)


@jax.jit
def _rm_scores(state: rm.RewardModelState, obs: Array, action: Array, mask: Array) -> Array:
    """``[N]`` segment scores Σ γ^t f(s_t, a_t) under the model's own assumption."""
    values = rm.reward_fn(state)(obs, action)
    cfg = state.config
    return jax.vmap(lambda v, m: cfg.score_fn(v, discount=cfg.discount, mask_t=m))(values, mask)


class SFResult(NamedTuple):
    """A fitted regret-model r̂: its PPO/EPIC reward, pool scores −regret ``[N]``, metrics."""

    value_fn: Callable[..., Array]
    params: Params
    scores: np.ndarray
    metrics: dict[str, float]


@functools.partial(jax.jit, static_argnames=("phi_from",))
def _phi_on(phi_from: Callable[[Params], regret_sf.PhiFn], phi_params: Params, obs: Array,
            action: Array) -> Array:
    """φ on ``[..., obs]``, ``[..., act]`` in row blocks (bounded memory)."""
    phi = phi_from(phi_params)
    lead = obs.shape[:-1]
    flat_o, flat_a = obs.reshape(-1, obs.shape[-1]), action.reshape(-1, action.shape[-1])
    out = jax.lax.map(lambda xs: phi(xs[0], xs[1]), (flat_o, flat_a), batch_size=4096)
    return out.reshape(*lead, out.shape[-1])


@functools.partial(jax.jit, static_argnames=("psi_network",))
def _psi_on(psi_network: nn.Module, psi_params: Params, obs: Array) -> Array:
    """``[Π, …, d]``: every head on ``obs [..., obs]`` (the same states for each π)."""
    return jax.vmap(lambda p: psi_network.apply(p, obs))(psi_params)


@functools.partial(jax.jit, static_argnames=("psi_network",))
def _psi_own(psi_network: nn.Module, psi_params: Params, obs: Array) -> Array:
    """``[Π, …, d]``: head π on its own rows ``obs [Π, …, obs]``."""
    return jax.vmap(psi_network.apply)(psi_params, obs)


@functools.partial(jax.jit, static_argnames=("sf_config", "num_steps", "batch_size",
                                             "eval_every"))
def _fit_w(key: PRNGKey, rm_state: rm.RewardModelState, pool: regret_sf.SFSegments,
           train: tuple[Array, Array, Array], valid: tuple[Array, Array, Array], *,
           sf_config: regret_sf.RegretSFConfig, num_steps: int, batch_size: int,
           eval_every: int) -> tuple[regret_sf.RegretSFState, dict]:
    """w on frozen φ (the r̂ model's last hidden layer), ψ values in the pool ``[N, 2, Π, d]``.

    ``num_steps`` updates in one scan; every ``eval_every`` the validation BT
    loss is computed and the best w is kept (early stopping).
    """
    phi = regret_sf.reward_model_features(rm_state)
    learner = regret_sf.make(sf_config, phi)
    regret_fn = regret_sf.make_regret_fn(sf_config, phi)
    key_init, key_steps = jax.random.split(key)
    first, second, label = train
    take = lambda idx: regret_sf.pair_batch(pool, first[idx], second[idx], label[idx])
    state = learner.init(key_init, take(jnp.arange(batch_size) % first.shape[0]))
    sub = lambda idx: regret_sf.SFSegments(*(None if x is None else x[idx] for x in pool))

    def valid_loss(state: regret_sf.RegretSFState) -> Array:
        v_first, v_second, v_label = valid
        logit = preference.logit(-regret_fn(state, sub(v_first)), -regret_fn(state, sub(v_second)),
                                 temperature=sf_config.temperature)
        return jnp.mean(preference.bt_loss(logit, v_label))

    num_evals = max(num_steps // eval_every, 1)
    inner = num_steps // num_evals

    def chunk(carry: tuple, i: Array) -> tuple[tuple, dict]:
        state, best, best_loss = carry

        def step(state: regret_sf.RegretSFState, j: Array) -> tuple:
            k = jax.random.fold_in(key_steps, i * inner + j)
            return learner.update(state, take(jax.random.randint(k, (batch_size,), 0,
                                                                 first.shape[0])))

        state, m = jax.lax.scan(step, state, jnp.arange(inner))
        loss = valid_loss(state)
        better = loss < best_loss
        best = jax.tree.map(lambda a, b: jnp.where(better, a, b), state.params, best)
        out = {"train_loss": m["loss"][-1], "train_accuracy": jnp.mean(m["accuracy"]),
               "valid_loss": loss,
               "negative_regret_fraction": m["negative_regret_fraction"][-1]}
        return (state, best, jnp.minimum(loss, best_loss)), out

    carry = (state, state.params, jnp.asarray(jnp.inf, jnp.float32))
    (state, best, _), metrics = jax.lax.scan(chunk, carry, jnp.arange(num_evals))
    return state.replace(params=best), metrics


@functools.partial(jax.jit, static_argnames=("sf_config", "fit_config", "phi_network",
                                             "psi_network", "num_steps", "batch_size",
                                             "refit_every"))
def _fit_learned(key: PRNGKey, rollouts: regret_sf.LibraryRollouts, pool: regret_sf.SFSegments,
                 train: tuple[Array, Array, Array], *, sf_config: regret_sf.RegretSFConfig,
                 fit_config: regret_sf.SFFitConfig, phi_network: nn.Module,
                 psi_network: nn.Module, num_steps: int, batch_size: int, refit_every: int
                 ) -> tuple[regret_sf.RegretSFState, dict]:
    """Learned φ, w and ψ in alternation (``regret_sf.alternate``), ψ refitted once more at the
    end so that it matches the final φ. The pool carries states ``psi_in [N, 2, obs]``."""
    learner = regret_sf.make(sf_config, phi_network, psi_network=psi_network)
    refit = regret_sf.make_refit(sf_config, fit_config, phi_network, psi_network)
    key_init, key_alt, key_final = jax.random.split(key, 3)
    first, second, label = train
    take = lambda idx: regret_sf.pair_batch(pool, first[idx], second[idx], label[idx])
    state = learner.init(key_init, take(jnp.arange(batch_size) % first.shape[0]))
    sample = lambda k: take(jax.random.randint(k, (batch_size,), 0, first.shape[0]))
    state, metrics = regret_sf.alternate(learner.update, refit, state, key_alt, rollouts, sample,
                                         num_updates=num_steps, refit_every=refit_every)
    state, _ = refit(state, key_final, rollouts)
    return state, metrics


@functools.partial(jax.jit, static_argnames=("sf_config", "phi_module", "psi_network"))
def _pool_regrets(state: regret_sf.RegretSFState, pool: regret_sf.SFSegments,
                  phi_params: Params, *, sf_config: regret_sf.RegretSFConfig,
                  phi_module: nn.Module | None, psi_network: nn.Module | None) -> Array:
    """``[N]`` regrets of the pool; φ is ``phi_module`` (learned) or r̂'s features of
    ``phi_params`` (frozen)."""
    phi = phi_module if phi_module is not None else regret_sf.reward_model_features(phi_params)
    regret_fn = regret_sf.make_regret_fn(sf_config, phi, psi_network=psi_network, chunk=64)
    return regret_fn(state, pool)


def fit_regret_sf(config: LearnerAssumptionConfig, ctx: TaskContext, split: SeedSplit,
                  label: str, rm_state: rm.RewardModelState, seed: int) -> SFResult:
    """The regret-model r̂ = w·φ of one cell (module docstring), with its ψ-fit quality."""
    data, lib = ctx.data, ctx.rollouts()
    heldout = ctx.heldout_rollouts()
    num_policies = int(lib.obs.shape[0])
    seg = data.segments
    pool_obs = jnp.asarray(seg.obs, jnp.float32)
    pool_act = jnp.asarray(seg.action, jnp.float32)
    pool_mask = jnp.asarray(seg.mask, jnp.float32)
    psi_states = jnp.asarray(regret_sf.psi_inputs(seg), jnp.float32)  # [N, 2, obs]
    rows = lambda r: (jnp.asarray(data.first[r]), jnp.asarray(data.second[r]),
                      jnp.asarray(data.labels[label][r]))
    key_psi, key_w = jax.random.split(_key(config, data.name, seed, label, "regret_sf"))
    fit_cfg = sf_fit_config(config)
    metrics: dict[str, float] = {"library_size": float(num_policies)}
    if config.phi == "frozen":
        phi_from: Callable[[Params], regret_sf.PhiFn] = regret_sf.reward_model_features
        phi_params: Params = _strip(rm_state)
        phi_lib = _phi_on(phi_from, phi_params, jnp.asarray(lib.obs), jnp.asarray(lib.action))
        width = int(phi_lib.shape[-1])
        psi_net = psi_network_for(config, lib.obs, width)
        psi_params, psi_metrics = fit_library_psi(key_psi, fit_cfg, psi_net, lib, phi_lib,
                                                  discount=config.discount)
        psi_pool = jnp.moveaxis(_psi_on(psi_net, psi_params, psi_states), 0, -2)  # [N, 2, Π, d]
        sf_cfg = regret_sf.RegretSFConfig(
            discount=config.discount, gpi_temperature=config.gpi_temperature,
            learning_rate=config.sf_learning_rate, l2=config.sf_l2)
        pool = regret_sf.SFSegments(pool_obs, pool_act, pool_mask, psi_pool)
        state, fit_metrics = _fit_w(key_w, phi_params, pool, rows(split.train), rows(split.valid),
                                    sf_config=sf_cfg, num_steps=config.sf_steps,
                                    batch_size=config.sf_batch_size,
                                    eval_every=min(config.eval_every, config.sf_steps))
        scores = -np.asarray(_pool_regrets(state, pool, phi_params, sf_config=sf_cfg,
                                           phi_module=None, psi_network=None))
        metrics["psi_loss"] = float(np.mean(np.asarray(psi_metrics["loss"])[-1]))
        metrics["sf_valid_loss"] = float(np.min(np.asarray(fit_metrics["valid_loss"])))
        metrics["sf_train_accuracy"] = float(np.asarray(fit_metrics["train_accuracy"])[-1])
    else:
        phi_net = regret_sf.default_phi_network(config.phi_width, tuple(config.phi_hidden))
        phi_from = _LearnedPhi(phi_net)
        psi_net = psi_network_for(config, lib.obs, config.phi_width)
        _check_psi_width(psi_net, lib.obs, config.phi_width)
        sf_cfg = regret_sf.RegretSFConfig(
            discount=config.discount, gpi_temperature=config.gpi_temperature,
            num_policies=num_policies, learning_rate=config.sf_learning_rate, l2=config.sf_l2)
        pool = regret_sf.SFSegments(pool_obs, pool_act, pool_mask, psi_states)
        jlib = regret_sf.LibraryRollouts(*(jnp.asarray(x) for x in lib))
        state, fit_metrics = _fit_learned(
            key_w, jlib, pool, rows(split.train), sf_config=sf_cfg, fit_config=fit_cfg,
            phi_network=phi_net, psi_network=psi_net, num_steps=config.sf_steps,
            batch_size=config.sf_batch_size, refit_every=config.refit_every)
        phi_params, psi_params = state.params["phi"], state.psi_params
        scores = -np.asarray(_pool_regrets(state, pool, phi_params, sf_config=sf_cfg,
                                           phi_module=phi_net, psi_network=psi_net))
        metrics["psi_loss"] = float(np.nanmean(np.asarray(fit_metrics["psi_loss"])))
        last = slice(-min(config.eval_every, config.sf_steps), None)
        metrics["sf_train_accuracy"] = float(np.mean(np.asarray(fit_metrics["accuracy"])[last]))
    w = state.params["w"]
    metrics["negative_regret_fraction"] = float(
        np.asarray(fit_metrics["negative_regret_fraction"])[-1])
    # ψ-fit quality on held-out rollouts (other start states).
    phi_h = _phi_on(phi_from, phi_params, jnp.asarray(heldout.obs), jnp.asarray(heldout.action))
    quality = psi_fit_quality(
        _psi_own(psi_net, psi_params, jnp.asarray(heldout.obs)),
        _psi_own(psi_net, psi_params, jnp.asarray(heldout.next_obs)), phi_h,
        jnp.asarray(heldout.terminated), jnp.asarray(heldout.truncated),
        discount=config.discount, w=w)
    metrics.update({k: float(v) for k, v in quality.items()})
    # Standardise r̂ over the training segments' steps, as the reward models are.
    train_segs = split.train_segments
    values = np.asarray(_phi_on(phi_from, phi_params, pool_obs, pool_act) @ w)[train_segs]
    on = np.asarray(seg.mask)[train_segs] > 0
    mean, std = float(values[on].mean()), float(values[on].std()) + 1e-8
    params = {"phi": phi_params, "w": w, "mean": jnp.float32(mean), "std": jnp.float32(std)}
    return SFResult(_SFValue(phi_from), params, scores, metrics)


class _NormalizedPolicy(nn.Module):
    """The AWR policy: ``GaussianPolicy`` (state-dependent σ) on standardised observations."""

    action_dim: int
    hidden: tuple[int, ...]
    obs_mean: tuple[float, ...]
    obs_std: tuple[float, ...]

    @nn.compact
    def __call__(self, obs: Array) -> tuple[Array, Array]:
        shape = (1,) * (obs.ndim - 1) + (-1,)
        mean = jnp.asarray(self.obs_mean, obs.dtype).reshape(shape)
        std = jnp.asarray(self.obs_std, obs.dtype).reshape(shape)
        return GaussianPolicy(self.action_dim, tuple(self.hidden), nn.relu,
                              state_dependent_std=True)((obs - mean) / std)


@functools.partial(jax.jit, static_argnames=("awr_config", "network", "num_steps", "batch_size"))
def _fit_awr(key: PRNGKey, obs: Array, action: Array, mask: Array, advantage: Array,
             eligible: Array, *, awr_config: advantage_policy.AdvantagePolicyConfig,
             network: nn.Module, num_steps: int, batch_size: int) -> tuple[Params, dict]:
    """AWR on the ``eligible [N]`` segments of a pool ``[N, k, …]``, ``batch_size`` segments
    (uniform, with replacement) a step; Â ≡ 0 gives BC. Shapes do not depend on the seed's
    split, so every seed reuses one compilation."""
    learner = advantage_policy.make(awr_config, network)
    key_init, key_steps = jax.random.split(key)
    take = lambda idx: advantage_policy.AdvantageBatch(obs[idx], action[idx], mask[idx],
                                                       advantage[idx])
    p = eligible.astype(jnp.float32) / jnp.sum(eligible)
    draw = lambda k: jax.random.choice(k, obs.shape[0], (batch_size,), p=p)
    state = learner.init(key_init, take(draw(key_init)))

    def step(state: Any, i: Array) -> tuple:
        return learner.update(state, take(draw(jax.random.fold_in(key_steps, i))))

    state, metrics = jax.lax.scan(step, state, jnp.arange(num_steps))
    return state.params, jax.tree.map(lambda x: x[-1], metrics)


def fit_awr(config: LearnerAssumptionConfig, data: TaskData, split: SeedSplit,
            advantage: np.ndarray | None, key: PRNGKey) -> tuple[Policy, dict[str, float]]:
    """The Â-greedy policy on the training segments (``advantage [N, k]`` over the whole pool;
    None: BC). Observations are standardised by the pool's (label-free) statistics."""
    seg = data.segments
    obs = jnp.asarray(seg.obs, jnp.float32)
    action = jnp.asarray(seg.action, jnp.float32)
    mask = jnp.asarray(seg.mask, jnp.float32)
    adv = jnp.zeros(mask.shape, jnp.float32) if advantage is None else jnp.asarray(advantage)
    eligible = np.zeros(mask.shape[0], bool)
    eligible[split.train_segments] = True
    flat = np.asarray(seg.obs, np.float64).reshape(-1, obs.shape[-1])
    network = _NormalizedPolicy(int(action.shape[-1]), tuple(config.awr_hidden),
                                tuple(float(x) for x in flat.mean(0)),
                                tuple(float(x) for x in np.maximum(flat.std(0), 1e-3)))
    awr_cfg = advantage_policy.AdvantagePolicyConfig(beta=config.awr_beta,
                                                     learning_rate=config.awr_learning_rate)
    params, metrics = _fit_awr(key, obs, action, mask, adv, jnp.asarray(eligible),
                               awr_config=awr_cfg, network=network, num_steps=config.awr_steps,
                               batch_size=config.awr_batch_size)
    return Policy(network.apply, params), {f"awr_{k}": float(v) for k, v in metrics.items()}


def train_ppo(config: LearnerAssumptionConfig, data: TaskData, value_fn: Callable[..., Array],
              params: Params, seed: int, name: str,
              reference: Policy | None = None) -> tuple[PolicyFn, dict[str, float]]:
    """PPO from scratch on a learned reward; returns its deterministic policy and metrics."""
    from prefrl import training
    from prefrl.rollout import BatchedEnv

    spec = data.spec
    train_config = training.TrainConfig(
        task=spec.name, total_steps=config.ppo_steps, num_envs=config.ppo_envs,
        rollout_steps=config.ppo_rollout_steps, seed=config.seed * 1000 + seed, eval_every=0,
        eval_episodes=1, checkpoint_every=0, snapshots=(), out_dir=None, resume=False,
        progress=config.progress)
    ppo_config = ppo.PPOConfig(num_epochs=config.ppo_epochs,
                               num_minibatches=config.ppo_minibatches,
                               discount=config.discount, kl_ref_coef=config.kl_ref_coef)
    ref = None if reference is None else (reference.params, reference.apply)
    result = training.train(
        train_config, ppo_config,
        env_factory=lambda n, s: BatchedEnv(spec, num_envs=n, seed=s, dtype=np.float32),
        task_header=spec.to_header(), target_speed=spec.params_dict.get("target_speed"),
        reward_fn=_ppo_reward(value_fn), reward_params=params, reward_name=f"learned:{name}",
        reference=ref)
    apply = ppo.make_policy_apply(ppo_config, spec.act_dim)
    policy = policy_fn(Policy(apply, ppo.policy_bundle(result.state)), deterministic=True)
    last = result.history[-1] if result.history else {}
    return policy, {"ppo_env_steps": float(result.env_steps), "ppo_wall_s": result.wall_s,
                    "ppo_ref_kl": float(last.get("ref_kl", float("nan")))}


# --------------------------------------------------------------------------- #
# One task's shared state, and one cell
# --------------------------------------------------------------------------- #


class TaskContext:
    """What the cells of one task share, built lazily and kept in memory.

    Built eagerly (so bad input fails before any fitting): the labelled pool,
    the library Π (when ``regret_sf_ppo`` runs) and the expert. Lazily: the
    library's and the held-out rollouts, each seed's split, fitted reward
    models (r̂ feeds ``reward_ppo`` and φ of ``regret_sf_ppo``; Â feeds both
    advantage learners), EPIC samples and C(r).
    """

    def __init__(self, config: LearnerAssumptionConfig, name: str):
        from prefrl import checkpoint

        self.config = config
        self.data = load_task_data(config, name)
        self.library = load_library(config, self.data.spec) if (
            "regret_sf_ppo" in config.learners) else None
        experts = Path(config.experts_dir) if config.experts_dir else (
            _repo_root() / "experiments" / "experts")
        self.expert_path = experts / name / "final.npz"
        if not self.expert_path.is_file():
            raise FileNotFoundError(f"expert {self.expert_path} not found (reference return)")
        checkpoint.load(self.expert_path, obs_dim=self.data.spec.obs_dim)
        self._cache: dict[Any, Any] = {}

    def _memo(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _starts(self) -> tuple[np.ndarray, np.ndarray]:
        cfg, n = self.config, int(self.data.segments.obs.shape[0])
        order = np.asarray(jax.random.permutation(_key(cfg, self.data.name, "starts"), n))
        pool_lib, pool_held = cfg.library_pool_envs, cfg.heldout_envs - cfg.heldout_envs // 2
        if pool_lib + pool_held > n:
            raise ValueError(f"{pool_lib} + {pool_held} start states requested from a pool of {n}")
        return order[:pool_lib], order[pool_lib:pool_lib + pool_held]

    def rollouts(self) -> regret_sf.LibraryRollouts:
        """Π's rollouts ``[Π, T, B]``: fresh resets, then the pool's start states."""
        def build() -> regret_sf.LibraryRollouts:
            cfg, spec = self.config, self.data.spec
            starts = segment_start_states(self.data.segments, self._starts()[0],
                                          spec.episode_length)
            return library_rollouts(spec, self.library.policies, steps=cfg.library_steps,
                                    reset_envs=cfg.library_reset_envs, starts=starts,
                                    seed=cfg.seed * 1000 + 17)

        return self._memo("rollouts", build)

    def heldout_rollouts(self) -> regret_sf.LibraryRollouts:
        """Rollouts of Π from other resets and other pool start states (ψ-fit quality)."""
        def build() -> regret_sf.LibraryRollouts:
            cfg, spec = self.config, self.data.spec
            starts = segment_start_states(self.data.segments, self._starts()[1],
                                          spec.episode_length)
            return library_rollouts(spec, self.library.policies, steps=cfg.heldout_steps,
                                    reset_envs=cfg.heldout_envs // 2, starts=starts,
                                    seed=cfg.seed * 1000 + 29)

        return self._memo("heldout", build)

    def split(self, seed: int) -> SeedSplit:
        return self._memo(("split", seed), lambda: seed_split(self.config, self.data, seed))

    def reward_model(self, label: str, seed: int, assumption: str) -> rm.RewardModelState:
        """r̂ (``partial_return``) or Â (``advantage``) fitted on ``label`` for ``seed``."""
        def build() -> rm.RewardModelState:
            split = self.split(seed)
            train = _pairs(self.data, split.train, label)
            rm.validate_pairs(train, what=f"{self.data.name} {label} training labels")
            key = _key(self.config, self.data.name, seed, label, assumption)
            result = _fit_rm(key, rm_config(self.config, assumption), train,
                             _pairs(self.data, split.valid, label))
            rm.check_finite(result.metrics)
            return result.state

        return self._memo(("rm", label, seed, assumption), build)

    def scores(self, state: rm.RewardModelState) -> np.ndarray:
        seg = self.data.segments
        f32 = lambda x: jnp.asarray(x, jnp.float32)
        return np.asarray(_rm_scores(state, f32(seg.obs), f32(seg.action), f32(seg.mask)))

    def epic(self, value_fn: Callable[..., Array], params: Any, seed: int) -> float:
        """EPIC distance of ``value_fn(params, ·)`` to the task's reward (held-out steps)."""
        sample = self._memo(("epic", seed), lambda: _epic_sample(
            self.config, self.data, self.split(seed), seed))
        truth = self._memo(("epic_true", seed), lambda: np.asarray(_canonical(
            _TrueReward(self.data.spec), None, sample, self.config.discount)))
        learned = np.asarray(_canonical(value_fn, params, sample, self.config.discount))
        return evaluation.pearson_distance(evaluation.pearson(learned, truth))

    def evaluate(self, policy: PolicyFn) -> dict[str, float]:
        """True return etc. of ``policy`` (the same start states for every policy)."""
        from prefrl.rollout import evaluate_on_task

        cfg = self.config
        out = evaluate_on_task(self.data.spec, policy, episodes=cfg.eval_episodes,
                               seed=cfg.seed * 1000 + 10_007,
                               num_steps=cfg.eval_steps or None)
        res = {"return": out["mean_return"], "return_std": out["std_return"],
               "mean_speed": out["mean_speed"]}
        if "mean_speed_error" in out:
            res["speed_error"] = out["mean_speed_error"]
        return res

    def reference(self) -> dict[str, dict[str, float]]:
        """The expert's (deterministic) and a uniform random policy's evaluation."""
        from prefrl import checkpoint
        from prefrl.policies import random_policy

        expert, _ = checkpoint.load_policy(self.expert_path, deterministic=True,
                                           obs_dim=self.data.spec.obs_dim)
        return {"expert": self.evaluate(expert),
                "random": self.evaluate(random_policy(self.data.spec.act_dim))}


def run_cell(config: LearnerAssumptionConfig, ctx: TaskContext, label: str, learner: str,
             seed: int) -> dict[str, Any]:
    """Fit one learner on one label set for one seed; evaluate it (module docstring).

    Returns ``{"task", "label", "learner", "seed", "fingerprint", "metrics",
    "wall_s"}``; ``metrics`` holds :data:`METRICS` (``epic_r`` is None for
    ``advantage_greedy``, which hands no reward to RL) and learner details.
    """
    if label not in LABELS or learner not in LEARNERS:
        raise ValueError(f"unknown cell ({label!r}, {learner!r}); labels {LABELS}, learners "
                         f"{LEARNERS}")
    t0 = time.perf_counter()
    data, split = ctx.data, ctx.split(seed)
    metrics: dict[str, Any] = {}
    policy: PolicyFn
    if learner in ("reward_ppo", "regret_sf_ppo"):
        r_hat = ctx.reward_model(label, seed, "partial_return")
        if learner == "reward_ppo":
            value_fn, params, scores = _rm_value, _strip(r_hat), ctx.scores(r_hat)
        else:
            sf = fit_regret_sf(config, ctx, split, label, r_hat, seed)
            value_fn, params, scores = sf.value_fn, sf.params, sf.scores
            metrics.update(sf.metrics)
    else:
        a_hat = ctx.reward_model(label, seed, "advantage")
        value_fn, params, scores = _rm_value, _strip(a_hat), ctx.scores(a_hat)
    metrics.update(_accuracies(scores, data, split.test))
    metrics["train_acc"] = _accuracies(scores, data, split.train)[
        "acc_pr" if label == "partial_return" else "acc_regret"]
    key_policy = _key(config, data.name, seed, label, learner, "policy")
    if learner == "advantage_greedy":
        seg = data.segments
        adv = np.asarray(_rm_value(params, jnp.asarray(seg.obs, jnp.float32),
                                   jnp.asarray(seg.action, jnp.float32), None))
        awr_policy, awr_metrics = fit_awr(config, data, split, adv, key_policy)
        metrics.update(awr_metrics)
        metrics["epic_r"] = None
        policy = policy_fn(awr_policy, deterministic=True)
    else:
        metrics["epic_r"] = ctx.epic(value_fn, params, seed)
        reference = None
        if config.kl_ref_coef > 0:
            reference, _ = fit_awr(config, data, split, None,
                                   _key(config, data.name, seed, "reference"))
        policy, ppo_metrics = train_ppo(config, data, value_fn, params, seed,
                                        f"{learner}/{label}", reference)
        metrics.update(ppo_metrics)
    metrics.update(ctx.evaluate(policy))
    return {"task": data.name, "label": label, "learner": learner, "seed": int(seed),
            "fingerprint": config.fingerprint(), "metrics": metrics,
            "wall_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------- #
# The table: resumable cells, aggregation, report
# --------------------------------------------------------------------------- #


def cell_path(out_dir: str | Path, task: str, label: str, learner: str, seed: int) -> Path:
    """``OUT/cells/TASK/LABEL/LEARNER/seed_S.json``: one file per cell."""
    return Path(out_dir) / "cells" / task / label / learner / f"seed_{int(seed)}.json"


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _read_cell(path: Path, fingerprint: str) -> dict[str, Any]:
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("fingerprint") != fingerprint:
        raise ValueError(f"{path} was written with other settings (fingerprint "
                         f"{record.get('fingerprint')} ≠ {fingerprint}); use another --out-dir or "
                         "delete the cells to recompute")
    return record


def run(config: LearnerAssumptionConfig, log: Log | None = None) -> dict[str, Any]:
    """Run (or resume) every cell, then aggregate; returns the report as a dict.

    All inputs of all tasks are loaded and checked first. Cells whose file
    exists are read, not recomputed. The result holds per-seed metrics and
    IQM [95 % CI] per (task, label, learner), the ψ-fit quality, the
    expert/random reference returns and the PPO settings.
    """
    from prefrl.io import atomic_write_json

    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    fingerprint = config.fingerprint()
    contexts = {task: TaskContext(config, task) for task in config.tasks}
    ran = skipped = 0
    records: list[dict[str, Any]] = []
    references: dict[str, Any] = {}
    for task, ctx in contexts.items():
        ref_path = Path(config.out_dir) / "cells" / task / "reference.json"
        if ref_path.is_file():
            references[task] = _read_cell(ref_path, fingerprint)["reference"]
        else:
            references[task] = _jsonable(ctx.reference())
            atomic_write_json(ref_path, {"fingerprint": fingerprint,
                                         "reference": references[task]})
        for label in config.labels:
            for learner in config.learners:
                for seed in range(config.seeds):
                    path = cell_path(config.out_dir, task, label, learner, seed)
                    if path.is_file():
                        records.append(_read_cell(path, fingerprint))
                        skipped += 1
                        continue
                    record = _jsonable(run_cell(config, ctx, label, learner, seed))
                    atomic_write_json(path, record)
                    records.append(record)
                    ran += 1
                    ret = record["metrics"]["return"]
                    say(f"[{time.perf_counter() - t0:7.1f} s] {task} {label} {learner} "
                        f"seed {seed}: return {ret:.1f}, {record['wall_s']:.1f} s")
        if ctx.library is not None:
            references[task]["library"] = ctx.library.names
    return _aggregate(config, records, references, ran, skipped, time.perf_counter() - t0)


def _aggregate(config: LearnerAssumptionConfig, records: list[dict[str, Any]],
               references: dict[str, Any], ran: int, skipped: int, wall: float
               ) -> dict[str, Any]:
    tables: dict[str, dict[str, Any]] = {}
    for task in config.tasks:
        rows: dict[str, Any] = {}
        for label in config.labels:
            for learner in config.learners:
                cell = [r for r in records if (r["task"], r["label"], r["learner"]) ==
                        (task, label, learner)]
                names = list(METRICS) + (["psi_rel_error", "value_rel_error",
                                          "negative_regret_fraction"]
                                         if learner == "regret_sf_ppo" else [])
                if "speed_error" in cell[0]["metrics"]:
                    names.append("speed_error")
                per_seed = {m: [r["metrics"].get(m) for r in cell] for m in names}
                iqm = {}
                for m, values in per_seed.items():
                    if any(v is None for v in values):
                        iqm[m] = None
                        continue
                    iqm[m] = list(evaluation.bootstrap_ci(np.asarray(values, np.float64),
                                                          reps=config.bootstrap_reps))
                rows[f"{label}/{learner}"] = {"per_seed": per_seed, "iqm": iqm}
        tables[task] = rows
    return {
        "study": RESULT_STEM,
        "config": config_lib.to_dict(config),
        "fingerprint": config.fingerprint(),
        "ppo": {"steps": config.ppo_steps, "kl_ref_coef": config.kl_ref_coef,
                "envs": config.ppo_envs, "rollout_steps": config.ppo_rollout_steps,
                "epochs": config.ppo_epochs},
        "tables": tables,
        "reference": references,
        "cells_run": ran,
        "cells_skipped": skipped,
        "wall_s": wall,
    }


_HEADS = {"acc_pr": "acc vs PR labels", "acc_regret": "acc vs regret labels",
          "epic_r": "EPIC(·, r) ↓", "return": "true return",
          "speed_error": "speed error (m/s)"}
_LEARNER_NAMES = {"reward_ppo": "PR r̂ + PPO", "regret_sf_ppo": "regret r̂ (SF/GPI) + PPO",
                  "advantage_ppo": "Â + PPO (the mistake)",
                  "advantage_greedy": "Â greedy (AWR)"}


def _fmt(ci: Any, spec: str) -> str:
    if ci is None:
        return "—"
    point, low, high = ci
    return f"{point:{spec}} [{low:{spec}}, {high:{spec}}]"


def format_markdown(result: Mapping[str, Any], command: str = "") -> str:
    """One 2 × 4 table per task (IQM [95 % CI]), the ψ-fit quality, the settings."""
    cfg = result["config"]
    lines = [
        "# Label model × learner assumption (issue #13)", "",
        f"PPO: {result['ppo']['steps']:,} environment steps per run, β_KL = "
        f"{result['ppo']['kl_ref_coef']} (KL to π_ref = BC on the training segments; 0 = no "
        f"KL term), {result['ppo']['envs']} envs × {result['ppo']['rollout_steps']} steps, "
        f"{result['ppo']['epochs']} epoch(s). {cfg['seeds']} seeds (each resamples the held-out "
        f"segment half, {cfg['num_train']} training and {cfg['num_test']} held-out queries, "
        "and every initialisation). γ = " f"{cfg['discount']}. φ = {cfg['phi']}; "
        f"library Π {'with' if cfg['library_final'] else 'without'} the final expert.", "",
    ]
    for task in cfg["tasks"]:
        # In the configured order (a JSON file written with sorted keys loses it).
        rows = {f"{label}/{learner}": result["tables"][task][f"{label}/{learner}"]
                for label in cfg["labels"] for learner in cfg["learners"]}
        ref = result["reference"].get(task, {})
        extra = ["speed_error"] if any("speed_error" in r["iqm"] for r in rows.values()) else []
        heads = ["labels", "learner", *(_HEADS[m] for m in (*METRICS, *extra))]
        lines += [f"## {task}", "",
                  "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for name, row in rows.items():
            label, learner = name.split("/")
            vals = [_fmt(row["iqm"].get(m), ".3f" if m != "return" else ".1f")
                    for m in (*METRICS, *extra)]
            lines.append("| " + " | ".join([label, _LEARNER_NAMES[learner], *vals]) + " |")
        if ref:
            parts = [f"{k} {v['return']:.1f}" for k, v in ref.items()
                     if isinstance(v, Mapping) and "return" in v]
            lines += ["", "Reference returns (same evaluation): " + ", ".join(parts) + "."]
            if "library" in ref:
                lines += [f"Library Π ({len(ref['library'])}): " + ", ".join(ref["library"]) + "."]
        sf_rows = {n: r for n, r in rows.items() if n.endswith("/regret_sf_ppo")}
        if sf_rows:
            lines += ["", "ψ fit on held-out rollouts of Π (relative error of ψ vs Monte-Carlo "
                      "φ-returns; of w·ψ vs w·G relative to the spread of w·G) and the fraction "
                      "of segments with negative regret in the last training batch (GPI "
                      "inexact there):", "",
                      "| labels | ψ rel. error | value rel. error | negative-regret fraction |",
                      "|---|---|---|---|"]
            for name, row in sf_rows.items():
                vals = [_fmt(row["iqm"].get(m), ".3f") for m in
                        ("psi_rel_error", "value_rel_error", "negative_regret_fraction")]
                lines.append("| " + " | ".join([name.split("/")[0], *vals]) + " |")
        lines.append("")
    lines += [
        f"IQM [95 % bootstrap CI] over seeds. acc = held-out preference accuracy (ties "
        "excluded) of the learned score — Σ r̂, −regret_r̂ or Σ γ^t Â — against each oracle's "
        "labels (both Â rows share one Â). EPIC = distance of the function PPO optimises to the "
        "true reward (root x-velocity of s' standing in for the frame-averaged velocity); — "
        "for the greedy policy, which optimises no reward. True return: deterministic policy, "
        f"{cfg['eval_episodes']} episodes"
        + (f" of {cfg['eval_steps']} steps" if cfg["eval_steps"] else "") + ".",
    ]
    if command:
        lines += ["", "Produced by:", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def summary_line(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """The one JSON line the entry script ends with."""
    return {
        "study": RESULT_STEM, "out_dir": str(out_dir), "cells_run": result["cells_run"],
        "cells_skipped": result["cells_skipped"], "wall_s": round(result["wall_s"], 1),
        "ppo_steps": result["ppo"]["steps"], "kl_ref_coef": result["ppo"]["kl_ref_coef"],
        "iqm_return": {task: {name: (None if row["iqm"]["return"] is None
                                     else round(row["iqm"]["return"][0], 2))
                              for name, row in rows.items()}
                       for task, rows in result["tables"].items()},
    }


def write_report(result: Mapping[str, Any], out_dir: str | Path, command: str = "") -> list[Path]:
    """``OUT/learner_assumption.json`` and ``.md`` (atomic writes)."""
    from prefrl.io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    return [atomic_write_json(out / f"{RESULT_STEM}.json", _jsonable(result)),
            atomic_write_text(out / f"{RESULT_STEM}.md", format_markdown(result, command))]


__all__ = [
    "LABELS",
    "LEARNERS",
    "METRICS",
    "QUICK",
    "EpicSample",
    "LearnerAssumptionConfig",
    "Library",
    "PsiNetwork",
    "SFResult",
    "SeedSplit",
    "StartStates",
    "TaskContext",
    "TaskData",
    "cell_path",
    "fit_awr",
    "fit_library_psi",
    "fit_regret_sf",
    "format_markdown",
    "library_rollouts",
    "load_library",
    "load_task_data",
    "psi_fit_quality",
    "psi_network_for",
    "quick_config",
    "rm_config",
    "run",
    "run_cell",
    "seed_split",
    "segment_start_states",
    "summary_line",
    "train_ppo",
    "write_report",
]
