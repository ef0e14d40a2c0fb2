"""A person as the online teacher (``prefrl train online --teacher web``), without a browser.

A thread plays the person: it reads the page's API (``/api/state``) and posts
answers, as the page's JavaScript does. Tiny half-cheetah sizes (4 envs × 10
steps, segments of 5 steps, 3 rounds); videos 64×48.
"""

from __future__ import annotations

import _thread
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from test_people import _request, needs_gl

from prefrl import cli
from prefrl.annotate import teacher as teacher_lib
from prefrl.annotate.store import LabelStore
from prefrl.io import load_npz

ANSWERS = ("left", "right", "skip", "equal", "right", "left", "equal", "skip", "left")
VALUE = {"left": 1.0, "right": 0.0, "equal": 0.5, "skip": 0.5}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _argv(out_dir, port: int, *extra: str) -> list[str]:
    return ["train", "online", "--teacher", "web", "--out-dir", str(out_dir),
            "--teacher-port", str(port), "--teacher-width", "64", "--teacher-height", "48",
            "--teacher-annotator", "ann", "--total-steps", "280", "--num-envs", "4",
            "--rollout-steps", "10", "--segment-length", "5", "--segment-stride", "5",
            "--pool-capacity", "32", "--label-budget", "9", "--refit-every", "3",
            "--initial-fraction", "0.34", "--oversample", "2", "--initial-fit-steps", "10",
            "--heldout-queries", "8", "--eval-every", "0", "--eval-episodes", "1",
            "--checkpoint-every", "100", "--num-threads", "1", "--ppo-num-minibatches", "2",
            "--ppo-num-epochs", "1", "--ppo-policy-hidden", "16", "--ppo-value-hidden", "16",
            "--reward-hidden", "16", "--reward-ensemble-size", "2", "--reward-num-steps", "10",
            "--reward-eval-every", "10", "--reward-batch-size", "8", "--reward-chunk-pairs", "8",
            *extra]


class Person(threading.Thread):
    """Answers ``answers`` in the order the page shows them; Ctrl-C after ``stop`` answers."""

    def __init__(self, url: str, answers: list[str], name: str, stop: int | None = None,
                 video_dir=None) -> None:
        super().__init__(daemon=True)
        self.url, self.answers, self.name_, self.stop = url, answers, name, stop
        self.video_dir = video_dir  # fetch and decode the first clip into this folder
        self.given: list[tuple[int, str]] = []  # (query id, answer)
        self.seen: list[dict] = []  # the first state of each round
        self.frames = None

    def run(self) -> None:
        # A person who gives up (an error, or no page within the deadline) presses Ctrl-C
        # too, with ``error`` set: the run, which waits for labels without a time limit,
        # must then stop and the test fail, never hang.
        self.error = None
        try:
            self._answer(time.monotonic() + 600)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err
        if self.error is None and len(self.given) < len(self.answers) and self.stop is None:
            self.error = TimeoutError("the page showed no query within 600 s")
        if self.error is not None or self.stop is not None:
            _thread.interrupt_main()  # Ctrl-C while the run waits for the rest

    def _answer(self, deadline: float) -> None:
        while len(self.given) < len(self.answers) and time.monotonic() < deadline:
            try:
                state = json.loads(urllib.request.urlopen(self.url + "/api/state", timeout=30)
                                   .read())
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)  # between rounds the page is down (or busy rendering)
                continue
            query = state["query"]
            if query is None:
                time.sleep(0.05)
                continue
            if not self.seen or self.seen[-1]["progress"]["total"] != state["progress"]["total"] \
                    or state["progress"]["answered"] == 0:
                self.seen.append(state)
            if self.video_dir is not None and self.frames is None:
                from prefrl.render import read_video

                code, raw = _request(self.url + query["left"])
                assert code == 200, raw
                path = self.video_dir / "clip.webm"
                path.write_bytes(raw)
                self.frames = read_video(path)[0].shape
            answer = self.answers[len(self.given)]
            code, raw = _request(self.url + "/api/answer", {
                "query": query["id"], "answer": answer, "annotator": self.name_})
            assert code == 200, raw
            self.given.append((query["id"], answer))
            if self.stop is not None and len(self.given) == self.stop:
                return


def _cli(argv) -> int:
    return cli.main(argv)


@pytest.fixture(autouse=True)
def _no_jax_setup(monkeypatch):
    monkeypatch.setattr(cli, "configure_jax", lambda **kwargs: None)  # conftest did it


# --------------------------------------------------------------------------- frames


