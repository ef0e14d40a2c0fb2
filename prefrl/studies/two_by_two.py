"""The 2×2 study: labelling model × learning assumption (Knox et al. 2022, 2023).

Rows: which preference model produced the labels — partial return (Σ r) or
regret (Σ γ^t A_E). Columns: which model the learner assumes — it fits r̂
(partial return, γ_p = 1) or Â (regret, γ). Every cell uses the *same*
queries and the *same* seeds. For each fitted model it reports:

* held-out preference accuracy against *both* oracles' labels (ties
  excluded, see :func:`prefrl.evaluation.preference_accuracy`);
* Pearson / Spearman correlation of the learned function with the true
  reward r and with the expert advantage A_E on the held-out steps;
* EPIC distance to r (0 = same reward up to shaping and scale; note
  EPIC(A_E, r) = 0, so a correctly learned advantage also scores 0);

summarised across seeds by the IQM with a 95 % stratified-bootstrap interval.

Tasks:

* ``synthetic`` — a small deterministic MDP with a known reward
  r(s, a) = Σ_i w_i tanh(s_i) − c ‖a‖² and a known potential V_E(s) = κ v·s
  that stands in for the expert's value, so A_E = r + γ V_E(s') − V_E(s)
  exactly (no approximation); runs anywhere in a minute.
* ``half_cheetah`` — a labelled dataset file (``prefrl.data.dataset``)
  holding ``partial_return`` and ``regret`` labels of the same queries, plus
  the expert critic (``prefrl.checkpoints.load_value_fn``) for A_E.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import evaluation, preference
from prefrl.config import field
from prefrl.data import pairs
from prefrl.learners import reward_model as rm
from prefrl.loops import fit as reward_fit

Array = jax.Array

LABELS = ("partial_return", "regret")
ASSUMPTIONS = ("partial_return", "regret")
METRICS = ("acc_pr", "acc_regret", "pearson_r", "spearman_r", "pearson_adv", "spearman_adv",
           "epic_r")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Options of ``experiments/two_by_two.py`` / ``prefrl fit --study``."""

    task: Literal["synthetic", "half_cheetah"] = field("synthetic", "which data to run on")
    dataset: str = field("", "half_cheetah: labelled dataset file (labels partial_return, regret)")
    expert: str = field("", "half_cheetah: expert checkpoint whose critic gives V_E for A_E")
    seeds: int = field(5, "seeds per cell (the same in every cell)")
    seed: int = field(0, "base seed (data and fits)")
    num_segments: int = field(2000, "synthetic: segments in the pool")
    segment_length: int = field(10, "synthetic: steps per segment")
    num_train: int = field(2000, "labelled training queries (incl. validation)")
    num_test: int = field(1000, "held-out test queries")
    valid_fraction: float = field(0.1, "fraction of training queries held out for early stopping")
    label_temperature: float = field(
        0.0, "synthetic: Boltzmann β relative to the score std (0 = deterministic labels)"
    )
    discount: float = field(0.9, "γ of the regret model and of A_E (partial return uses 1)")
    hidden: tuple[int, ...] = field((64, 64), "reward-model hidden widths")
    ensemble_size: int = field(3, "ensemble members")
    num_steps: int = field(600, "updates per fit")
    batch_size: int = field(64, "queries per update")
    learning_rate: float = field(1e-3, "Adam step size")
    eval_every: int = field(50, "steps between validation checks")
    epic_transitions: int = field(1000, "transitions for EPIC")
    bootstrap_reps: int = field(2000, "bootstrap replicates for the intervals")

    def __post_init__(self) -> None:
        if self.task not in ("synthetic", "half_cheetah"):
            raise ValueError(f"task must be 'synthetic' or 'half_cheetah', got {self.task!r}")
        if self.task == "half_cheetah" and not (self.dataset and self.expert):
            raise ValueError("task 'half_cheetah' needs --dataset FILE and --expert CHECKPOINT")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.num_train < 4 or self.num_test < 1:
            raise ValueError("need num_train >= 4 and num_test >= 1")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if self.label_temperature < 0:
            raise ValueError("label_temperature must be >= 0")

    def model_config(self, assumption: str) -> rm.RewardModelConfig:
        """The learner of one column: γ_p = 1 for partial return, γ for regret."""
        return rm.RewardModelConfig(
            assumption=rm.fitted_function(assumption),  # type: ignore[arg-type]
            hidden=self.hidden,
            ensemble_size=self.ensemble_size,
            num_steps=self.num_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            eval_every=min(self.eval_every, self.num_steps),
            discount=1.0 if assumption == "partial_return" else self.discount,
        )


