"""``prefrl fit``: fit a reward model (r̂ or Â) to a labelled preference dataset.

    prefrl fit --dataset data/labels.npz --label regret --assumption regret \\
        --discount 0.99 --out models/adv.npz
    prefrl fit --learner regret_sf --dataset experiments/data/run.npz --label regret \\
        --library experiments/experts/run --out models/regret_sf.npz   # r̂ under the regret model
    prefrl fit --study --study-seeds 5                       # the 2×2 study, synthetic
    prefrl fit --study --study-task half_cheetah --study-dataset D --study-expert E

The dataset (``prefrl.data.dataset``) holds several oracles' labels of the
same queries; ``--label`` picks one. A seeded ``--valid-fraction`` of the
labelled queries is held out for best-by-validation parameters. The model
file (``prefrl.checkpoints.save_reward_model``: atomic ``.npz``, no pickle)
is written only when every step stayed finite; a diverged run exits with
an error naming the step and metric. ``--init MODEL`` warm-starts from a
saved model (its observation size and segment length must match the
dataset's). The last stdout line is a JSON summary (also written to
``--metrics`` if given).

``--learner regret_sf`` fits a reward under the regret preference model
(Knox et al. 2022) with successor features of a policy library
(``--library``: PPO checkpoints or folders of them): see
:mod:`prefrl.studies.regret_sf_job`; the reward-model options then shape the
partial-return r̂ whose hidden layer is φ, and ``--phi``, ``--psi-*``,
``--sf-*``, ``--library-*`` the rest. ``prefrl train ppo --reward-model``
takes either file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import checkpoints, evaluation
from prefrl import config as cfg
from prefrl.config import field
from prefrl.data import pairs
from prefrl.learners import reward_model as rm
from prefrl.loops import fit as reward_fit


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Options of ``prefrl fit`` besides the reward-model config."""

    dataset: str = field("", "labelled preference dataset (.npz from prefrl label)")
    learner: Literal["reward_model", "regret_sf"] = field(
        "reward_model", "reward_model: r̂ or Â by --assumption; regret_sf: r̂ = w·φ under the "
        "regret model, with successor features of --library (Knox et al. 2022)")
    library: tuple[str, ...] = field((), "regret_sf: the policy library Π (PPO checkpoint "
                                     "files or folders of them)")
    label: str = field("partial_return", "which oracle's labels to fit (a name in the dataset)")
    out: str = field("", "output model file (.npz)")
    metrics: str = field("", "optional path for the JSON metrics (atomic)")
    init: str = field("", "optional model file to warm-start from")
    valid_fraction: float = field(0.1, "fraction of labelled queries held out for validation")
    seed: int = field(0, "seed of the split, initialisation, bootstrap and minibatches")

    def __post_init__(self) -> None:
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from prefrl.studies.regret_sf_job import RegretSFOptions
    from prefrl.studies.two_by_two import StudyConfig

    p = sub.add_parser(
        "fit",
        help="fit a reward model (partial return r̂ or regret Â) to preference labels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cfg.add_dataclass_args(p, FitConfig)
    p.add_argument("--study", action="store_true",
                   help="run the 2×2 study (labels × assumption) instead; options --study-*")
    cfg.add_dataclass_args(p, rm.RewardModelConfig)
    cfg.add_dataclass_args(p, RegretSFOptions)
    cfg.add_dataclass_args(p, StudyConfig, prefix="study-")
    p.set_defaults(func=run)


def _study_args(args: argparse.Namespace) -> Any:
    from prefrl.studies.two_by_two import StudyConfig

    return cfg.from_args(StudyConfig, args, prefix="study-")


# One compiled fit per (config, shapes), reused by repeated calls in one process.
_FIT = jax.jit(reward_fit.fit, static_argnums=(1,))


def split_queries(batch: rm.PairBatch, valid_fraction: float, seed: int
                  ) -> tuple[rm.PairBatch, rm.PairBatch | None]:
    """Seeded split (:func:`prefrl.data.pairs.split`) of the queries with positive weight."""
    weight = np.ones(batch.size) if batch.weight is None else np.asarray(batch.weight)
    rows = np.flatnonzero(weight.reshape(-1, batch.size).max(axis=0) > 0)
    parts = pairs.split(rows.shape[0], {"valid": valid_fraction}, seed)
    if valid_fraction > 0 and parts["valid"].size == 0:
        raise ValueError(f"{rows.shape[0]} labelled queries are too few for a validation split")
    train = pairs.take(batch, jnp.asarray(rows[parts["train"]]))
    valid = pairs.take(batch, jnp.asarray(rows[parts["valid"]])) if parts["valid"].size else None
    return train, valid


def fit_dataset(config: FitConfig, model_config: rm.RewardModelConfig) -> dict[str, Any]:
    """Load, validate, fit, check, save; returns the JSON summary."""
    from prefrl import preflight
    from prefrl.data import dataset as dataset_io

    start = time.perf_counter()
    ds, header = dataset_io.load(config.dataset)
    preflight.check_memory("--batch-size", model_config.batch_size, preflight.batch_bytes(
        model_config.batch_size, ds.segments.obs.shape[1:], ds.segments.action.shape[-1],
        sum(model_config.hidden) * model_config.ensemble_size))
    batch = pairs.from_dataset(ds, config.label)
    pairs.validate(batch, what=f"{config.dataset} labels {config.label!r}")
    train, valid = split_queries(batch, config.valid_fraction, config.seed)
    key_fit = jax.random.key(config.seed)
    pairs.validate(train, what=f"{config.dataset} training split")
    init_params = None
    if config.init:
        (_, init_state), init_header = checkpoints.load_reward_model(config.init)
        try:
            checkpoints.check_reward_model_fits(init_header, train, config.init)
        except ValueError as err:
            raise ValueError(f"--init {config.init} does not fit {config.dataset}: {err}") from err
        init_params = init_state.params
    result = _FIT(key_fit, model_config, train, valid, init_params=init_params)
    metrics = jax.device_get(result.metrics)
    reward_fit.check_finite(metrics)
    state = result.state
    summary: dict[str, Any] = {
        "dataset": str(config.dataset),
        "label": config.label,
        "assumption": model_config.assumption,
        "task": header.get("task"),
        "task_params": (header.get("meta") or {}).get("task_params"),
        "num_train": int(train.size),
        "num_valid": 0 if valid is None else int(valid.size),
        "steps": int(np.asarray(state.step)),
        "train_loss": float(np.mean(metrics["train_loss"][-model_config.eval_every:])),
        "reward_mean": float(state.reward_mean),
        "reward_std": float(state.reward_std),
    }
    if valid is not None:
        v = rm.evaluate(rm.model(model_config), state, valid)
        summary.update(
            valid_loss=[float(x) for x in v["loss"]],
            valid_accuracy=[float(x) for x in v["accuracy"]],
            best_step=[int(x) for x in metrics["best_step"]],
        )
    # How reward-like the fit is: Pearson of r̂ with the dataset's true reward on every valid step.
    segs, reward = ds.segments, jax.jit(rm.reward_fn(rm.model(model_config), state))
    r_hat = np.concatenate([np.asarray(reward(jnp.asarray(segs.obs[i:i + 256], jnp.float32),
                                              jnp.asarray(segs.action[i:i + 256], jnp.float32)))
                            for i in range(0, len(segs.obs), 256)])  # chunks: bounded memory
    keep = np.asarray(segs.mask) > 0
    pearson = evaluation.pearson(r_hat[keep], np.asarray(segs.reward)[keep])
    summary["reward_pearson"] = pearson if np.isfinite(pearson) else None  # None: r constant
    summary["seconds"] = round(time.perf_counter() - start, 3)
    length, obs_dim, act_dim = train.obs_1.shape[1], train.obs_1.shape[2], train.action_1.shape[2]
    path = checkpoints.save_reward_model(
        config.out, rm.model(model_config), state, obs_dim=obs_dim, act_dim=act_dim,
        segment_length=length, extra={"fit": summary, "seed": config.seed})
    summary["model"] = str(path)
    return summary


def write_metrics(config: FitConfig, summary: dict[str, Any]) -> None:
    """``--metrics`` (atomic); if it cannot be written, the model written before it goes too.

    Nothing half-done: no model file without the metrics asked for with it.
    """
    from prefrl import io

    if not config.metrics:
        return
    try:
        io.atomic_write_json(config.metrics, summary)
    except OSError as err:
        Path(summary["model"]).unlink(missing_ok=True)
        raise ValueError(f"cannot write --metrics {config.metrics} ({err}); removed the "
                         f"model {summary['model']} written before it") from err


def run_study(config: Any) -> dict[str, Any]:
    """Run the 2×2 study, print its table and one JSON line; returns the result."""
    from prefrl.report import two_by_two as study_report
    from prefrl.studies import two_by_two

    result = two_by_two.run(config)
    print(study_report.format_table(result))
    print(json.dumps(study_report.summary(result)))
    return result


def run(args: argparse.Namespace) -> int:
    from prefrl import preflight

    config = cfg.from_args(FitConfig, args)
    if getattr(args, "study", False):
        run_study(_study_args(args))
        return 0
    if not (config.dataset and config.out):
        raise ValueError("prefrl fit needs --dataset FILE and --out FILE (or --study)")
    model_config = cfg.from_args(rm.RewardModelConfig, args)
    if config.library and config.learner != "regret_sf":
        raise ValueError("--library is for --learner regret_sf")
    if model_config.library_size:
        raise ValueError("--library-size needs the online loop's snapshot library (prefrl train "
                         "online --reward-learner regret_sf); offline, the regret model with "
                         "successor features is --learner regret_sf --library …")
    # Output paths are checked before any work, for either learner.
    preflight.check_output_file(config.out, "--out")
    if config.metrics:
        preflight.check_output_file(config.metrics, "--metrics")
    if config.learner == "regret_sf":
        from prefrl.studies import regret_sf_job

        options = cfg.from_args(regret_sf_job.RegretSFOptions, args)
        summary = regret_sf_job.fit_regret_sf_dataset(
            config, model_config, options, library=config.library,
            discount_given=hasattr(args, "discount"))
    else:
        summary = fit_dataset(config, model_config)
    write_metrics(config, summary)
    print(json.dumps(summary))
    return 0
