"""A person as the online loop's teacher: ``prefrl train online --teacher web``.

Christiano et al. 2017 had people label the online loop's queries while it
trained. Here each labelling round of the C-engine loop
(:mod:`prefrl.loops.online.cpu`) calls the host :class:`~prefrl.loops.online.core.Labeller`
of a :class:`WebTeacher`: the round's queries (chosen by the core's select)
are served on the labelling page (:func:`prefrl.annotate.server.serve_queries`)
from inside the training process, which alone writes the run folder, and the
round waits until a person has answered them all:

* the labels go to ``OUT_DIR/people/round_RRR/labels.npz`` (an ordinary
  preference dataset of the round's segments, ``label = P(left ≻ right)``;
  skips recorded and not trained on); its videos to ``…/round_RRR/videos/``;
* one address for the whole run (``--teacher-port``, default 8765): between
  rounds the page waits for the next round's queries;
* a killed run resumes at the waiting round (the loop checkpoints before each
  round of a host labeller; a fresh start reaches round 0's queries again,
  since the run is deterministic), and the answers already given are kept:
  the same queries reopen the same labels file.

**Frames.** The pool keeps a segment's physics state at its first and last step
only. The states between are replayed from s_0 (root x included) with the
segment's stored actions in the C engine (:func:`replay_states`): the physics
is deterministic, only the solver's warm start restarts cold and s_0 was stored
in float32. Measured on random-policy segments of a float32 rollout: |Δqpos|
≤ 8.5e-5 and |Δqvel| ≤ 5.3e-4 after 24 steps, invisible in a clip. After an
episode end inside a segment (masked steps) the clip holds its last frame.

**Held-out accuracy** never asks the person: the labeller's held-out oracle is
the scripted rational partial-return oracle on the task's true reward (which
the pool carries), logged as ``heldout_acc_scripted_partial_return``.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prefrl.config import ConfigError, field

# The loop's defaults sized for one person, used where the user did not set them:
# 100 labels in 10 rounds (20, 17, 13, 10, 9, 8, 7, 6, 5, 5 over the default 1M steps),
# not 1000 labels with 250 in round 0 and a round every 8 updates.
WEB_DEFAULTS: dict[str, Any] = {"label_budget": 100, "initial_fraction": 0.2, "refit_every": 25}
TEACHERS = ("oracle", "web")
PEOPLE_DIR = "people"
TEACHER_FILE = "teacher.json"
HELDOUT_NAME = "scripted_partial_return"


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """Options of the web teacher (``--teacher-…``)."""

    host: str = field("127.0.0.1", "address the labelling page listens on (127.0.0.1: this "
                      "machine only)")
    port: int = field(8765, "port of the labelling page, the same for every round (0: any free "
                      "port, printed each round)")
    annotator: str = field("", "name filled in on the page (each answer records its annotator)")
    video: Literal["webm", "mp4"] = field("webm", "video format: webm (VP9) or mp4 (H.264)")
    width: int = field(320, "video width per segment (even)")
    height: int = field(240, "video height (even)")
    gl: str | None = field(None, "GL backend: egl, osmesa or glfw (default: egl without a display)")
    timeout: float = field(0.0, "seconds a round waits for its answers before the run stops "
                           "(resumable); 0 = as long as it takes")

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--teacher-port must be in 0..65535, got {self.port}")
        if self.video not in ("webm", "mp4"):
            raise ConfigError(f"--teacher-video must be webm or mp4, got {self.video!r}")
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ConfigError(f"--teacher-width/--teacher-height must be even and >= 16, got "
                              f"{self.width}×{self.height}")
        if self.gl is not None and self.gl not in ("egl", "osmesa", "glfw"):
            raise ConfigError(f"--teacher-gl must be egl, osmesa or glfw, got {self.gl!r}")
        if self.timeout < 0:
            raise ConfigError(f"--teacher-timeout must be >= 0, got {self.timeout}")


# --------------------------------------------------------------------------- frames

def replay_states(task: Any, qpos_0: np.ndarray, qvel_0: np.ndarray, action: np.ndarray,
                  mask: np.ndarray, *, num_threads: int = 1
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every step's physics state of ``n`` segments, replayed from s_0 in the C engine.

    ``qpos_0 [n, nq]``, ``qvel_0 [n, nv]``: s_0 (root x included); ``action
    [n, k, act]``; ``mask [n, k]`` (1 inside the episode). Returns ``qpos [n, k,
    nq]``, ``qvel [n, k, nv]`` (s_0 … s_{k−1}, held at the last valid step after
    an episode end) and ``x_velocity [n, k]`` (root x of s_{t+1} minus s_t, over dt).
    """
    from prefrl.rollout import BatchedEnv

    action = np.asarray(action, np.float64)
    n, k = action.shape[:2]
    with BatchedEnv(task, num_envs=n, num_threads=num_threads) as env:
        env.set_state(qpos_0, qvel_0)
        qpos = np.empty((n, k + 1, env.nq))
        qvel = np.empty((n, k + 1, env.nv))
        for t in range(k + 1):
            state = env.get_state()
            qpos[:, t], qvel[:, t] = state["qpos"], state["qvel"]
            if t < k:
                env.step(action[:, t])
        dt = env.dt
    x_velocity = (qpos[:, 1:, 0] - qpos[:, :-1, 0]) / dt
    last = np.maximum(np.asarray(mask).sum(axis=1).astype(np.int64) - 1, 0)  # masks end-padded
    steps = np.minimum(np.arange(k)[None, :], last[:, None])[..., None]
    return (np.take_along_axis(qpos[:, :k], steps, axis=1),
            np.take_along_axis(qvel[:, :k], steps, axis=1), x_velocity)