class StudyData(NamedTuple):
    """A segment pool with ground truth, and labelled train/test queries.

    ``reward``/``advantage`` ``[N, k]`` are r and A_E per step; ``train`` and
    ``test`` are ``(first [Q], second [Q])``; ``labels[split][name]`` ``[Q]``;
    ``true_reward`` evaluates r off the data (EPIC needs r at any (s, a, s')).
    """

    obs: np.ndarray  # [N, k, obs]
    action: np.ndarray  # [N, k, act]
    next_obs: np.ndarray  # [N, k, obs]
    mask: np.ndarray  # [N, k]
    reward: np.ndarray  # [N, k]
    advantage: np.ndarray  # [N, k]
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    labels: dict[str, dict[str, np.ndarray]]
    true_reward: Callable[[Array, Array, Array], Array]  # (s, a, s') [N, …] -> [N], for EPIC


# --------------------------------------------------------------------------- #
# Synthetic task
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """Deterministic linear dynamics with a known nonlinear reward and potential.

    ``s' = 0.9 s + 0.5 a B``; ``r(s, a) = Σ_i w_i tanh(s_i) − 0.25 ‖a‖²``;
    ``V_E(s) = κ v·s`` (κ = ``value_scale``); ``A_E = r + γ V_E(s') − V_E(s)``.
    ``w, v, B`` are fixed by ``seed``. Behaviour: a ~ U[−1, 1]^act,
    s_0 ~ N(0, I).
    """

    obs_dim: int = 6
    act_dim: int = 2
    value_scale: float = 3.0
    seed: int = 0

    def _weights(self) -> tuple[Array, Array, Array]:
        kw, kv, kb = jax.random.split(jax.random.key(self.seed), 3)
        w = jax.random.normal(kw, (self.obs_dim,))
        v = jax.random.normal(kv, (self.obs_dim,)) / math.sqrt(self.obs_dim)
        b = jax.random.normal(kb, (self.act_dim, self.obs_dim)) / math.sqrt(self.act_dim)
        return w, v, b

    def reward(self, obs: Array, action: Array) -> Array:
        """``[..., obs], [..., act] -> [...]`` the true reward."""
        w, _, _ = self._weights()
        return jnp.tanh(obs) @ w - 0.25 * jnp.sum(action**2, axis=-1)

    def value(self, obs: Array) -> Array:
        """``[..., obs] -> [...]`` the potential standing in for V_E."""
        _, v, _ = self._weights()
        return self.value_scale * (obs @ v)

    def step(self, obs: Array, action: Array) -> Array:
        _, _, b = self._weights()
        return 0.9 * obs + 0.5 * (action @ b)

    def segments(self, key: Array, num: int, length: int, discount: float) -> dict[str, Array]:
        """``num`` segments of ``length`` steps: obs/action/next_obs/mask/reward/advantage."""
        key_s0, key_a = jax.random.split(key)
        s0 = jax.random.normal(key_s0, (num, self.obs_dim))
        actions = jax.random.uniform(key_a, (length, num, self.act_dim), minval=-1.0, maxval=1.0)

        def body(s, a):
            s_next = self.step(s, a)
            return s_next, (s, s_next)

        _, (obs, next_obs) = jax.lax.scan(body, s0, actions)
        obs, next_obs = jnp.swapaxes(obs, 0, 1), jnp.swapaxes(next_obs, 0, 1)
        action = jnp.swapaxes(actions, 0, 1)
        reward = self.reward(obs, action)
        advantage = reward + discount * self.value(next_obs) - self.value(obs)
        return dict(obs=obs, action=action, next_obs=next_obs,
                    mask=jnp.ones(reward.shape, jnp.float32), reward=reward, advantage=advantage)