def test_replayed_frames_match_the_stored_rollout():
    """s_0 … s_{k-1} replayed from s_0 and the actions: the pool's endpoints and obs agree."""
    from types import SimpleNamespace

    from prefrl.envs import make_task

    from prefrl.rollout import BatchedEnv

    spec = make_task("run")
    rng = np.random.default_rng(0)
    with BatchedEnv(spec, num_envs=3, seed=0, num_threads=1) as env:
        env.reset()
        steps = [env.step(rng.uniform(-1, 1, (3, 6))) for _ in range(20)]
    # [T, B, …] in float32, as the online loop's env returns it
    traj = SimpleNamespace(**{k: np.stack([s[k] for s in steps]).astype(np.float32)
                              for k in ("obs", "action", "reward", "next_obs", "qpos", "qvel",
                                        "x_velocity")})
    # The pool's layout: 6 segments of 10 steps (2 per env), qpos/qvel at steps 0 and 9.
    cut = lambda x: np.concatenate([np.swapaxes(x[t:t + 10], 0, 1) for t in (0, 10)])
    qpos, qvel = cut(traj.qpos), cut(traj.qvel)
    pool = SimpleNamespace(obs=cut(traj.obs), action=cut(traj.action), reward=cut(traj.reward),
                           next_obs=cut(traj.next_obs), mask=np.ones((6, 10), np.float32),
                           qpos=qpos[:, [0, -1]], qvel=qvel[:, [0, -1]], tag=np.full(6, 7))
    rows = np.array([4, 1, 2])
    out = teacher_lib.query_segments(spec, pool, rows)
    replayed = np.asarray(out.qpos)
    assert replayed.shape == (3, 10, 9) and out.qvel.shape == (3, 10, 9)
    np.testing.assert_array_equal(replayed[:, 0], qpos[rows, 0])  # s_0 as stored
    # Drift from the float32 s_0 and the solver's cold start: far below a pixel.
    np.testing.assert_allclose(replayed, qpos[rows], atol=1e-3)
    np.testing.assert_allclose(out.qvel, qvel[rows], atol=1e-2)
    np.testing.assert_allclose(out.x_velocity, cut(traj.x_velocity)[rows], atol=1e-2)
    np.testing.assert_array_equal(np.asarray(out.source), np.stack([rows, [7] * 3], 1))
    # After an episode end (mask 0) the clip holds its last valid frame.
    mask = np.ones((1, 10), np.float32)
    mask[0, 6:] = 0
    held, _, _ = teacher_lib.replay_states(spec, qpos[4:5, 0], qvel[4:5, 0], pool.action[4:5],
                                           mask)
    np.testing.assert_array_equal(held[0, 6:], np.broadcast_to(held[0, 5], (4, 9)))
    np.testing.assert_allclose(held[0, :6], replayed[0, :6], atol=1e-6)


def test_round_queries_index_the_distinct_rows():
    rows, pairs = teacher_lib.round_queries(np.array([9, 3, 9]), np.array([3, 5, 1]))
    # distinct rows 1, 3, 5, 9; query (9, 3) → (3, 1), (3, 5) → (1, 2), (9, 1) → (3, 0)
    np.testing.assert_array_equal(rows, [1, 3, 5, 9])
    np.testing.assert_array_equal(pairs, [[3, 1], [1, 2], [3, 0]])


# --------------------------------------------------------------------------- the run


