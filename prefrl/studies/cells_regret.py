"""Sweep runners of the learners that really assume regret (issue: learner assumption).

* ``regret_sf+ppo`` — the regret-model reward r̂ = w·φ (Knox et al. 2022,
  :mod:`prefrl.learners.regret_sf`): φ is the last hidden layer of a
  partial-return r̂ fitted on the cell's labels, ψ^π is fitted on rollouts of
  the library Π = the expert's folder (its snapshots and ``final.npz``),
  from fresh resets and from the pool's segment start states; then PPO on
  r̂ (:func:`prefrl.studies.cells.ppo_on_rewards`, the same PPO as
  ``rm_*+ppo``).
* ``advantage_greedy`` — Â fitted on the cell's labels (Σ γ^t Â, as
  ``rm_regret``), used as a policy (Knox et al. 2023): advantage-weighted
  regression on the training segments' own actions, no RL.

Both reuse the learner-assumption study's fitting code
(:mod:`prefrl.studies.learner_assumption_fit`) with a
:class:`~prefrl.studies.learner_assumption_config.LearnerAssumptionConfig`
built from the sweep settings; the successor-feature and AWR budgets are the
study's defaults times ``budget_scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefrl.studies.cell_data import (
    CellData,
    heldout_accuracy,
    load_cell_data,
    pair_indices,
    seed_keys,
)
from prefrl.sweeps.spec import CellConfig, SweepError

# Budgets of the study scaled by the sweep's budget_scale (the rest keep their defaults).
_SCALED = ("sf_steps", "psi_steps_per_round", "library_steps", "heldout_steps", "awr_steps",
           "rm_steps")


def study_config(cell: CellConfig, budget_scale: float) -> Any:
    """The learner-assumption settings of a cell: its γ, reward-model sizes, scaled budgets."""
    import dataclasses

    from prefrl.studies import learner_assumption_config as settings

    st = cell.settings
    if not 0.0 < st.discount < 1.0:
        raise SweepError(f"{cell.label()}: {cell.learner} needs discount < 1 (successor "
                         f"features, AWR's Σ γ^t Â), got {st.discount}")
    base = settings.LearnerAssumptionConfig(
        tasks=(cell.task,), discount=st.discount,
        rm_hidden=tuple(st.reward_hidden), rm_ensemble=max(1, st.reward_ensemble),
        rm_steps=st.reward_steps, rm_batch_size=min(st.reward_batch_size, cell.label_budget),
        rm_learning_rate=st.reward_learning_rate,
        sf_batch_size=min(64, cell.label_budget),
        library=() if cell.files.expert is None else (str(Path(cell.files.expert).parent),))
    scaled = {name: max(1, round(getattr(base, name) * budget_scale)) for name in _SCALED
              if name != "rm_steps"}
    scaled["eval_every"] = max(1, min(base.eval_every, scaled["sf_steps"], base.rm_steps))
    return dataclasses.replace(base, **scaled)


def _task_data(cell: CellConfig, data: CellData, first: Any, second: Any, label: Any) -> Any:
    """The cell's pool and one seed's labelled queries as the study's ``TaskData``."""
    import numpy as np

    from prefrl.envs import make_task
    from prefrl.studies.learner_assumption_data import TaskData

    return TaskData(cell.task, make_task(cell.task), data.segments, np.asarray(first),
                    np.asarray(second), {cell.label_model: np.asarray(label, np.float32)})