def oracle_labels(
    key: Array,
    reward: np.ndarray,
    advantage: np.ndarray,
    mask: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    *,
    discount: float,
    temperature: float = 0.0,
) -> dict[str, np.ndarray]:
    """Labels of both oracles for queries ``(first, second)``: ``{name: [Q]}``.

    partial return: Σ_t r_t; regret: Σ_t γ^t A_E,t. ``temperature`` 0 gives
    deterministic labels (½ on exact ties); > 0 samples μ ~ Bernoulli(P)
    with β = temperature × std of that oracle's segment scores (imitation
    issue #821: raw score scales make fixed-β labels near-deterministic).
    """
    from prefrl import oracles

    pr = jax.vmap(lambda r, m: preference.partial_return(r, mask_t=m))(reward, mask)
    rg = jax.vmap(lambda a, m: preference.regret_score(a, discount=discount, mask_t=m))(
        advantage, mask)
    out = {}
    for name, score, k in zip(LABELS, (pr, rg), jax.random.split(key, 2), strict=True):
        # β relative to the pool's score scale, in score units for the oracle.
        beta = temperature * float(jnp.std(score)) if temperature > 0 else 0.0
        oracle = oracles.OracleConfig(model=name, temperature=beta)  # type: ignore[arg-type]
        labels = oracles.label_scores(oracle, k, score[first], score[second])
        out[name] = np.asarray(labels.label, np.float32)
    return out


def synthetic_data(config: StudyConfig, task: SyntheticTask | None = None) -> StudyData:
    """Pool, ground truth, queries and both oracles' labels for the synthetic task."""
    task = SyntheticTask(seed=config.seed) if task is None else task
    key = jax.random.key(config.seed)
    key_seg, key_train, key_test, key_lab_train, key_lab_test = jax.random.split(key, 5)
    seg = {k: np.asarray(v) for k, v in task.segments(
        key_seg, config.num_segments, config.segment_length, config.discount).items()}
    true_reward = evaluation.state_action_reward(task.reward)
    return _labelled(config, seg, true_reward, key_train, key_test, key_lab_train, key_lab_test)


def _labelled(config, seg, true_reward, key_train, key_test, key_lab_train, key_lab_test
              ) -> StudyData:
    from prefrl.data.queries import uniform_pairs

    # Train and test queries come from disjoint halves of the pool, so test
    # accuracy measures generalisation to unseen segments.
    n = seg["obs"].shape[0]
    half = n // 2
    tr_first, tr_second = (np.asarray(x) for x in uniform_pairs(key_train, half, config.num_train))
    te_first, te_second = (np.asarray(x) + half for x in uniform_pairs(key_test, n - half,
                                                                        config.num_test))
    labels = {}
    for split, (f, s), k in (("train", (tr_first, tr_second), key_lab_train),
                             ("test", (te_first, te_second), key_lab_test)):
        labels[split] = oracle_labels(k, seg["reward"], seg["advantage"], seg["mask"], f, s,
                                      discount=config.discount,
                                      temperature=config.label_temperature)
    return StudyData(seg["obs"], seg["action"], seg["next_obs"], seg["mask"], seg["reward"],
                     seg["advantage"], (tr_first, tr_second), (te_first, te_second), labels,
                     true_reward)