def query_segments(task: Any, pool: Any, rows: np.ndarray) -> Any:
    """:class:`~prefrl.types.Segments` ``[n, k, …]`` of pool ``rows``, with every step's state.

    ``pool``: the loop's :class:`~prefrl.loops.online.core.PoolItem` pool as NumPy
    arrays. ``source [n, 2]``: (pool row, policy update whose rollout gave it).
    """
    import jax.numpy as jnp

    from prefrl.types import Segments

    take = lambda x: np.asarray(x)[rows]
    qpos, qvel, x_velocity = replay_states(task, take(pool.qpos)[:, 0], take(pool.qvel)[:, 0],
                                           take(pool.action), take(pool.mask))
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return Segments(obs=f32(take(pool.obs)), action=f32(take(pool.action)),
                    reward=f32(take(pool.reward)), next_obs=f32(take(pool.next_obs)),
                    mask=f32(take(pool.mask)), x_velocity=f32(x_velocity), qpos=f32(qpos),
                    qvel=f32(qvel), source=jnp.asarray(
                        np.stack([rows, take(pool.tag)], axis=1), jnp.int32))


def round_queries(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows [n], pairs [Q, 2])``: the distinct pool rows a round asks about, and the
    queries as indices into them."""
    first, second = np.asarray(first), np.asarray(second)
    rows = np.unique(np.concatenate([first, second]))
    return rows, np.stack([np.searchsorted(rows, first), np.searchsorted(rows, second)], axis=1)


# --------------------------------------------------------------------------- the teacher

class WebTeacher:
    """A person labelling the online loop's queries on the page; :meth:`labeller` is the hook.

    ``round_updates [R]`` and ``counts [R]``: the loop's round schedule
    (:meth:`~prefrl.loops.online.config.OnlineConfig.round_updates`,
    ``schedule_counts``): a round's number and its label count follow from the
    newest segment's policy update (the pool's ``tag``), so the person is asked
    exactly the round's ``n`` queries, never the padded rest, and a resumed run
    finds the same round's labels file. ``announce(round, n, url)`` says where
    to label (default: a line on stderr).
    """

    def __init__(self, config: TeacherConfig, *, task: Any, task_name: str, out_dir: str | Path,
                 round_updates: np.ndarray, counts: np.ndarray,
                 announce: Callable[[int, int, str], None] | None = None) -> None:
        self.config, self.task, self.task_name = config, task, task_name
        self.folder = Path(out_dir) / PEOPLE_DIR
        self.round_of = {int(u): r for r, u in enumerate(np.asarray(round_updates))}
        self.counts = np.asarray(counts)
        self.announce = announce or (lambda r, n, url: print(
            f"prefrl train online: round {r}: label {n} queries at {url}", file=sys.stderr,
            flush=True))
        self.info: dict[int, dict[str, Any]] = {}
        self._heldout = None

    def labeller(self) -> Any:
        """The host :class:`~prefrl.loops.online.core.Labeller` (``traced=False``, name ``web``)."""
        from prefrl.loops.online.core import Labeller

        return Labeller(label=self.label, heldout=self.heldout, traced=False, name="web")

    def labels_path(self, round_idx: int) -> Path:
        return self.folder / f"round_{round_idx:03d}" / "labels.npz"

    def label(self, key: Any, pool: Any, first: np.ndarray, second: np.ndarray) -> Any:
        """Serve the round's queries, wait for the answers; ``Labels [Q]`` (keep False: skips)."""
        from prefrl import oracles
        from prefrl.annotate.server import serve_queries
        from prefrl.annotate.store import LabelStore

        del key  # a person needs no key
        update = int(np.max(np.asarray(pool.tag)))
        if update not in self.round_of:
            raise ValueError(f"the web teacher was called at policy update {update}, which "
                             "holds no labelling round of its schedule")
        r = self.round_of[update]
        n = int(self.counts[r])
        rows, pairs = round_queries(first[:n], second[:n])
        path = self.labels_path(r)
        path.parent.mkdir(parents=True, exist_ok=True)
        c = self.config
        dataset = serve_queries(
            query_segments(self.task, pool, rows), pairs, path, task=self.task_name,
            host=c.host, port=c.port, annotator=c.annotator, timeout=c.timeout or None,
            video_format=c.video, announce=lambda url: self.announce(r, n, url),
            meta={"online_round": r, "update": update}, width=c.width, height=c.height,
            gl=c.gl)
        store = LabelStore.open(path)
        self.info[r] = {"teacher": "web", "annotators": sorted(
            {store.annotators[i] for i in store.fields["annotator"] if i >= 0}),
            "labels_file": str(path.relative_to(self.folder.parent))}
        q = np.asarray(first).shape[0]
        label = np.full(q, 0.5, np.float32)
        keep = np.zeros(q, bool)
        label[:n] = np.asarray(dataset.labels["human"])
        keep[:n] = np.asarray(dataset.label_mask["human"])
        zeros = np.zeros(q, np.float32)
        return oracles.Labels(label=label, keep=keep, score_1=zeros, score_2=zeros)

    def heldout(self, key: Any, pool: Any, first: np.ndarray, second: np.ndarray
                ) -> dict[str, Any]:
        """The scripted rational partial-return oracle on the true reward (never the person)."""
        import jax

        from prefrl import oracles

        if self._heldout is None:
            self._heldout = jax.jit(lambda k, p, f, s: oracles.label_traced(
                oracles.OracleConfig(), k, p, f, s))
        return {HELDOUT_NAME: self._heldout(jax.random.fold_in(key, 0), pool, first, second)}

    def add_to_record(self, state: Any, record: dict[str, Any]) -> None:
        """A loop callback: the round's record says who labelled (kind, annotators, file)."""
        del state
        record.update(self.info.get(record["round"], {"teacher": "web", "annotators": []}))