CONFIG = dict(task="run", total_steps=4 * 10 * 7, num_envs=4, rollout_steps=10,
              segment_length=5, segment_stride=5, pool_capacity=32, label_budget=9,
              refit_every=3, initial_fraction=0.34, oversample=2, initial_fit_steps=10,
              heldout_queries=8, eval_every=0, eval_episodes=1, checkpoint_every=100,
              progress=False)


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt here, as in a terminal, even where it was inherited
    ignored (a shell's background job): the simulated person presses Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@needs_gl
def test_a_person_teaches_an_online_run_that_is_killed_and_resumed(tmp_path, ctrl_c_raises):
    import dataclasses

    from prefrl.envs import make_task

    from prefrl.learners import ppo
    from prefrl.loops import online
    from prefrl.rollout import BatchedEnv

    out, port = tmp_path / "run", _free_port()
    url = f"http://127.0.0.1:{port}"
    config = online.OnlineConfig(out_dir=str(out), **CONFIG)
    counts = [3, 3, 3]  # 9 labels at updates 1, 4, 7: round 0 = round(0.34 × 9), then the rest
    assert config.schedule_counts().tolist() == counts
    # Episodes of 20 steps: a cheap final evaluation, and segments across episode ends.
    spec = dataclasses.replace(make_task("run"), episode_length=20)
    teacher = teacher_lib.WebTeacher(
        teacher_lib.TeacherConfig(port=port, width=64, height=48, annotator="ann"), task=spec,
        task_name="run", out_dir=out, round_updates=config.round_updates(), counts=counts,
        announce=lambda r, n, u: None)

    def run():
        return online.train(
            config, ppo.PPOConfig(num_minibatches=2, num_epochs=1, policy_hidden=(16,),
                                  value_hidden=(16,)),
            online.default_reward_config(hidden=(16,), ensemble_size=2, num_steps=10,
                                         eval_every=10, batch_size=8, chunk_pairs=8),
            env_factory=lambda n, seed: BatchedEnv(spec, n, seed, 1, np.float32),
            labeller=teacher.labeller(), callback=teacher.add_to_record)

    # Run 1: the person answers round 0 and one query of round 1, then presses Ctrl-C.
    first = Person(url, list(ANSWERS), "ann", stop=counts[0] + 1, video_dir=tmp_path)
    first.start()
    with pytest.raises(KeyboardInterrupt):
        run()
    first.join(30)
    assert first.error is None, first.error
    assert first.frames == (5, 48, 64, 3)  # a clip of the segment's 5 steps, replayed
    _, header = load_npz(out / "last.npz", kind="online_checkpoint", supported_versions=(2,))
    assert header["update"] == 3  # checkpointed just before round 1 (update 4) waited
    assert not (out / "result.json").exists()
    # Run 2, the same call: it resumes at round 1, whose page keeps the answer given.
    second = Person(url, list(ANSWERS[counts[0] + 1:]), "bob")
    second.start()
    try:
        result = run()
    except KeyboardInterrupt:
        pytest.fail(f"the person stopped answering: {second.error!r}")
    second.join(30)
    assert second.error is None, second.error
    assert second.seen[0]["progress"]["answered"] == 1
    assert second.seen[0]["progress"]["total"] == counts[1]
    assert [a for _, a in first.given + second.given] == list(ANSWERS)
    # The loop trained on exactly the answers: label = P(left ≻ right), skips kept out.
    labels = result["state"].labels
    count = int(labels.count)
    assert count == sum(counts) == result["labels_used"]
    np.testing.assert_array_equal(np.asarray(labels.data.label)[:count],
                                  [VALUE[a] for a in ANSWERS])
    np.testing.assert_array_equal(np.asarray(labels.data.keep)[:count],
                                  [a != "skip" for a in ANSWERS])
    # Each round's record says who labelled; the labels files are ordinary datasets.
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [(r["teacher"], r["annotators"]) for r in rounds] == [
        ("web", ["ann"]), ("web", ["ann", "bob"]), ("web", ["bob"])]
    assert [r["skipped"] for r in rounds] == [1, 0, 1]  # skip, -, skip
    assert "heldout_acc_scripted_partial_return" in rounds[-1]
    store = LabelStore.open(out / rounds[1]["labels_file"])
    assert [store.annotators[i] for i in store.fields["annotator"]] == ["ann", "bob", "bob"]


def test_an_oracle_may_not_resume_a_run_a_person_taught(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.npz").write_bytes(b"")
    teacher_lib.mark_teacher(out, "web")
    assert _cli(["train", "online", "--out-dir", str(out)]) == 2
    assert "resume it with --teacher web" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["last.npz", "teacher.json"]


# --------------------------------------------------------------------------- options


def _parse(argv):
    parser = cli.build_parser()
    return parser.parse_args(argv)


@needs_gl
@pytest.mark.parametrize("extra, expected", [
    ((), {"label_budget": 100, "initial_fraction": 0.2, "refit_every": 25}),
    (("--label-budget", "40", "--refit-every", "8"),
     {"label_budget": 40, "initial_fraction": 0.2, "refit_every": 8}),
])
def test_a_persons_budget_is_the_default_only_where_unset(tmp_path, monkeypatch, extra,
                                                          expected):
    from prefrl.commands import train_online
    from prefrl.loops import online

    seen = {}

    class Stop(Exception):
        pass

    def train(config, *args, labeller=None, callback=None, **kwargs):
        seen.update(config=config, labeller=labeller)
        raise Stop

    monkeypatch.setattr(online, "train", train)
    args = _parse(["train", "online", "--teacher", "web", "--out-dir", str(tmp_path / "r"),
                   "--teacher-port", "0", *extra])
    with pytest.raises(Stop):
        train_online.run(args)
    assert {k: getattr(seen["config"], k) for k in expected} == expected
    assert seen["labeller"].traced is False and seen["labeller"].name == "web"
    oracle = _parse(["train", "online", "--out-dir", str(tmp_path / "o")])
    with pytest.raises(Stop):
        train_online.run(oracle)
    assert seen["config"].label_budget == 1000 and seen["labeller"] is None  # unchanged


@pytest.mark.parametrize("extra, message", [
    (["--teacher", "web", "--backend", "mjx"], "CPU backend only"),
    (["--teacher", "web", "--offline-dataset", "d.npz"], "--offline-dataset"),
    (["--teacher", "web", "--teacher-port", "70000"], "--teacher-port"),
    (["--teacher", "web", "--teacher-annotator", "../x"], "--teacher-annotator"),
    (["--teacher-port", "9000"], "add --teacher web"),
])
def test_bad_teacher_options_get_a_clear_error_and_write_nothing(tmp_path, capsys, extra,
                                                                 message):
    out = tmp_path / "run"
    assert _cli(["train", "online", "--out-dir", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_web_teacher_needs_an_out_dir_and_a_free_port(tmp_path, capsys):
    assert _cli(["train", "online", "--teacher", "web"]) == 2
    assert "needs --out-dir" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(Exception, match="another --teacher-port"):
            teacher_lib.check_port("127.0.0.1", port)