def check_discounts(config: StudyConfig, expert_header: dict[str, Any],
                    dataset_header: dict[str, Any]) -> None:
    """ValueError unless ``config.discount`` is the critic's γ and the regret labels' γ.

    A_E = r + γ V_E(s') − V_E(s) is only the expert's advantage with the γ
    that V_E was trained with, and the regret labels are Σ γ^t A_E with the γ
    of their oracle; a study with another γ would score against a different
    function than the labels came from.
    """
    critic = expert_header.get("discount")
    if critic is None:
        raise ValueError(f"{config.expert}: checkpoint header has no 'discount'; cannot check "
                         "that --discount is the critic's γ")
    if abs(float(critic) - config.discount) > 1e-9:
        raise ValueError(f"--discount {config.discount} differs from the expert critic's discount "
                         f"{critic} ({config.expert}); pass --discount {critic}")
    oracle = dict(dataset_header.get("oracles", {})).get("regret", {})
    labelled = oracle.get("discount")
    if labelled is not None and abs(float(labelled) - config.discount) > 1e-9:
        raise ValueError(f"--discount {config.discount} differs from the discount {labelled} of "
                         f"the regret labels in {config.dataset}")


split_by_segments = pairs.split_by_segments


def half_cheetah_data(config: StudyConfig) -> StudyData:
    """Study data from a labelled half-cheetah dataset and an expert critic.

    The dataset (``prefrl label --oracles partial_return regret``) must hold
    both labels of the same queries, none skipped. Queries are split on
    disjoint segment halves (:func:`split_by_segments`). A_E,t = r_t + γ
    V_E(s_{t+1}) − V_E(s_t) from the critic
    (:func:`prefrl.preference.td_advantages`), with γ = ``config.discount``,
    which must be the critic's and the regret labels' γ
    (:func:`check_discounts`).
    """
    from prefrl import checkpoints
    from prefrl.data import dataset as dataset_io
    from prefrl.envs import tasks

    ds, header = dataset_io.load(config.dataset)
    _, expert_header = checkpoints.load_ppo(config.expert)
    check_discounts(config, expert_header, header)
    # `prefrl label` records the reward parameters under meta.task_params.
    params = header.get("task_params") or dict(header.get("meta", {})).get("task_params") or {}
    task = tasks.make_task(header["task"], **dict(params))

    def true_reward(obs: Array, action: Array, next_obs: Array) -> Array:
        # Half-cheetah's reward uses the mean x-velocity over the frame skip,
        # which the observation does not hold; EPIC evaluates r off the data,
        # so it uses the root x-velocity of s' (obs index 8 = qvel[0]) as a
        # stand-in. Documented approximation; the correlations use the exact
        # logged rewards.
        del obs
        return task.reward(next_obs[..., 8], action)

    missing = [name for name in LABELS if name not in ds.labels]
    if missing:
        raise ValueError(f"{config.dataset}: the study needs labels {list(LABELS)}; "
                         f"missing {missing}")
    skipped = {name: int(np.sum(~np.asarray(ds.label_mask[name], bool))) for name in LABELS}
    if any(skipped.values()):
        raise ValueError(f"{config.dataset}: the study needs every query labelled by both "
                         f"oracles; skipped queries per oracle: {skipped}")
    seg = ds.segments
    obs, next_obs = np.asarray(seg.obs, np.float32), np.asarray(seg.next_obs, np.float32)
    value_fn = checkpoints.load_value_fn(config.expert, obs_dim=obs.shape[-1])
    values = np.asarray(value_fn(jnp.asarray(obs)))
    next_values = np.asarray(value_fn(jnp.asarray(next_obs)))
    adv = jax.vmap(lambda r, v, nv, m: preference.td_advantages(
        r, v, nv, discount=config.discount, mask_t=m))(
        jnp.asarray(seg.reward), jnp.asarray(values), jnp.asarray(next_values),
        jnp.asarray(seg.mask))
    first, second = np.asarray(ds.first), np.asarray(ds.second)
    tr, te = split_by_segments(jax.random.key(config.seed), obs.shape[0], first, second,
                               config.num_train, config.num_test)
    labels = {split: {name: np.asarray(ds.labels[name], np.float32)[idx] for name in LABELS}
              for split, idx in (("train", tr), ("test", te))}
    return StudyData(obs, np.asarray(seg.action, np.float32), next_obs,
                     np.asarray(seg.mask, np.float32), np.asarray(seg.reward, np.float32),
                     np.asarray(adv), (first[tr], second[tr]), (first[te], second[te]), labels,
                     true_reward)


# --------------------------------------------------------------------------- #
# Running the grid
# --------------------------------------------------------------------------- #