def run_regret_sf_ppo(cell: CellConfig, seeds: Sequence[int], budget_scale: float
                      ) -> list[dict]:
    """``regret_sf+ppo``: r̂ = w·φ per seed (library = the expert's folder), then PPO on it."""
    import jax

    from prefrl.data import pairs
    from prefrl.learners import reward_model as rm
    from prefrl.learners import sf_networks
    from prefrl.studies.cells import ppo_on_rewards
    from prefrl.studies.learner_assumption_data import pair_batch, query_split, strip
    from prefrl.studies.learner_assumption_fit import fit_regret_sf, fit_rm, rm_config
    from prefrl.studies.learner_assumption_library import (
        fit_rollouts,
        heldout_rollouts,
        load_library,
        start_indices,
    )

    if cell.files.expert is None:
        raise SweepError(f"{cell.label()}: regret_sf+ppo needs the task's expert (its folder "
                         "of snapshots is the policy library Π)")
    from prefrl.envs import make_task

    config = study_config(cell, budget_scale)
    data = load_cell_data(cell)
    spec = make_task(cell.task)
    library = load_library(config, spec)
    # ψ is fitted from the training segments' start states only (held-out ones stay unseen).
    try:
        starts, held_starts = start_indices(config, cell.task, data.train_idx)
    except ValueError as err:
        raise SweepError(f"{cell.label()}: {err}") from err
    rollouts = fit_rollouts(config, spec, data.segments, library.policies, starts)
    heldout = heldout_rollouts(config, spec, data.segments, library.policies, held_starts)
    first, second, label = pair_indices(data, cell.label_budget, seed_keys(seeds))
    params, extra, value = [], [], None
    for s, seed in enumerate(seeds):
        task = _task_data(cell, data, first[s], second[s], label[s])
        split = query_split(task, 0.1, seed)
        train = pair_batch(task, split.train, cell.label_model)
        pairs.validate(train, what=f"{cell.label()} seed {seed}")
        r_config = rm_config(config, "partial_return")
        r_hat = fit_rm(jax.random.fold_in(jax.random.key(int(seed)), 3), r_config, train,
                       pair_batch(task, split.valid, cell.label_model)).state
        fitted = fit_regret_sf(config, task, split, cell.label_model, rm.model(r_config),
                               strip(r_hat), int(seed), rollouts=rollouts, heldout=heldout)
        value = fitted.value_fn
        params.append(fitted.params)
        extra.append({**heldout_accuracy(data, fitted.scores),
                      **{f"sf_{k}": float(v) for k, v in fitted.metrics.items()}})
    return ppo_on_rewards(cell, data, seeds, sf_networks.SFReward(value), params,
                          "learned (regret model, successor features)", extra)


def run_advantage_greedy(cell: CellConfig, seeds: Sequence[int], budget_scale: float
                         ) -> list[dict]:
    """``advantage_greedy``: Â per seed (vmapped fit), then AWR on the training segments."""
    import jax
    import numpy as np

    from prefrl.policies import policy_fn
    from prefrl.rollout import evaluate_on_task
    from prefrl.studies.cells import fit_reward_models
    from prefrl.studies.learner_assumption_data import query_split
    from prefrl.studies.learner_assumption_fit import fit_awr

    config = study_config(cell, budget_scale)
    data = load_cell_data(cell)
    _, train_loss, a_hat, scores = fit_reward_models(cell, data, seeds)
    # The queries Â was fitted on (fit_reward_models draws them with the first split key).
    key_pairs, _ = jax.vmap(jax.random.split, out_axes=1)(seed_keys(seeds))
    first, second, label = pair_indices(data, cell.label_budget, key_pairs)
    out = []
    for s, seed in enumerate(seeds):
        task = _task_data(cell, data, first[s], second[s], label[s])
        split = query_split(task, 0.1, seed)
        policy, awr = fit_awr(config, task, split, np.asarray(a_hat[s]),
                              jax.random.fold_in(jax.random.key(int(seed)), 4))
        result = evaluate_on_task(cell.task, policy_fn(policy, deterministic=True),
                                  episodes=cell.settings.eval_episodes, seed=1_000_003)
        metrics: dict[str, Any] = {
            "true_return": result["mean_return"], "true_return_std": result["std_return"],
            "mean_speed": result["mean_speed"], "reward_train_loss": float(train_loss[s]),
            **heldout_accuracy(data, np.asarray(scores[s])), **awr}
        if "mean_speed_error" in result:
            metrics["mean_speed_error"] = result["mean_speed_error"]
        out.append(metrics)
    return out


__all__ = ["run_advantage_greedy", "run_regret_sf_ppo", "study_config"]
