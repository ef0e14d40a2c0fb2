"""What a PPO run writes under its ``out_dir``, and how it resumes from it.

``metrics.jsonl`` (one line per update), ``evals.jsonl``, ``last.npz`` (every
``checkpoint_every`` updates, with the environments' state for an exact
resume, :mod:`prefrl.loops.resume`), ``snapshots/step_XXXXXXXXX.npz`` and
``final.npz``. Used by :func:`prefrl.loops.ppo.train`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefrl import checkpoints
from prefrl import config as config_lib
from prefrl.io import load_npz
from prefrl.learners import ppo
from prefrl.loops import resume

if TYPE_CHECKING:
    from prefrl.loops.ppo import TrainConfig


class EpisodeTracker:
    """Undiscounted returns of training episodes, from the rollouts' rewards and ends."""

    def __init__(self, num_envs: int):
        self.running = np.zeros(num_envs)
        self.finished: list[float] = []

    def add(self, reward: np.ndarray, done: np.ndarray) -> None:
        for t in range(reward.shape[0]):
            self.running += reward[t]
            if done[t].any():
                self.finished.extend(self.running[done[t]].tolist())
                self.running[done[t]] = 0.0

    def pop(self) -> list[float]:
        out, self.finished = self.finished, []
        return out


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


@dataclasses.dataclass
class RunFiles:
    """What a run writes under ``out_dir`` (checkpoints, JSON-lines logs); nothing without it."""

    out_dir: Path | None
    ppo_config: ppo.PPOConfig
    tc: TrainConfig
    obs_dim: int
    act_dim: int
    task_header: Mapping[str, Any] | None
    reward_name: str
    # ``"mjx"``: the files of :func:`prefrl.loops.ppo_mjx.run`; a run never resumes
    # another backend's ``last.npz``. ``train_extra`` joins the header's train_config.
    backend: str = "cpu"
    train_extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def save(self, path: Path, state: ppo.PPOState, update_idx: int,
             extra: Mapping[str, Any] | None = None,
             arrays: Mapping[str, np.ndarray] | None = None) -> None:
        checkpoints.save_ppo(
            path, state, config=self.ppo_config, obs_dim=self.obs_dim, act_dim=self.act_dim,
            num_updates=self.tc.num_updates, task=self.task_header, reward=self.reward_name,
            train_config={**config_lib.to_dict(self.tc), "backend": self.backend,
                          **self.train_extra},
            progress={"update": update_idx, "env_steps": update_idx * self.tc.steps_per_update,
                      "num_updates": self.tc.num_updates},
            extra=extra, arrays=arrays)

    def finished(self, state: ppo.PPOState, log: Any
                 ) -> tuple[ppo.PPOState, list[dict[str, Any]], list[dict[str, Any]]] | None:
        """``(state, metrics, evaluations)`` of a finished run (``final.npz``) when resuming.

        Running a finished run again must not overwrite ``final.npz`` and its
        evaluation record; ``None`` when there is nothing finished to return.
        """
        final = None if self.out_dir is None else self.out_dir / "final.npz"
        if not (self.tc.resume and final is not None and final.exists()):
            return None
        state, header = checkpoints.load_ppo(final, obs_dim=self.obs_dim, template=state)
        self.check_same_run(header, final)
        if log:
            log(f"{self.out_dir} holds a finished run ({final}); nothing to train "
                "(another out_dir or --resume false trains again)")
        return (state, resume.read_jsonl(self.out_dir / "metrics.jsonl"),
                resume.read_jsonl(self.out_dir / "evals.jsonl"))

    def open_last(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """``(arrays, header)`` of ``last.npz`` to resume from, else ``None`` (a fresh start).

        A resume checks that the file was written by this run's settings and
        backend, and cuts the logs back to its update; a fresh start removes
        the old logs and checkpoints.
        """
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        last = self.out_dir / "last.npz"
        if self.tc.resume and last.exists():
            arrays, header = load_npz(last, kind=checkpoints.PPO_KIND)
            self.check_same_run(header, last)
            _check_progress(header, arrays, self.tc, last, self.ppo_config.normalize_obs)
            for name in ("metrics.jsonl", "evals.jsonl"):
                resume.truncate_jsonl(self.out_dir / name, int(header["progress"]["update"]))
            return arrays, header
        for name in ("metrics.jsonl", "evals.jsonl", "last.npz", "final.npz"):
            (self.out_dir / name).unlink(missing_ok=True)
        return None

    def check_same_run(self, header: Mapping[str, Any], path: Path) -> None:
        """``ValueError`` naming every setting in which ``path`` differs from this run."""
        _check_same_run(header, self.ppo_config, self.tc, path, self.backend, self.train_extra)

    def resume(self, state: ppo.PPOState, inputs: Mapping[str, Any], log: Any,
               envs: Mapping[str, Any], tracker: EpisodeTracker
               ) -> tuple[ppo.PPOState, int, bool]:
        """``(state, update, envs_restored)`` from ``last.npz``, else a fresh start.

        A resume restores ``envs`` and the episode ``tracker`` when the
        checkpoint holds their state (:meth:`open_last` for the rest).
        """
        opened = self.open_last()
        if opened is None:
            return state, 0, False
        arrays, header = opened
        last = self.out_dir / "last.npz"
        state, _ = checkpoints.load_ppo(last, obs_dim=self.obs_dim, template=state)
        start = int(header["progress"]["update"])
        restored = (all(hasattr(e, "load_state_dict") for e in envs.values())
                    and resume.has_env_arrays(arrays, envs) and "tracker.running" in arrays)
        if restored:
            resume.restore_envs(envs, arrays)
            tracker.running = np.array(arrays["tracker.running"], np.float64)
        if log:
            log(f"resuming {last} at update {start}/{self.tc.num_updates}"
                + ("" if restored else " (fresh environments: they have no saved state)"))
        return state.replace(**inputs), start, restored

    def after_update(self, state: ppo.PPOState | Callable[[], ppo.PPOState], update_idx: int,
                     record: Mapping[str, Any], evaluation: Mapping[str, Any] | None,
                     resume_arrays: Callable[[], Mapping[str, np.ndarray] | None]) -> None:
        """Log the update (and its evaluation); write snapshots and ``last.npz`` when due.

        ``resume_arrays()`` gives the arrays ``last.npz`` keeps for an exact resume;
        ``state`` may be a function giving it, called only when a file is due.
        """
        if self.out_dir is None:
            return
        tc = self.tc
        if evaluation is not None:
            _append_jsonl(self.out_dir / "evals.jsonl", evaluation)
        _append_jsonl(self.out_dir / "metrics.jsonl", record)
        snapshots = {max(1, round(f * tc.num_updates)): f for f in tc.snapshots}
        last_due = (tc.checkpoint_every and update_idx % tc.checkpoint_every == 0) or (
            update_idx == tc.num_updates)
        if callable(state) and (update_idx in snapshots or last_due):
            state = state()
        if update_idx in snapshots:
            steps = update_idx * tc.steps_per_update
            self.save(self.out_dir / "snapshots" / f"step_{steps:09d}.npz", state, update_idx,
                      {"fraction_of_training": snapshots[update_idx]})
        if last_due:
            self.save(self.out_dir / "last.npz", state, update_idx, arrays=resume_arrays())


def check_resumable(tc: TrainConfig, ppo_config: ppo.PPOConfig, backend: str = "cpu") -> None:
    """Refuse, before any environment is built, an ``out_dir/last.npz`` this run cannot resume.

    The checks :meth:`_RunFiles.open_last` makes (settings, backend, progress
    against the arrays), early, for the command line; nothing is read when
    there is nothing to resume.
    """
    last = Path(tc.out_dir) / "last.npz" if tc.out_dir else None
    if last is None or not tc.resume or not last.exists():
        return
    arrays, header = load_npz(last, kind=checkpoints.PPO_KIND)
    _check_same_run(header, ppo_config, tc, last, backend)
    _check_progress(header, arrays, tc, last, ppo_config.normalize_obs)


def _check_progress(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                    tc: TrainConfig, path: Path, counts_obs: bool = True) -> None:
    """``FileFormatError`` when ``last.npz``'s progress disagrees with itself or its arrays.

    The update it resumes at must be an update of this run, its env steps those
    updates' steps, and the observation statistics must have seen at least that
    many steps (more after ``--init-checkpoint``): a header that claims more
    training than its arrays hold would skip the missing updates.
    """
    from prefrl.io import FileFormatError

    progress = header.get("progress")
    update = progress.get("update") if isinstance(progress, Mapping) else None
    if isinstance(update, bool) or not isinstance(update, int) or not (
            0 <= update <= tc.num_updates):
        raise FileFormatError(f"{path}: header field 'progress.update' is {update!r}; a resume "
                              f"needs an update in [0, {tc.num_updates}]")
    steps = update * tc.steps_per_update
    if progress.get("env_steps", steps) != steps:
        raise FileFormatError(f"{path}: header says update {update} but env_steps "
                              f"{progress.get('env_steps')!r} (expected {steps})")
    for name in ("state/obs_stats/count", "state.obs_stats.count") if counts_obs else ():
        if name in arrays and float(arrays[name]) < steps * (1 - 1e-6):
            raise FileFormatError(
                f"{path}: header says {steps} env steps (update {update}), but the observation "
                f"statistics have seen only {float(arrays[name]):.0f}; the header does not "
                "describe these arrays")


def _check_same_run(
    header: Mapping[str, Any], ppo_config: ppo.PPOConfig, tc: TrainConfig, path: Path,
    backend: str = "cpu", extra: Mapping[str, Any] | None = None,
) -> None:
    saved_backend = header.get("train_config", {}).get("backend", "cpu")
    if saved_backend != backend:
        raise ValueError(f"{path}: cannot resume: written by --backend {saved_backend}, this "
                         f"run is --backend {backend}; use another out_dir or --resume false")
    saved = header.get("ppo_config", {})
    now = config_lib.to_dict(ppo_config)
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    saved_tc = header.get("train_config", {})
    now_tc = config_lib.to_dict(tc)
    keys = config_lib.result_settings(tc)  # the fields not marked result_free
    saved_tc = {"task_param": [], **saved_tc}  # files from before task parameters: defaults
    diff += [f"train.{k}" for k in keys if saved_tc.get(k) != now_tc.get(k)]
    diff += [f"train.{k}" for k, v in (extra or {}).items()
             if saved_tc.get(k) != json.loads(json.dumps(v))]  # as the JSON header holds it
    if diff:
        raise ValueError(
            f"{path}: cannot resume: the checkpoint's settings differ in {diff}; "
            "use another out_dir or --resume false"
        )