def pair_batch(data: StudyData, split: str, label: str, rows: np.ndarray | None = None
               ) -> rm.PairBatch:
    first, second = data.train if split == "train" else data.test
    lab = data.labels[split][label]
    if rows is not None:
        first, second, lab = first[rows], second[rows], lab[rows]
    return pairs.gather(data, first, second, lab)




class EvalSample(NamedTuple):
    """What every fitted model is scored on (shared by all cells and seeds)."""

    seg_obs: Array  # [S, k, obs] the test queries' segments
    seg_action: Array  # [S, k, act]
    seg_mask: Array  # [S, k]
    first: np.ndarray  # [Q] test queries as rows of seg_*
    second: np.ndarray  # [Q]
    step_obs: Array  # [T, obs] the masked steps of those segments
    step_action: Array  # [T, act]
    step_reward: np.ndarray  # [T] r
    step_advantage: np.ndarray  # [T] A_E
    epic_obs: Array  # [E, obs] EPIC transitions (a subset of the steps)
    epic_action: Array  # [E, act]
    epic_next_obs: Array  # [E, obs]
    coverage_obs: Array  # [J, obs] EPIC coverage draws
    coverage_action: Array  # [J, act]
    true_canonical: np.ndarray  # [E] C(r) on the EPIC transitions


def eval_sample(data: StudyData, config: StudyConfig) -> EvalSample:
    """Fix the held-out sample once, so every cell and seed is scored on the same data."""
    te_first, te_second = data.test
    segs, inverse = np.unique(np.concatenate([te_first, te_second]), return_inverse=True)
    q = te_first.shape[0]
    on = data.mask[segs] > 0
    obs, act, nxt = data.obs[segs][on], data.action[segs][on], data.next_obs[segs][on]
    key_pick, key_s, key_a = jax.random.split(jax.random.key(config.seed + 2), 3)
    pick = np.asarray(jax.random.permutation(key_pick, obs.shape[0]))[: config.epic_transitions]
    num_cov = min(256, obs.shape[0])
    cov_obs = obs[np.asarray(jax.random.choice(key_s, obs.shape[0], (num_cov,), replace=False))]
    cov_act = act[np.asarray(jax.random.choice(key_a, obs.shape[0], (num_cov,), replace=False))]
    epic = tuple(jnp.asarray(x[pick]) for x in (obs, act, nxt))
    true_can = jax.jit(lambda o, a, n: evaluation.canonicalize(
        data.true_reward, o, a, n, jnp.asarray(cov_obs), jnp.asarray(cov_act),
        discount=config.discount))(*epic)
    return EvalSample(
        jnp.asarray(data.obs[segs]), jnp.asarray(data.action[segs]), jnp.asarray(data.mask[segs]),
        inverse[:q], inverse[q:], jnp.asarray(obs), jnp.asarray(act),
        data.reward[segs][on], data.advantage[segs][on], *epic, jnp.asarray(cov_obs),
        jnp.asarray(cov_act), np.asarray(true_can))


def _seed_arrays(model: rm.RewardModel, state: rm.RewardModelState, sample: EvalSample,
                 discount: float) -> tuple[Array, Array, Array]:
    """One model's segment scores ``[S]``, step values ``[T]`` and C(r̂) ``[E]``."""
    f = rm.reward_fn(model, state)
    scores = rm.segment_scores(model, state, sample.seg_obs, sample.seg_action, sample.seg_mask)
    values = f(sample.step_obs, sample.step_action)
    canonical = evaluation.canonicalize(
        evaluation.state_action_reward(f), sample.epic_obs, sample.epic_action,
        sample.epic_next_obs, sample.coverage_obs, sample.coverage_action, discount=discount)
    return scores, values, canonical