# --------------------------------------------------------------------------- checks

def check_port(host: str, port: int) -> None:
    """``ConfigError`` unless the page can listen on ``host:port`` (checked before training)."""
    if port == 0:
        return
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        raise ConfigError(f"the labelling page cannot listen on {host}:{port} ({err.strerror}); "
                          "choose another --teacher-port (0: any free port)") from err
    finally:
        sock.close()


def check_teacher_of_run(out_dir: Path, teacher: str, resume: bool) -> None:
    """``ConfigError`` when resuming a run that another kind of teacher labelled."""
    marker = out_dir / TEACHER_FILE
    if not (resume and (out_dir / "last.npz").exists()):
        return
    before = json.loads(marker.read_text())["teacher"] if marker.exists() else "oracle"
    if before != teacher:
        raise ConfigError(f"{out_dir} holds a run labelled by --teacher {before}; resume it with "
                          f"--teacher {before}, or use another --out-dir")


def mark_teacher(out_dir: Path, teacher: str) -> None:
    """Record the run's teacher kind in ``OUT_DIR/teacher.json`` (web runs)."""
    from prefrl.io import atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / TEACHER_FILE, {"teacher": teacher})


__all__ = ["HELDOUT_NAME", "TEACHERS", "WEB_DEFAULTS", "TeacherConfig", "WebTeacher",
           "check_port", "check_teacher_of_run", "mark_teacher", "query_segments",
           "replay_states", "round_queries"]
