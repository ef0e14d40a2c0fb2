"""Checkpoint and exact resume of an online run (``out_dir/last.npz``, written atomically).

The file holds PPO's state, the reward model's parameters and standardisation,
every labelled pair, the segment pool, both environments' physics and RNG
states (``BatchedEnv.state_dict``, stored by :mod:`prefrl.loops.resume`) and
the run's records, so a killed run resumes bit for bit where its last
checkpoint was written, and its
``rounds.jsonl``/``evals.jsonl`` never repeat a line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from prefrl.data.pool import SegmentPool
from prefrl.learners import reward_model as rm
from prefrl.loops import resume
from prefrl.loops.online_run import Run, for_ppo, jsonable

KIND = "online_checkpoint"


def start_run(run: Run, out_dir: Path | None) -> int:
    """Prepare the output folder; resume from ``last.npz`` when asked. Returns the update done."""
    c = run.c
    if out_dir is None:
        run.start_fresh()
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last.npz"
    if c.resume and last.exists():
        done = load(run, last)
        # The logs hold exactly what the checkpoint has seen: no repeated lines after resume.
        for name, records in (("rounds.jsonl", run.rounds), ("evals.jsonl", run.evals)):
            resume.rewrite_jsonl(out_dir / name, [
                jsonable({k: v for k, v in r.items() if k != "returns"}) for r in records])
        if run.log:
            run.log(f"resuming {last} at update {done}/{c.num_updates}")
        return done
    if (out_dir / "result.json").exists() and c.resume:
        raise FileExistsError(f"{out_dir} holds a finished run (result.json); use another "
                              "out_dir or resume=False to overwrite it")
    for name in ("rounds.jsonl", "evals.jsonl", "result.json", "last.npz"):
        (out_dir / name).unlink(missing_ok=True)
    run.start_fresh()
    return 0


def save(run: Run, path: Path, update_idx: int, wall: float) -> None:
    from prefrl.checkpoints import flatten
    from prefrl.config import to_dict
    from prefrl.io import save_npz

    if not hasattr(run.env, "state_dict"):
        raise TypeError("checkpoints of the online loop need environments with state_dict()")
    arrays = flatten(
        jax.device_get(run.ppo_state.replace(reward_params=None, ref_params=None)), "ppo")
    if run.rm_state is not None:
        rm_part = {"params": run.rm_state.params, "mean": run.rm_state.reward_mean,
                   "std": run.rm_state.reward_std}
        arrays.update(flatten(jax.device_get(rm_part), "reward"))
    arrays.update(run.labels.state_dict())
    arrays.update(run.pool.state_dict())
    arrays.update(resume.env_arrays({"env": run.env, "eval_env": run.eval_env}) or {})
    header = {
        "kind": KIND, "schema_version": 1, "update": update_idx,
        "config": to_dict(run.c), "ppo_config": to_dict(run.ppo_config),
        "reward_config": to_dict(run.reward_config), "oracle": to_dict(run.oracle),
        "labels_used": run.labels_used, "has_reward": run.rm_state is not None,
        "value_scale": run.value_scale,
        "rounds": jsonable(run.rounds),
        "evals": jsonable(run.evals), "history": run.history, "timing": run.timing,
        "wall_s": run.wall_before + wall,
    }
    save_npz(path, arrays, header)


def load(run: Run, path: Path) -> int:
    from prefrl.checkpoints import unflatten
    from prefrl.config import to_dict
    from prefrl.io import load_npz

    arrays, header = load_npz(path, kind=KIND)
    now = {"config": to_dict(run.c), "ppo_config": to_dict(run.ppo_config),
           "reward_config": to_dict(run.reward_config), "oracle": to_dict(run.oracle)}
    ignore = {"progress", "out_dir", "resume", "checkpoint_every", "num_threads"}
    diff = [f"{part}.{k}" for part, cfg in now.items() for k in cfg
            if k not in ignore and jsonable(cfg[k]) != header[part].get(k)]
    if diff:
        raise ValueError(f"{path}: cannot resume: the run's settings differ in {diff}; use "
                         "another out_dir or resume=False")
    template = run.ppo_state.replace(reward_params=None, ref_params=None)
    ppo_state = unflatten(template, arrays, "ppo", str(path))
    run.ppo_state = ppo_state.replace(ref_params=run.ppo_state.ref_params)
    run.labels.load_state_dict(arrays)
    segs_example = {k[len("pool."):]: v[:1] for k, v in arrays.items()
                    if k.startswith("pool.") and k[len("pool."):] in _segment_fields()}
    from prefrl.types import Segments

    run.pool = SegmentPool(run.c.pool_capacity, Segments(**segs_example))
    run.pool.load_state_dict(arrays)
    resume.restore_envs({"env": run.env, "eval_env": run.eval_env}, arrays)
    run.labels_used = int(header["labels_used"])
    run.value_scale = float(header.get("value_scale", 0.0))
    run.rounds, run.evals, run.history = header["rounds"], header["evals"], header["history"]
    run.timing = {k: float(v) for k, v in header["timing"].items()}
    run.wall_before = float(header["wall_s"])
    if header["has_reward"]:
        state = _reward_template(run)
        part = unflatten(
            {"params": state.params, "mean": state.reward_mean, "std": state.reward_std},
            arrays, "reward", str(path))
        run.rm_state = state.replace(params=part["params"], reward_mean=part["mean"],
                                     reward_std=part["std"])
        run.ppo_state = run.ppo_state.replace(reward_params=for_ppo(run.rm_state))
    return int(header["update"])


def _segment_fields() -> tuple[str, ...]:
    from prefrl.data.pool import SEGMENT_FIELDS

    return SEGMENT_FIELDS


def _reward_template(run: Run) -> Any:
    """A reward-model state of the run's shapes (its arrays are replaced on load)."""
    batch = jax.tree.map(jnp.asarray, run.labels.batch(0))
    return rm.make(run.fit_config).init(jax.random.key(0), batch)

