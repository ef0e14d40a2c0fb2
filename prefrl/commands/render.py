"""``prefrl render``: a video of a segment, a query pair, or a checkpoint's episode.

    prefrl render --dataset data.npz --query 3 --out q3.mp4        # left | right
    prefrl render --dataset data.npz --segment 12 --out s12.webm
    prefrl render --checkpoint experiments/experts/run/final.npz --task run \\
        --steps 200 --out run.mp4

Frames are drawn from the stored ``qpos``/``qvel`` (``prefrl.render``) with
the tracking camera, at real time by default (one frame per control step,
1/dt = 20 frames per second). ``.mp4`` is H.264, ``.webm`` VP9. Headless
machines render through EGL; a missing GL library is named with the packages
to install, and nothing is written. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import numpy as np

from prefrl import config as cfg
from prefrl.config import ConfigError, field


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Options of ``prefrl render``."""

    out: str = field("", "output video (.mp4: H.264; .webm: VP9)")
    dataset: str | None = field(None, "preference dataset whose segment or query to draw")
    query: int | None = field(None, "with --dataset: draw query Q's two segments side by side")
    segment: int | None = field(None, "with --dataset: draw segment I of the pool")
    checkpoint: str | None = field(None, "draw an episode of this policy checkpoint")
    task: str = field("run", "with --checkpoint: the task to roll out on")
    steps: int = field(200, "with --checkpoint: control steps of the episode")
    seed: int = field(0, "with --checkpoint: seed of the reset (and of sampling)")
    deterministic: bool = field(True, "with --checkpoint: act with tanh(mean)")
    width: int = field(320, "frame width in pixels (per segment; even)")
    height: int = field(240, "frame height in pixels (even)")
    fps: float | None = field(None, "frames per second (default: real time, 1/dt)")
    gl: str | None = field(None, "GL backend: egl, osmesa or glfw (default: $MUJOCO_GL, else "
                                 "egl without a display)")
    shadows: bool = field(False, "draw shadows and the floor's reflection (7× slower with "
                                 "software GL)")

    def __post_init__(self) -> None:
        sources = [self.query is not None, self.segment is not None, self.checkpoint is not None]
        if sum(sources) != 1:
            raise ConfigError("give exactly one of --query, --segment (with --dataset) or "
                              "--checkpoint")
        if (self.query is not None or self.segment is not None) and not self.dataset:
            raise ConfigError("--query and --segment need --dataset")
        if self.checkpoint is not None and self.dataset:
            raise ConfigError("--checkpoint draws its own episode; drop --dataset")
        if self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ConfigError(f"--width/--height must be even and >= 16, got "
                              f"{self.width}×{self.height}")
        if self.fps is not None and not (self.fps > 0 and np.isfinite(self.fps)):
            raise ConfigError(f"--fps must be positive, got {self.fps}")
        if not self.out.endswith((".mp4", ".webm")):
            raise ConfigError(f"--out must name a .mp4 or .webm file, got {self.out!r}")
        if self.gl is not None and self.gl not in ("egl", "osmesa", "glfw"):
            raise ConfigError(f"--gl must be egl, osmesa or glfw, got {self.gl!r}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="a video of a segment, a query pair or an episode",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg.add_dataclass_args(p, RenderConfig)
    p.set_defaults(func=run)


def dataset_states(path: str, query: int | None, segment: int | None
                   ) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """``(qpos list, qvel list, what)``: the one or two segments to draw from a dataset file."""
    from prefrl.data import dataset as dataset_lib
    from prefrl.render import check_states

    data, _ = dataset_lib.load(path)
    seg = data.segments
    if query is not None:
        if not 0 <= query < data.num_queries:
            raise ConfigError(f"--query {query} is out of range: {path} has "
                              f"{data.num_queries} queries")
        ids = [int(data.first[query]), int(data.second[query])]
        what = f"query {query} (segments {ids[0]} | {ids[1]})"
    else:
        if not 0 <= segment < seg.num_segments:
            raise ConfigError(f"--segment {segment} is out of range: {path} has "
                              f"{seg.num_segments} segments")
        ids, what = [segment], f"segment {segment}"
    qpos = [np.asarray(seg.qpos[i]) for i in ids]
    qvel = [np.asarray(seg.qvel[i]) for i in ids]
    for p, v, i in zip(qpos, qvel, ids, strict=True):
        check_states(p, v, f"{path} segment {i}")
    return qpos, qvel, what


def episode_states(config: RenderConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """``(qpos [T, nq], qvel [T, nv], mean reward)`` of one episode of the checkpoint."""
    import jax

    from prefrl.checkpoints import load_policy
    from prefrl.envs import make_task
    from prefrl.rollout import BatchedEnv

    spec = make_task(config.task)
    policy_fn, _ = load_policy(config.checkpoint, deterministic=config.deterministic,
                               obs_dim=spec.obs_dim)
    with BatchedEnv(spec, num_envs=1, seed=config.seed, num_threads=1) as env:
        env.reset()
        traj = env.rollout(policy_fn, config.steps, jax.random.key(config.seed))
    return (np.asarray(traj.qpos[:, 0]), np.asarray(traj.qvel[:, 0]),
            float(np.mean(traj.reward)))


def render(config: RenderConfig) -> dict[str, Any]:
    """Draw and write ``config.out``; returns the JSON summary."""
    from prefrl import preflight
    from prefrl.envs.tasks import load_model
    from prefrl.render import Renderer, pair_frames, write_video

    preflight.check_output_file(config.out, "--out")
    summary: dict[str, Any] = {"out": config.out}
    if config.checkpoint is not None:
        with Renderer(config.width, config.height, backend=config.gl,
                      shadows=config.shadows) as renderer:
            qpos, qvel, mean_reward = episode_states(config)
            frames = renderer.frames(qpos, qvel)
        summary.update(what=f"episode of {config.checkpoint} on {config.task}",
                       mean_reward=mean_reward)
    else:
        qpos, qvel, what = dataset_states(config.dataset, config.query, config.segment)
        with Renderer(config.width, config.height, backend=config.gl,
                      shadows=config.shadows) as renderer:
            frames = (pair_frames(renderer, qpos, qvel) if len(qpos) == 2
                      else renderer.frames(qpos[0], qvel[0]))
        summary["what"] = what
    model = load_model()
    fps = config.fps or 1.0 / (model.opt.timestep * _frame_skip())
    write_video(config.out, frames, fps)
    summary.update(frames=int(frames.shape[0]), width=int(frames.shape[2]),
                   height=int(frames.shape[1]), fps=fps)
    return summary


def _frame_skip() -> int:
    from prefrl.envs import make_task

    return make_task("run").frame_skip


def run(args: argparse.Namespace) -> int:
    print(json.dumps(render(cfg.from_args(RenderConfig, args))))
    return 0
