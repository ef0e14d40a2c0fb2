"""Fit a regret-model reward r̂ = w·φ on a labelled dataset and a policy library (``prefrl fit``).

``prefrl fit --learner regret_sf --dataset D --label regret --library DIR_OR_FILES --out F``
runs the learner of :mod:`prefrl.learners.regret_sf` (Knox et al. 2022) the
way the learner-assumption study does, on one dataset:

1. the dataset's labelled queries are split into training and validation
   (``--valid-fraction``, seeded); every input is checked before any fitting —
   the library's paths and policies' observation sizes, the regret model's γ
   against the dataset's regret oracle, the pool's stored physics states;
2. φ: frozen (the last hidden layer of a partial-return r̂ fitted on the same
   labels, with the reward-model options ``--hidden``, ``--num-steps`` …) or
   learned (``--phi learned``, with ψ refitted every ``--refit-every`` updates);
3. ψ^π of every library policy is regressed on its rollouts from fresh
   resets and from the pool's own segment start states; held-out rollouts
   measure the ψ fit (``psi_rel_error``, ``value_rel_error``);
4. w (and learned φ) by the Bradley–Terry loss on −regret, early-stopped on
   the validation loss; r̂ is standardised over the training segments' steps.

The file (:func:`prefrl.checkpoints.save_regret_sf_reward`) is what
``prefrl train ppo --reward-model F`` optimises.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

import jax
import numpy as np

from prefrl import checkpoints, evaluation
from prefrl.config import field
from prefrl.data import pairs
from prefrl.learners import reward_model as rm
from prefrl.loops import fit as reward_fit
from prefrl.studies import learner_assumption_config as settings
from prefrl.studies.learner_assumption_data import TaskData, pair_batch, query_split, strip
from prefrl.studies.learner_assumption_fit import fit_regret_sf, fit_rm
from prefrl.studies.learner_assumption_library import (
    fit_rollouts,
    heldout_rollouts,
    load_library,
    start_indices,
)


def _sf_field(name: str) -> Any:
    """The study's option of the same name (one definition of default and help)."""
    f = settings.LearnerAssumptionConfig.__dataclass_fields__[name]
    return field(f.default, f.metadata.get("help", ""))


@dataclasses.dataclass(frozen=True)
class RegretSFOptions:
    """Options of ``prefrl fit --learner regret_sf`` (named as in the learner-assumption study)."""

    library_final: bool = _sf_field("library_final")
    phi: Literal["frozen", "learned"] = _sf_field("phi")
    phi_width: int = _sf_field("phi_width")
    phi_hidden: tuple[int, ...] = _sf_field("phi_hidden")
    refit_every: int = _sf_field("refit_every")
    library_reset_envs: int = _sf_field("library_reset_envs")
    library_pool_envs: int = _sf_field("library_pool_envs")
    library_steps: int = _sf_field("library_steps")
    heldout_envs: int = _sf_field("heldout_envs")
    heldout_steps: int = _sf_field("heldout_steps")
    psi_hidden: tuple[int, ...] = _sf_field("psi_hidden")
    psi_method: Literal["mc", "td"] = _sf_field("psi_method")
    psi_rounds: int = _sf_field("psi_rounds")
    psi_steps_per_round: int = _sf_field("psi_steps_per_round")
    psi_batch_size: int = _sf_field("psi_batch_size")
    psi_learning_rate: float = _sf_field("psi_learning_rate")
    sf_steps: int = _sf_field("sf_steps")
    sf_batch_size: int = _sf_field("sf_batch_size")
    sf_learning_rate: float = _sf_field("sf_learning_rate")
    sf_l2: float = _sf_field("sf_l2")
    gpi_temperature: float = _sf_field("gpi_temperature")


def _task_data(path: str, label: str) -> tuple[TaskData, dict[str, Any]]:
    """The dataset's pool and its ``label``-labelled queries (skipped ones dropped)."""
    from prefrl.data import dataset as dataset_io
    from prefrl.envs import tasks

    ds, header = dataset_io.load(path)
    if label not in ds.labels:
        raise ValueError(f"{path}: no labels {label!r}; the dataset has {sorted(ds.labels)}")
    name = header.get("task")
    if not name:
        raise ValueError(f"{path}: the header names no task (the library is rolled out on it)")
    params = dict(header.get("meta", {})).get("task_params") or header.get("task_params") or {}
    spec = tasks.make_task(name, **dict(params))
    seg = jax.tree.map(np.asarray, ds.segments)
    if seg.obs.shape[-1] != spec.obs_dim:
        raise ValueError(f"{path}: observations of size {seg.obs.shape[-1]}, task {name} has "
                         f"{spec.obs_dim}")
    keep = np.asarray(ds.label_mask[label], bool)
    first, second = np.asarray(ds.first)[keep], np.asarray(ds.second)[keep]
    labels = np.asarray(ds.labels[label], np.float32)[keep]
    return TaskData(name, spec, seg, first, second, {label: labels}), header


