"""Offline policy learning from a preference dataset: BC, CPL, CPL-BC, contrastive DPO.

No environment is touched while learning. The whole run — optional BC
phase, then the preference phase — is one pure function of a PRNG key,
``train_fn(key) -> (TrainOutput, history)``, built by :func:`make_train_fn`:
every loop is ``lax.scan`` (an outer scan over logging chunks, an inner scan
over steps), so ``jax.jit(jax.vmap(train_fn))(keys)`` trains several seeds
at once (PureJaxRL style). :func:`train` is the host-side driver: it
validates the dataset, splits queries into training and held-out pairs,
runs the jitted, seed-vmapped function and refuses to return (hence to save)
anything from a run whose loss went non-finite.

Algorithms (``algo``):

* ``bc``: behaviour cloning on all segments (``prefrl.learners.bc``).
* ``cpl``: CPL (``prefrl.learners.cpl.make``); ``bc_pretrain_steps`` > 0 adds
  CPL's BC pre-training.
* ``cpl_bc``: CPL with the BC regulariser (``bc_weight`` > 0).
* ``dpo``: contrastive DPO; π_ref is a given policy (``ref_params``) or is
  trained by BC first (``bc_pretrain_steps``); the policy starts from it.

Validation, every ``log_every`` steps, on held-out queries: ``val_accuracy``,
the accuracy of the *implicit* preference ``S_1 > S_2`` (``S_i = Σ_t γ^t log π``
— for DPO ``log π/π_ref``; the temperature does not change the sign) against
the label, ties excluded; and, without π_ref, ``val_nll``, the mean −log π
over the held-out queries' segments. BC uses no labels and trains on every
segment of the pool, so ``val_nll`` measures fit, not generalisation (with
uniform pairs most segments also appear in training queries).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prefrl import checkpoints
from prefrl import config as config_lib
from prefrl.data import pairs
from prefrl.learners import bc as bc_lib
from prefrl.learners import cpl as cpl_lib
from prefrl.networks import make_network
from prefrl.types import PairBatch, PreferenceDataset

Array = jax.Array
Params = Any
Algo = Literal["bc", "cpl", "cpl_bc", "dpo"]
ALGOS: tuple[str, ...] = ("bc", "cpl", "cpl_bc", "dpo")


class TrainingDivergedError(checkpoints.NonFiniteError):
    """The loss (or gradient) became NaN/inf; nothing from the run may be saved."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and network settings shared by every offline algorithm."""

    num_steps: int = config_lib.field(2000, "gradient steps of the main phase (BC for algo=bc)")
    batch_size: int = config_lib.field(32, "queries per step (BC: segments per step)")
    learning_rate: float = config_lib.field(1e-4, "Adam learning rate (CPL's default 1e-4)")
    weight_decay: float = config_lib.field(0.0, "AdamW weight decay")
    max_grad_norm: float = config_lib.field(0.0, "clip gradients to this global norm; 0 = off")
    bc_pretrain_steps: int = config_lib.field(
        0, "BC steps before CPL (pre-training) / to fit π_ref for DPO"
    )
    log_every: int = config_lib.field(100, "steps between validation evaluations")
    validation_fraction: float = config_lib.field(0.1, "fraction of queries held out")
    split_seed: int = config_lib.field(0, "seed of the train/validation split (shared by seeds)")
    hidden: tuple[int, ...] = config_lib.field((256, 256), "policy MLP hidden widths")
    state_dependent_std: bool = config_lib.field(True, "predict log-std from the state")
    normalize_obs: bool = config_lib.field(
        True, "standardise observations by the dataset's mean/std (fixed, stored with the policy)"
    )

    def __post_init__(self) -> None:
        for name in ("num_steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.bc_pretrain_steps < 0:
            raise ValueError(f"bc_pretrain_steps must be >= 0, got {self.bc_pretrain_steps}")
        if self.num_steps % self.log_every or self.bc_pretrain_steps % self.log_every:
            raise ValueError(
                f"num_steps ({self.num_steps}) and bc_pretrain_steps ({self.bc_pretrain_steps}) "
                f"must be multiples of log_every ({self.log_every})"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got "
                             f"{self.validation_fraction}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be non-empty positive widths, got {self.hidden}")

    def optimizer(self) -> optax.GradientTransformation:
        opt = optax.adamw(self.learning_rate, weight_decay=self.weight_decay)
        if self.max_grad_norm > 0:
            opt = optax.chain(optax.clip_by_global_norm(self.max_grad_norm), opt)
        return opt

    def network(self, action_dim: int, obs_mean: Sequence[float] = (),
                obs_std: Sequence[float] = ()) -> nn.Module:
        """The policy; with ``obs_mean``/``obs_std`` a :class:`NormalizedGaussianPolicy`."""
        return make_network(action_dim, self.hidden, self.state_dependent_std, obs_mean,
                            obs_std)


def obs_statistics(obs: Any, mask: Any, min_std: float = 1e-3
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and standard deviation (at least ``min_std``) of unmasked observations.

    Args:
      obs: ``[N, k, obs]`` segment observations; mask: ``[N, k]``.
    """
    obs = np.asarray(obs, np.float64)
    mask = np.asarray(mask, np.float64)[..., None]
    count = max(float(mask.sum()), 1.0)
    mean = (obs * mask).sum(axis=(0, 1)) / count
    std = np.sqrt((((obs - mean) ** 2) * mask).sum(axis=(0, 1)) / count)
    return tuple(mean.tolist()), tuple(np.maximum(std, min_std).tolist())


class PairData(NamedTuple):
    """A segment pool and the queries over it, on device."""

    obs: Array  # [N, k, obs]
    action: Array  # [N, k, act]
    mask: Array  # [N, k]
    first: Array  # [Q] int
    second: Array  # [Q] int
    label: Array  # [Q] float, μ = P(first ≻ second)

    def gather(self, idx: Array) -> PairBatch:
        """``idx [B]`` query indices -> :class:`prefrl.types.PairBatch` (:func:`pairs.gather`)."""
        return pairs.gather(self, self.first[idx], self.second[idx], self.label[idx])


class TrainOutput(NamedTuple):
    params: Params  # the trained policy
    ref_params: Params  # π_ref (DPO) or the BC pre-training result; None otherwise


# ---------------------------------------------------------------- validation


def check_dataset(dataset: PreferenceDataset, label_name: str, action_dim: int | None = None
                  ) -> None:
    """Raise ``ValueError`` naming the problem if the dataset cannot train a policy.

    Checks: the label exists; segments carry actions (``[N, k, act]`` with
    ``act ≥ 1``) of the policy's dimension; obs/actions/labels are finite;
    query indices are in range; labels lie in [0, 1].
    """
    seg = dataset.segments
    if label_name not in dataset.labels:
        raise ValueError(f"dataset has no label {label_name!r}; it has {sorted(dataset.labels)}")
    action = getattr(seg, "action", None)
    if action is None or np.ndim(action) != 3 or np.shape(action)[-1] == 0:
        shape = None if action is None else np.shape(action)
        raise ValueError(
            f"dataset has no actions (segments.action has shape {shape}, expected [N, k, act]); "
            "CPL, DPO and BC learn log π(a|s) and need the actions of every segment"
        )
    n, k, act = np.shape(action)
    if action_dim is not None and act != action_dim:
        raise ValueError(
            f"dataset action dimension {act} differs from the policy's action_dim {action_dim}"
        )
    if np.shape(seg.obs)[:2] != (n, k) or np.shape(seg.mask) != (n, k):
        raise ValueError(f"segments.obs {np.shape(seg.obs)} / mask {np.shape(seg.mask)} do not "
                         f"match segments.action {np.shape(action)}")
    for name, arr in (("segments.obs", seg.obs), ("segments.action", action)):
        if not np.all(np.isfinite(np.asarray(arr))):
            raise ValueError(f"{name} holds NaN or inf")
    label = np.asarray(dataset.labels[label_name])
    if label.shape != np.shape(dataset.first) or np.shape(dataset.second) != label.shape:
        raise ValueError(f"label {label_name!r} has shape {label.shape}, queries "
                         f"{np.shape(dataset.first)}/{np.shape(dataset.second)}")
    if not np.all(np.isfinite(label)) or np.any((label < 0) | (label > 1)):
        raise ValueError(f"label {label_name!r} must be finite and in [0, 1]")
    for name, idx in (("first", dataset.first), ("second", dataset.second)):
        idx = np.asarray(idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"query index {name} out of range [0, {n})")


def prepare_data(dataset: PreferenceDataset, label_name: str, validation_fraction: float,
                 split_seed: int) -> tuple[PairData, PairData]:
    """Drop queries the oracle skipped, shuffle and split into ``(train, validation)``."""
    keep = np.ones(np.shape(dataset.first), bool)
    masks = getattr(dataset, "label_mask", None) or {}
    if label_name in masks:
        keep = np.asarray(masks[label_name], bool)
    q_idx = np.flatnonzero(keep)
    if q_idx.size < 2:
        raise ValueError(f"dataset has {q_idx.size} usable queries for label {label_name!r}; "
                         "need at least 2")
    # Parts keep the permutation's order: training samples queries by position.
    parts = pairs.split(q_idx.size, {"valid": validation_fraction}, split_seed, min_part=1,
                        ordered=False)
    seg = dataset.segments
    pool = (jnp.asarray(seg.obs, jnp.float32), jnp.asarray(seg.action, jnp.float32),
            jnp.asarray(seg.mask, jnp.float32))
    first, second = np.asarray(dataset.first), np.asarray(dataset.second)
    label = np.asarray(dataset.labels[label_name], np.float32)

    def part(ids: np.ndarray) -> PairData:
        return PairData(*pool, jnp.asarray(first[ids], jnp.int32),
                        jnp.asarray(second[ids], jnp.int32), jnp.asarray(label[ids]))

    return part(q_idx[parts["train"]]), part(q_idx[parts["valid"]])


# ---------------------------------------------------------------- the jittable loop


def _scan_phase(update: Callable, state: Any, sample: Callable[[Array], Any],
                evaluate: Callable[[Any], dict], key: Array, num_steps: int, log_every: int
                ) -> tuple[Any, dict[str, Array], Array]:
    """Run ``num_steps`` updates as a scan of scans; returns (state, per-chunk history, bad).

    A step whose loss or gradient is non-finite leaves the state unchanged
    and records its index in ``bad`` (−1 when none), so the state stays the
    last finite one and the host can stop with a clear message.
    """

    def step(carry, step_key):
        state, bad = carry
        new_state, metrics = update(state, sample(step_key))
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        ok = finite & (bad < 0)
        state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
        bad = jnp.where((bad < 0) & ~finite, state.step, bad)
        return (state, bad), metrics

    def chunk(carry, chunk_key):
        carry, metrics = jax.lax.scan(step, carry, jax.random.split(chunk_key, log_every))
        summary = {name: jnp.mean(value) for name, value in metrics.items()}
        summary.update(evaluate(carry[0]))
        return carry, summary

    carry = (state, jnp.asarray(-1, jnp.int32))
    (state, bad), history = jax.lax.scan(chunk, carry,
                                         jax.random.split(key, num_steps // log_every))
    return state, history, bad


def _evaluate(network: nn.Module, params: Params, ref_params: Params, val: PairData,
              discount: float, squash_jacobian: bool = True) -> dict[str, Array]:
    """Held-out metrics: implicit-preference accuracy (and BC's −log π when no π_ref).

    The accuracy scores segments as the learner does (``squash_jacobian`` as in
    :class:`prefrl.learners.cpl.CPLConfig`); ``val_nll`` is always the box density's.
    """
    if val.first.shape[0] == 0:
        return {}
    batch = val.gather(jnp.arange(val.first.shape[0]))
    s_1, s_2 = cpl_lib.pair_scores(network, params, batch, ref_params=ref_params,
                                   discount=discount,
                                   squash_jacobian=squash_jacobian or ref_params is not None)
    out = {"val_accuracy": cpl_lib.preference_metrics(s_1, s_2, batch.label)["accuracy"]}
    if ref_params is None:
        # Held-out BC fit: mean −log π (box density) over every step of both segments.
        logp_1, logp_2 = cpl_lib.pair_log_probs(network, params, batch)
        out["val_nll"] = bc_lib.nll_loss(
            jnp.concatenate([logp_1, logp_2]).reshape(-1),
            jnp.concatenate([batch.mask_1, batch.mask_2]).reshape(-1))
    return out


def _check_spec(algo: str, config: TrainConfig, learner_config: Any, has_ref: bool) -> None:
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose from {ALGOS}")
    expected = {"bc": bc_lib.BCConfig, "cpl": cpl_lib.CPLConfig, "cpl_bc": cpl_lib.CPLConfig,
                "dpo": cpl_lib.DPOConfig}[algo]
    if not isinstance(learner_config, expected):
        raise ValueError(f"algo {algo!r} needs a {expected.__name__}, got "
                         f"{type(learner_config).__name__}")
    if algo == "cpl_bc" and learner_config.bc_weight <= 0:
        raise ValueError("algo 'cpl_bc' needs bc_weight > 0 (CPL-BC's regulariser)")
    if algo == "dpo" and config.bc_pretrain_steps == 0 and not has_ref:
        raise ValueError("algo 'dpo' needs a reference policy: ref_params or "
                         "bc_pretrain_steps > 0 to fit one by BC")
    if has_ref and algo != "dpo":
        raise ValueError(f"ref_params is only used by algo 'dpo', not {algo!r}")


def _make_core(algo: str, config: TrainConfig, learner_config: Any, network: nn.Module,
               has_init: bool, has_ref: bool) -> Callable[..., tuple[TrainOutput, dict]]:
    """``core(key, train, val, init_params, ref_params) -> (TrainOutput, history)``.

    Data and given parameters are *arguments*, not constants baked into the
    compiled program, so one compilation serves every call with equal shapes.
    """
    optimizer = config.optimizer()
    discount = getattr(learner_config, "discount", 1.0)
    jacobian = getattr(learner_config, "squash_jacobian", True)
    bc_steps = config.num_steps if algo == "bc" else config.bc_pretrain_steps
    if has_ref or (has_init and algo != "bc"):
        bc_steps = 0  # the given policy replaces the BC phase
    bc_learner = bc_lib.make(learner_config if algo == "bc" else bc_lib.BCConfig(),
                             network, optimizer)
    if algo == "dpo":
        learner = cpl_lib.make_dpo(learner_config, network, optimizer)
    elif algo != "bc":
        learner = cpl_lib.make(learner_config, network, optimizer)

    def core(key: Array, train: PairData, val: PairData, init_params: Params,
             ref_params: Params) -> tuple[TrainOutput, dict]:
        num_segments, num_queries = train.obs.shape[0], train.first.shape[0]

        def sample_segments(key: Array) -> bc_lib.Batch:
            idx = jax.random.randint(key, (config.batch_size,), 0, num_segments)
            return bc_lib.Batch(train.obs[idx], train.action[idx], train.mask[idx])

        def sample_pairs(key: Array) -> cpl_lib.PairBatch:
            return train.gather(jax.random.randint(key, (config.batch_size,), 0, num_queries))

        k_bc_init, k_bc, k_init, k_pref = jax.random.split(key, 4)
        del key
        history: dict[str, Any] = {}
        bc_params = ref_params if algo == "dpo" else init_params
        if bc_steps > 0:
            state = bc_learner.init(k_bc_init, sample_segments(k_bc_init))
            if init_params is not None:
                state = state.replace(params=init_params,
                                      opt_state=optimizer.init(init_params))
            state, history["bc"], history["bc_bad_step"] = _scan_phase(
                bc_learner.update, state, sample_segments,
                lambda s: _evaluate(network, s.params, None, val, discount, jacobian), k_bc,
                bc_steps,
                config.log_every)
            bc_params = state.params
        if algo == "bc":
            return TrainOutput(bc_params, None), history
        state = learner.init(k_init, sample_pairs(k_init))
        if bc_params is not None:  # BC pre-training, a given policy, or DPO's π_ref
            state = state.replace(params=bc_params, opt_state=optimizer.init(bc_params))
        if algo == "dpo":
            state = state.replace(ref_params=bc_params)
        state, history["pref"], history["pref_bad_step"] = _scan_phase(
            learner.update, state, sample_pairs,
            lambda s: _evaluate(network, s.params, s.ref_params, val, discount, jacobian),
            k_pref,
            config.num_steps, config.log_every)
        return TrainOutput(state.params, bc_params), history

    return core


@functools.lru_cache(maxsize=16)
def _jitted_core(algo: str, config: TrainConfig, learner_config: Any, net_spec: tuple,
                 has_init: bool, has_ref: bool, per_seed: bool
                 ) -> Callable[..., tuple[TrainOutput, dict]]:
    # Cached on hashable specs (frozen configs), so repeated calls with data of
    # the same shapes reuse one compilation. Seeds are the vmapped axis.
    network = make_network(*net_spec)
    core = _make_core(algo, config, learner_config, network, has_init, has_ref)
    params_axis = 0 if per_seed else None
    return jax.jit(jax.vmap(core, in_axes=(0, None, None, params_axis, params_axis)))


def _net_spec(network: nn.Module) -> tuple:
    return (int(network.action_dim), tuple(int(h) for h in network.hidden),
            bool(network.state_dependent_std), tuple(getattr(network, "obs_mean", ())),
            tuple(getattr(network, "obs_std", ())))


def make_train_fn(algo: Algo, config: TrainConfig, learner_config: Any, train: PairData,
                  val: PairData, *, network: nn.Module | None = None,
                  init_params: Params = None, ref_params: Params = None
                  ) -> Callable[[Array], tuple[TrainOutput, dict]]:
    """Build the pure ``train_fn(key) -> (TrainOutput, history)`` of one run.

    ``jax.jit(jax.vmap(train_fn))(keys)`` trains one run per key.

    Args:
      algo: ``"bc"``, ``"cpl"``, ``"cpl_bc"`` or ``"dpo"``.
      config: :class:`TrainConfig`.
      learner_config: ``BCConfig`` (bc), ``CPLConfig`` (cpl, cpl_bc) or ``DPOConfig`` (dpo).
      train, val: :class:`PairData` from :func:`prepare_data`.
      network: the policy network (default ``config.network``, normalised by the
        pool's observation statistics when ``config.normalize_obs``); must
        match ``init_params`` / ``ref_params`` when those are given.
      init_params: start CPL/CPL-BC/BC from these parameters (e.g. a saved BC
        policy) instead of a random initialisation or BC pre-training.
      ref_params: DPO's π_ref (e.g. a saved BC policy); replaces the BC phase.

    Returns:
      ``train_fn``; ``history`` holds per-chunk means of the learner metrics
      plus validation metrics, as ``{"bc": {...}, "pref": {...}}`` with
      ``[num_chunks]`` leaves, and ``{"bc_bad_step", "pref_bad_step"}``
      scalars (−1 = every step finite).
    """
    _check_spec(algo, config, learner_config, ref_params is not None)
    act_dim = int(train.action.shape[-1])
    if network is None:
        stats = obs_statistics(train.obs, train.mask) if config.normalize_obs else ((), ())
        network = config.network(act_dim, *stats)
    if network.action_dim != act_dim:
        raise ValueError(f"dataset action dimension {act_dim} differs from the policy's "
                         f"action_dim {network.action_dim}")
    core = _make_core(algo, config, learner_config, network, init_params is not None,
                      ref_params is not None)
    return lambda key: core(key, train, val, init_params, ref_params)


# ---------------------------------------------------------------- host driver


class OfflineResult(NamedTuple):
    network: nn.Module
    params: Params  # leaves [S, …]: one policy per seed
    ref_params: Params  # [S, …] or None
    history: dict[str, Any]  # numpy, leaves [S, num_chunks]
    num_train_queries: int
    num_val_queries: int


def train(algo: Algo, dataset: PreferenceDataset, *, label_name: str, config: TrainConfig,
          learner_config: Any, seeds: Sequence[int], network: nn.Module | None = None,
          init_params: Params = None, ref_params: Params = None,
          per_seed_params: bool = False) -> OfflineResult:
    """Validate, split, and train ``len(seeds)`` runs in one ``jit(vmap(train_fn))`` call.

    ``network``, ``init_params`` and ``ref_params`` are as in :func:`make_train_fn`,
    shared by every seed — or, with ``per_seed_params``, stacked with a leading
    ``[len(seeds)]`` axis (e.g. each seed's own BC policy as π_ref). The
    dataset's action dimension must match the network's.

    Raises:
      ValueError: bad dataset or settings (the message names the problem).
      TrainingDivergedError: a non-finite loss/gradient in any seed; nothing
        is returned, so nothing broken can be saved.
    """
    if not seeds:
        raise ValueError("need at least one seed")
    check_dataset(dataset, label_name, None if network is None else network.action_dim)
    train_data, val_data = prepare_data(dataset, label_name, config.validation_fraction,
                                        config.split_seed)
    if network is None:
        stats = (obs_statistics(dataset.segments.obs, dataset.segments.mask)
                 if config.normalize_obs else ((), ()))
        network = config.network(int(train_data.action.shape[-1]), *stats)
    _check_spec(algo, config, learner_config, ref_params is not None)
    if network.action_dim != train_data.action.shape[-1]:
        raise ValueError(f"dataset action dimension {train_data.action.shape[-1]} differs "
                         f"from the policy's action_dim {network.action_dim}")
    run_seeds = _jitted_core(algo, config, learner_config, _net_spec(network),
                             init_params is not None, ref_params is not None,
                             bool(per_seed_params))
    keys = jax.vmap(jax.random.key)(jnp.asarray([int(s) for s in seeds], jnp.uint32))
    output, history = run_seeds(keys, train_data, val_data, init_params, ref_params)
    history = jax.tree.map(np.asarray, history)
    for phase in ("bc", "pref"):
        bad = history.get(f"{phase}_bad_step")
        if bad is None:
            continue
        for seed, step in zip(seeds, np.atleast_1d(bad), strict=True):
            if step >= 0:
                raise TrainingDivergedError(
                    f"{algo}: non-finite loss or gradient at {phase} step {int(step)} "
                    f"(seed {seed}); training stopped and nothing was saved. Lower the "
                    "learning rate or the temperature, or set max_grad_norm."
                )
    leaves = jax.tree.leaves(output.params)
    if not all(bool(np.all(np.isfinite(np.asarray(x)))) for x in leaves):
        raise TrainingDivergedError(f"{algo}: non-finite parameters; nothing was saved")
    return OfflineResult(network, output.params, output.ref_params, history,
                         int(train_data.first.shape[0]), int(val_data.first.shape[0]))


def select_seed(tree: Any, i: int) -> Any:
    """The ``i``-th seed's slice of a seed-stacked pytree (None stays None)."""
    return None if tree is None else jax.tree.map(lambda x: x[i], tree)


# ---------------------------------------------------------------- summaries


def summarize_history(history: dict[str, Any]) -> dict[str, Any]:
    """Final-chunk values of every metric, per seed, as plain floats (for JSON)."""
    out: dict[str, Any] = {}
    for phase in ("bc", "pref"):
        for name, value in history.get(phase, {}).items():
            arr = np.asarray(value)
            out[f"{phase}/{name}"] = [float(x) if math.isfinite(x) else None
                                      for x in arr[..., -1].reshape(-1)]
    return out