def cell_metrics(scores: np.ndarray, values: np.ndarray, canonical: np.ndarray,
                 sample: EvalSample, data: StudyData) -> dict[str, float]:
    """All metrics of one fitted model from its :func:`_seed_arrays`.

    EPIC uses the MDP's γ: the shaping A_E − r is γ-shaping.
    """
    s1, s2 = scores[sample.first], scores[sample.second]
    r, adv = sample.step_reward, sample.step_advantage
    rho = evaluation.pearson(canonical, sample.true_canonical)
    return {
        "acc_pr": evaluation.preference_accuracy(s1, s2, data.labels["test"]["partial_return"]),
        "acc_regret": evaluation.preference_accuracy(s1, s2, data.labels["test"]["regret"]),
        "pearson_r": evaluation.pearson(values, r),
        "spearman_r": evaluation.spearman(values, r),
        "pearson_adv": evaluation.pearson(values, adv),
        "spearman_adv": evaluation.spearman(values, adv),
        "epic_r": evaluation.pearson_distance(rho),
    }


# Module-level jitted functions with the configs static: the two cells of one
# assumption (same config, same shapes) share one compilation. Data are
# arguments, not closed-over constants: XLA would fold megabytes of segments
# into the program and compile far longer.
@functools.partial(jax.jit, static_argnums=1)
def _fit_seeds(keys: Array, model_cfg: rm.RewardModelConfig, train: rm.PairBatch,
               valid: rm.PairBatch) -> reward_fit.FitResult:
    """``[S]`` keys -> S independent fits (stacked on a leading seed axis)."""
    return jax.vmap(lambda k: reward_fit.fit(k, model_cfg, train, valid))(keys)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _seed_arrays_vmapped(model: rm.RewardModel, states: rm.RewardModelState,
                         sample: EvalSample, discount: float) -> tuple[Array, Array, Array]:
    return jax.vmap(lambda st: _seed_arrays(model, st, sample, discount))(states)


def run_cell(config: StudyConfig, data: StudyData, label: str, assumption: str,
             sample: EvalSample | None = None) -> list[dict[str, float]]:
    """Fit ``config.seeds`` models (one vmapped, jitted call) and score each."""
    model_cfg = config.model_config(assumption)
    num_train = data.train[0].shape[0]
    # The same validation split in every cell (fixed by the base seed).
    parts = pairs.split(num_train, {"valid": config.valid_fraction}, config.seed + 1, min_part=1)
    train = pair_batch(data, "train", label, parts["train"])
    valid = pair_batch(data, "train", label, parts["valid"])
    pairs.validate(train, what=f"train labels {label!r}")
    keys = jax.random.split(jax.random.key(config.seed), config.seeds)
    fits = _fit_seeds(keys, model_cfg, train, valid)
    reward_fit.check_finite(jax.tree.map(lambda x: np.moveaxis(np.asarray(x), 0, 1), fits.metrics))
    sample = eval_sample(data, config) if sample is None else sample
    arrays = _seed_arrays_vmapped(rm.model(model_cfg), fits.state, sample, config.discount)
    scores, values, canonical = (np.asarray(x) for x in arrays)
    return [cell_metrics(scores[i], values[i], canonical[i], sample, data)
            for i in range(config.seeds)]


def run(config: StudyConfig, data: StudyData | None = None) -> dict[str, Any]:
    """Run all four cells; returns per-seed metrics and IQM [95 % CI] per cell.

    ``{"cells": {"<label>/<assumption>": {"per_seed": {metric: [seeds]},
    "iqm": {metric: [point, low, high]}}}, "config": {...}}``
    """
    from prefrl.config import to_dict

    if data is None:
        data = synthetic_data(config) if config.task == "synthetic" else half_cheetah_data(config)
    sample = eval_sample(data, config)
    cells = {}
    for label in LABELS:
        for assumption in ASSUMPTIONS:
            per_seed_list = run_cell(config, data, label, assumption, sample)
            per_seed = {m: [r[m] for r in per_seed_list] for m in METRICS}
            iqm = evaluation.interval_estimates(
                {m: np.asarray(v) for m, v in per_seed.items()}, reps=config.bootstrap_reps)
            cells[f"{label}/{assumption}"] = {
                "per_seed": per_seed, "iqm": {m: list(v) for m, v in iqm.items()}}
    return {"config": to_dict(config), "cells": cells}