def _discount(header: dict[str, Any], model_config: rm.RewardModelConfig, given: bool,
              path: str) -> float:
    """γ of the regret model: the dataset's regret oracle's, or ``--discount`` (must agree)."""
    oracle = dict(header.get("oracles", {})).get("regret", {}).get("discount")
    if oracle is not None and given and abs(float(oracle) - model_config.discount) > 1e-9:
        raise ValueError(f"--discount {model_config.discount} differs from the regret labels' "
                         f"γ = {oracle} in {path}")
    gamma = float(oracle) if oracle is not None else float(model_config.discount)
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"the regret model needs 0 < γ < 1 (successor features), got {gamma}")
    return gamma


def fit_regret_sf_dataset(fit: Any, model_config: rm.RewardModelConfig,
                          options: RegretSFOptions, *, library: tuple[str, ...],
                          discount_given: bool) -> dict[str, Any]:
    """Load and check every input, fit r̂ = w·φ, save it; returns the JSON summary.

    ``fit`` is ``prefrl fit``'s :class:`prefrl.commands.fit.FitConfig`
    (dataset, label, out, seed, valid_fraction); ``model_config`` the
    partial-return r̂ whose hidden layer is the frozen φ.
    """
    start = time.perf_counter()
    data, header = _task_data(fit.dataset, fit.label)
    gamma = _discount(header, model_config, discount_given, fit.dataset)
    if not library:
        raise ValueError("--learner regret_sf needs --library: PPO checkpoint files or folders "
                         "of them (e.g. experiments/experts/run)")
    config = settings.LearnerAssumptionConfig(
        tasks=(data.name,), library=tuple(library), discount=gamma, seed=int(fit.seed),
        rm_hidden=tuple(model_config.hidden), rm_ensemble=model_config.ensemble_size,
        rm_steps=model_config.num_steps, rm_batch_size=model_config.batch_size,
        rm_learning_rate=model_config.learning_rate, eval_every=model_config.eval_every,
        **dataclasses.asdict(options))
    lib = load_library(config, data.spec)  # missing paths, wrong observation sizes: here
    try:
        split = query_split(data, fit.valid_fraction, fit.seed)
    except ValueError as err:
        raise ValueError(f"--learner regret_sf needs a validation split (--valid-fraction > 0 "
                         f"and enough queries): {err}") from err
    train_rows, valid_rows = split.train, split.valid
    starts, held_starts = start_indices(config, data.name,
                                        np.arange(data.segments.obs.shape[0]))
    train = pair_batch(data, train_rows, fit.label)
    pairs.validate(train, what=f"{fit.dataset} training split")

    # Everything is checked: fit the partial-return r̂ (φ), roll out Π, fit ψ and w.
    pr_config = dataclasses.replace(model_config, assumption="partial_return", discount=1.0)
    result = fit_rm(settings.named_key(config, "r_hat"), pr_config, train,
                    pair_batch(data, valid_rows, fit.label))
    reward_fit.check_finite(jax.device_get(result.metrics))
    rollouts = fit_rollouts(config, data.spec, data.segments, lib.policies, starts)
    heldout = heldout_rollouts(config, data.spec, data.segments, lib.policies, held_starts)
    fitted = fit_regret_sf(config, data, split, fit.label, rm.model(pr_config),
                           strip(result.state), fit.seed, rollouts=rollouts, heldout=heldout)
    scores = fitted.scores
    accuracy = {name: evaluation.preference_accuracy(
        scores[data.first[r]], scores[data.second[r]], data.labels[fit.label][r])
        for name, r in (("train_accuracy", train_rows), ("valid_accuracy", valid_rows))}
    summary: dict[str, Any] = {
        "dataset": str(fit.dataset), "label": fit.label, "learner": "regret_sf",
        "task": data.name, "discount": gamma, "library": lib.names,
        "num_train": int(train_rows.size), "num_valid": int(valid_rows.size), **accuracy,
        **{k: float(v) for k, v in fitted.metrics.items()},
        "seconds": round(time.perf_counter() - start, 3)}
    path = checkpoints.save_regret_sf_reward(
        fit.out, fitted.value_fn, fitted.params, obs_dim=data.spec.obs_dim,
        act_dim=data.spec.act_dim, task=data.spec.to_header(),
        extra={"fit": summary, "seed": int(fit.seed),
               "options": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in dataclasses.asdict(options).items()}})
    summary["model"] = str(path)
    return summary


__all__ = ["RegretSFOptions", "fit_regret_sf_dataset"]
