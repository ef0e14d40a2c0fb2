"""What a SAC run writes under its ``out_dir``, and how it resumes from it.

``metrics.jsonl`` and ``evals.jsonl`` (one line per chunk / evaluation, keyed
by ``"chunk"``), ``snapshots/step_XXXXXXXXX.npz`` and ``final.npz`` (the actor
as a policy file, :func:`prefrl.checkpoints.save_offline_policy`) and
``last.npz`` (kind ``sac_checkpoint``: the learner state and the replay buffer
as ``device_state/…`` arrays, the environments' state and the episode
tracker, :mod:`prefrl.loops.resume`). Used by :func:`prefrl.loops.sac.train`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefrl import checkpoints
from prefrl import config as config_lib
from prefrl.data.buffers import RingState
from prefrl.io import load_npz, save_npz
from prefrl.learners import sac
from prefrl.loops import resume
from prefrl.loops.ppo_files import EpisodeTracker, _append_jsonl

if TYPE_CHECKING:
    from prefrl.loops.sac import SACTrainConfig

SAC_KIND = "sac_checkpoint"
# The settings a resumed run must share with the run that wrote last.npz.
_SAME_RUN = ("task", "task_param", "total_steps", "num_envs", "warmup_steps",
             "updates_per_step", "seed", "log_every")


@dataclasses.dataclass
class SACRunFiles:
    """What a SAC run writes under ``out_dir``; nothing without it."""

    out_dir: Path | None
    config: sac.SACConfig
    tc: SACTrainConfig
    obs_dim: int
    act_dim: int
    task_header: Mapping[str, Any] | None
    reward_name: str

    def header(self, chunk: int, updates: int) -> dict[str, Any]:
        return {"kind": SAC_KIND, "schema_version": 1, "algo": "sac",
                "sac_config": config_lib.to_dict(self.config),
                "train_config": config_lib.to_dict(self.tc), "obs_dim": self.obs_dim,
                "act_dim": self.act_dim, "reward": self.reward_name,
                "progress": {"chunk": chunk, "env_steps": chunk * self.tc.log_every,
                             "updates": updates, "num_chunks": self.tc.num_chunks},
                **dict(self.task_header or {})}

    def save_last(self, state: sac.SACState, buffer: RingState, chunk: int,
                  env_arrays: Mapping[str, np.ndarray] | None) -> None:
        arrays = resume.device_state_arrays(resumable(state, buffer))
        save_npz(self.out_dir / "last.npz", {**(env_arrays or {}), **arrays},
                 self.header(chunk, int(state.step)))

    def save_policy(self, path: Path, actor: Any, state: sac.SACState, chunk: int,
                    extra: Mapping[str, Any]) -> None:
        meta = {k: v for k, v in self.header(chunk, int(state.step)).items()
                if k not in ("kind", "schema_version", "algo")}
        checkpoints.save_offline_policy(path, actor, state.actor_params, algo="sac",
                                        meta={**meta, **extra})

    def check_same_run(self, header: Mapping[str, Any], path: Path) -> None:
        """``ValueError`` naming every setting in which ``path`` differs from this run."""
        saved, now = header.get("sac_config", {}), config_lib.to_dict(self.config)
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        saved_tc, now_tc = header.get("train_config", {}), config_lib.to_dict(self.tc)
        diff += [f"train.{k}" for k in _SAME_RUN if saved_tc.get(k) != now_tc.get(k)]
        if header.get("reward") != self.reward_name:
            diff.append("reward")
        if diff:
            raise ValueError(f"{path}: cannot resume: the checkpoint's settings differ in "
                             f"{diff}; use another out_dir or --resume false")

    def open_last(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """``(arrays, header)`` of ``last.npz`` to resume from (logs cut back to it), or None.

        A fresh start removes the old logs and checkpoints.
        """
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        last = self.out_dir / "last.npz"
        if self.tc.resume and last.exists():
            arrays, header = load_npz(last, kind=SAC_KIND)
            self.check_same_run(header, last)
            for name in ("metrics.jsonl", "evals.jsonl"):
                resume.truncate_jsonl(self.out_dir / name, int(header["progress"]["chunk"]),
                                      key="chunk")
            return arrays, header
        for name in ("metrics.jsonl", "evals.jsonl", "last.npz", "final.npz"):
            (self.out_dir / name).unlink(missing_ok=True)
        return None

    def append(self, record: Mapping[str, Any], evaluation: Mapping[str, Any] | None) -> None:
        if self.out_dir is None:
            return
        if evaluation is not None:
            _append_jsonl(self.out_dir / "evals.jsonl", evaluation)
        _append_jsonl(self.out_dir / "metrics.jsonl", record)

    def after_chunk(self, chunk: int, state: sac.SACState, buffer: RingState, actor: Any,
                    result: Mapping[str, Any] | None, envs: Mapping[str, Any],
                    tracker: EpisodeTracker) -> None:
        """Snapshots, ``last.npz`` and, at the end, ``final.npz``, when each is due."""
        if self.out_dir is None:
            return
        tc = self.tc
        snapshots = {max(1, round(f * tc.num_chunks)): f for f in tc.snapshots}
        if chunk in snapshots:
            self.save_policy(self.out_dir / "snapshots" / f"step_{chunk * tc.log_every:09d}.npz",
                             actor, state, chunk, {"fraction_of_training": snapshots[chunk]})
        end = chunk == tc.num_chunks
        checkpoint_chunks = tc.checkpoint_every // tc.log_every
        if end or (checkpoint_chunks and chunk % checkpoint_chunks == 0):
            arrays = resume.env_arrays(envs)
            if arrays is not None:
                arrays["tracker.running"] = tracker.running
            self.save_last(state, buffer, chunk, arrays)
        if end:
            self.save_final(actor, state, chunk, result)

    def save_final(self, actor: Any, state: sac.SACState, chunk: int,
                   result: Mapping[str, Any] | None) -> None:
        """``final.npz``: the actor as a policy file, with the last evaluation."""
        self.save_policy(self.out_dir / "final.npz", actor, state, chunk,
                         {"eval": {k: v for k, v in (result or {}).items() if k != "returns"}})


def resumable(state: sac.SACState, buffer: RingState) -> dict[str, Any]:
    """The pytree ``last.npz`` keeps: the learner's state (no reward parameters) and the buffer."""
    # A learned reward's parameters have files of their own.
    return {"learner": state.replace(reward_params=None), "buffer": buffer}


__all__ = ["SAC_KIND", "SACRunFiles", "resumable"]
