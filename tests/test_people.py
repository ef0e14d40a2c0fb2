"""People as teachers: videos from stored states, the labels file, the page's API, interchange.

One tiny real dataset (``people_data``: 6 segments of 8 steps, 5 queries) is
shared by every test; videos are 64×48 (a few kB); no JAX training.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from people_data import NUM_QUERIES, SEGMENT_LENGTH, write_people_dataset

from prefrl.annotate import interchange  # noqa: E402
from prefrl.annotate.server import Server, VideoCache, make_app  # noqa: E402
from prefrl.annotate.store import LabelStore, RequestError  # noqa: E402
from prefrl.data import dataset as dataset_lib  # noqa: E402
from prefrl.io import FileFormatError  # noqa: E402


def _gl_works() -> bool:
    import os

    from prefrl.render import GLUnavailableError, Renderer

    if os.environ.get("PREFRL_REQUIRE_BROWSER") == "1":
        return True  # CI installs the EGL libraries: a failure must show, not skip
    try:
        Renderer(16, 16).close()
    except GLUnavailableError:
        return False
    return True


needs_gl = pytest.mark.skipif(not _gl_works(), reason="no EGL library for MuJoCo's renderer "
                              "(apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    return write_people_dataset(tmp_path_factory.mktemp("people") / "data.npz")


@pytest.fixture(scope="module")
def data(data_path):
    return dataset_lib.load(data_path)[0]


# --------------------------------------------------------------------------- rendering


def _prefrl(monkeypatch, capsys, argv) -> dict:
    """``prefrl ARGV`` in this process (no new interpreter); its final JSON line."""
    from prefrl import cli

    monkeypatch.setattr(cli, "configure_jax", lambda **kwargs: None)  # conftest did it
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@needs_gl
def test_render_command_writes_a_playable_pair_video(data_path, tmp_path, monkeypatch, capsys):
    from prefrl.render import read_video

    out = tmp_path / "q1.mp4"
    summary = _prefrl(monkeypatch, capsys, ["render", "--dataset", str(data_path), "--query", "1",
                                            "--out", str(out), "--width", "64", "--height", "48"])
    frames, fps = read_video(out)
    # One frame per control step; two 64-px clips and an 8-px gap side by side.
    assert frames.shape == (SEGMENT_LENGTH, 48, 64 + 8 + 64, 3) == (summary["frames"], 48,
                                                                     summary["width"], 3)
    assert fps == 20.0  # real time: 1 / (0.01 s × frame skip 5)
    assert frames[:, :, 64:72].min() > 200  # the white gap between left and right
    assert frames[:, :, :64].std() > 5  # a picture, not a blank clip


@needs_gl
def test_render_a_checkpoints_episode(tmp_path):
    from prefrl.commands.render import RenderConfig, render
    from prefrl.render import read_video

    expert = Path(__file__).resolve().parent.parent / "experiments/experts/run/final.npz"
    summary = render(RenderConfig(checkpoint=str(expert), task="run", steps=6, width=64,
                                  height=48, out=str(tmp_path / "episode.webm")))
    frames, _ = read_video(tmp_path / "episode.webm")
    assert frames.shape == (6, 48, 64, 3) and summary["frames"] == 6


@needs_gl
def test_frames_follow_the_stored_root_position():
    # The tracking camera follows the cheetah: the floor's checker pattern moves under it
    # when rootx changes, so two states differing only in rootx give different frames.
    from prefrl.render import Renderer

    qpos = np.zeros((2, 9))
    qpos[1, 0] = 0.37
    with Renderer(64, 48) as renderer:
        frames = renderer.frames(qpos, np.zeros((2, 9)))
    assert np.abs(frames[0].astype(int) - frames[1]).sum() > 0


def test_missing_gl_library_is_named_and_nothing_is_written(data_path, tmp_path):
    # Debian's libosmesa6 is not installed here: the same path as a missing libEGL.
    pytest.importorskip("OpenGL")
    from ctypes.util import find_library

    if find_library("OSMesa"):
        pytest.skip("OSMesa is installed, so it cannot stand in for a missing GL library")
    out = tmp_path / "q.mp4"
    done = subprocess.run([sys.executable, "-m", "prefrl.cli", "render", "--dataset",
                           str(data_path), "--query", "0", "--out", str(out), "--gl", "osmesa"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "apt-get install libosmesa6" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the labels file


def test_store_answers_undo_and_resume(data, tmp_path):
    path = tmp_path / "labels.npz"
    store = LabelStore.create(path, data, task="run", source="data.npz")
    assert store.next_pending() == 0 and store.progress()["pending"] == NUM_QUERIES
    store.answer(0, "left", "ann")
    store.answer(1, "equal", "bob")
    store.answer(2, "skip", "ann")
    assert store.undo() == 2  # the latest answer comes back first
    store.answer(2, "right", "ann")
    again = LabelStore.open(path)  # a restarted server
    assert again.next_pending() == 3
    np.testing.assert_array_equal(again.label[:3], [1.0, 0.5, 0.0])  # P(left ≻ right)
    np.testing.assert_array_equal(again.mask, [True, True, True, False, False])
    assert again.annotators == ["ann", "bob"]
    np.testing.assert_array_equal(again.fields["annotator"], [0, 1, 0, -1, -1])
    # The oracle's labels stay beside the people's, and the file is an ordinary dataset.
    loaded, header = dataset_lib.load(path)
    assert set(loaded.labels) == {"human", "partial_return"}
    assert header["extensions"]["annotation"]["annotators"] == ["ann", "bob"]
    # Resuming with the same queries works; other queries are refused.
    assert LabelStore.create(path, data, task="run").next_pending() == 3
    other = data.replace(first=data.second, second=data.first)
    with pytest.raises(ValueError, match="other queries"):
        LabelStore.create(path, other, task="run")


def test_store_skips_are_recorded_not_trained_on(data, tmp_path):
    store = LabelStore.create(tmp_path / "labels.npz", data, task="run")
    store.answer(0, "skip", "ann")
    assert store.fields["skipped"][0] and not store.mask[0] and store.next_pending() == 1
    assert store.progress()["skipped"] == 1


@pytest.mark.parametrize("args, status", [
    ((99, "left", "ann"), 404), ((0, "2", "ann"), 422), ((0, 2, "ann"), 422),
    ((0, "left", ""), 422), ((0, "left", "   "), 422), ((0, "left", "../x"), 422),
    (("0", "left", "ann"), 422), ((True, "left", "ann"), 422)])
def test_store_refuses_bad_answers_and_changes_nothing(data, tmp_path, args, status):
    path = tmp_path / "labels.npz"
    store = LabelStore.create(path, data, task="run")
    before = path.read_bytes()
    with pytest.raises(RequestError) as err:
        store.answer(*args)
    assert err.value.status == status
    assert path.read_bytes() == before


def test_an_inconsistent_labels_file_is_refused(data, tmp_path):
    path = tmp_path / "labels.npz"
    store = LabelStore.create(path, data, task="run")
    store.fields["order"][1] = 0  # answered, yet no annotator
    store.save()
    with pytest.raises(FileFormatError, match="without annotator"):
        LabelStore.open(path)


# --------------------------------------------------------------------------- the page's API


def _request(url, body=None, method=None, headers=None):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def served(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    (folder.parent / "secret.txt").write_text("outside the run folder")
    store = LabelStore.create(folder / "labels.npz", data, task="run")
    videos = VideoCache(folder / "videos", store.segments, width=64, height=48)
    server = Server(make_app(store, videos, annotator="ann"), "127.0.0.1", 0).start()
    yield server.url.rstrip("/"), store
    server.stop()
    videos.close()


GOOD = {"query": 0, "answer": "left", "annotator": "ann"}


@pytest.mark.parametrize("path, body, status, headers", [
    # a page on another site posting into the labels (CSRF), or a rebound DNS name
    ("/api/answer", GOOD, 415, {"Content-Type": "text/plain"}),
    ("/api/answer", GOOD, 403, {"Origin": "http://evil.example"}),
    ("/api/answer", GOOD, 400, {"Host": "evil.example"}),
])
def test_requests_from_other_sites_are_refused(served, path, body, status, headers):
    url, store = served
    before = store.path.read_bytes()
    code, raw = _request(url + path, body, headers=headers)
    assert code == status, raw
    assert store.path.read_bytes() == before


@pytest.mark.parametrize("path, body, status", [
    ("/api/answer", {"query": 12345, "answer": "left", "annotator": "ann"}, 404),
    ("/api/answer", {"query": 0, "label": 2, "annotator": "ann"}, 422),
    ("/api/answer", {"query": 0, "answer": 2, "annotator": "ann"}, 422),
    ("/api/answer", {"query": 0, "answer": "2", "annotator": "ann"}, 422),
    ("/api/answer", {"query": 0, "answer": "left", "annotator": ""}, 422),
    ("/api/answer", {"query": 0, "answer": "left"}, 422),
    ("/api/answer", {"query": 0, "answer": "left", "annotator": "ann", "extra": 1}, 422),
    ("/api/answer", b"not json", 400),
    ("/api/answer", b"[1, 2]", 400),
    ("/api/answer", b"x" * 5000, 413),
    ("/api/undo", {"annotator": ""}, 422),
    ("/video/..%2Fsecret.txt", None, 400),
    ("/video/%2e%2e/%2e%2e/secret.txt", None, 400),
    ("/video/../labels.npz", None, 400),
    ("/video/labels.npz", None, 404),
    ("/video/seg_999.webm", None, 404),
])
def test_bad_requests_get_4xx_and_leave_the_labels_file_unchanged(served, path, body, status):
    url, store = served
    before = store.path.read_bytes()
    code, raw = _request(url + path, body)
    assert code == status, raw
    assert "error" in json.loads(raw) or code == 404
    assert b"outside the run folder" not in raw
    assert store.path.read_bytes() == before


@needs_gl
def test_page_serves_videos_and_records_answers(served):
    from prefrl.render import read_video

    url, store = served
    code, raw = _request(url + "/")
    assert code == 200 and b"left better" in raw and b'"ann"' in raw
    state = json.loads(_request(url + "/api/state")[1])
    query = state["query"]
    code, raw = _request(url + query["left"])
    assert code == 200 and raw[:4] == b"\x1a\x45\xdf\xa3"  # the EBML (WebM) magic
    video = Path(store.path.parent / "videos" / query["left"].rsplit("/", 1)[1])
    assert read_video(video)[0].shape == (SEGMENT_LENGTH, 48, 64, 3)
    code, raw = _request(url + "/api/answer", {"query": query["id"], "answer": "right",
                                               "annotator": "ann"})
    assert code == 200, raw
    assert json.loads(raw)["progress"]["answered"] == 1
    code, raw = _request(url + "/api/answer", {"query": query["id"], "answer": "left",
                                               "annotator": "ann"})
    assert code == 409  # answered already: undo first
    code, raw = _request(url + "/api/undo", {"annotator": "ann"})
    assert code == 200 and json.loads(raw)["undone"] == query["id"]


# --------------------------------------------------------------------------- interchange


def _answered(data):
    """The dataset with query 3 skipped (masked) and a tie at query 1, as a person leaves it."""
    import jax.numpy as jnp

    label = np.asarray(data.labels["partial_return"]).copy()
    label[1] = 0.5
    mask = np.array([True, True, True, False, True])
    return data.replace(labels={"human": jnp.asarray(label)},
                        label_mask={"human": jnp.asarray(mask)})


def _pairs(data, name):
    keep = np.asarray(data.label_mask[name])
    seg = data.segments
    out = []
    for f, s, lab in zip(np.asarray(data.first)[keep], np.asarray(data.second)[keep],
                         np.asarray(data.labels[name])[keep], strict=True):
        out.append((np.asarray(seg.obs[f]), np.asarray(seg.obs[s]), np.asarray(seg.qpos[f]),
                    np.asarray(seg.action[s]), np.asarray(seg.next_obs[f]), float(lab)))
    return out


def test_unirlhf_export_round_trips(data, tmp_path):
    ours = _answered(data)
    paths = interchange.export_unirlhf(tmp_path / "uni", ours, "human")
    # Their conventions: labels 0 first / 1 second / -1 equal; starts into the flat rows.
    with open(paths["labels"], "rb") as f:
        theirs = pickle.load(f)
    expected = {1.0: 0, 0.0: 1, 0.5: -1}
    kept = np.asarray(ours.labels["human"])[np.asarray(ours.label_mask["human"])]
    np.testing.assert_array_equal(theirs, [expected[float(v)] for v in kept])
    names = sorted(p.name for p in (tmp_path / "uni").glob("*.pkl"))
    assert [n.split("_domain_")[0] for n in names] == ["human_label", "indices_1", "indices_2"]
    assert names[0].endswith(f"_num_4_len_{SEGMENT_LENGTH}.pkl")
    back = interchange.import_unirlhf(tmp_path / "uni", paths["dataset"])
    assert back.num_queries == 4
    for a, b in zip(_pairs(ours, "human"), _pairs(back, "human"), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y)
    # The imported file is a dataset prefrl reads (and its segments can still be rendered).
    dataset_lib.save(tmp_path / "back.npz", back, task="run")
    assert dataset_lib.load(tmp_path / "back.npz")[0].segments.qpos.shape[-1] == 9


def test_unirlhf_pickles_cannot_run_code(tmp_path, data):
    paths = interchange.export_unirlhf(tmp_path, _answered(data), "human")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    paths["labels"].write_bytes(pickle.dumps(Evil()))
    with pytest.raises(FileFormatError, match="refusing to load builtins.print"):
        interchange.import_unirlhf(tmp_path, paths["dataset"])


def test_imitation_export_round_trips(data, tmp_path):
    ours = _answered(data)
    interchange.export_imitation(tmp_path / "im.npz", ours, "human")
    arrays = np.load(tmp_path / "im.npz")
    # imitation: obs has k + 1 rows, acts and rews k; preference = P(fragment 1 ≻ 2), as ours.
    assert arrays["fragments1_obs"].shape == (4, SEGMENT_LENGTH + 1, 17)
    assert arrays["fragments2_acts"].shape == (4, SEGMENT_LENGTH, 6)
    back = interchange.import_imitation(tmp_path / "im.npz", "human")
    for a, b in zip(_pairs(ours, "human"), _pairs(back, "human"), strict=True):
        for i in (0, 1, 3, 4, 5):
            np.testing.assert_allclose(a[i], b[i])


def test_convert_command_round_trip(data, tmp_path, monkeypatch, capsys):
    dataset_lib.save(tmp_path / "ours.npz", _answered(data), task="run")
    for args in (["--output-format", "unirlhf", "--input", str(tmp_path / "ours.npz"),
                  "--out", str(tmp_path / "uni")],
                 ["--input-format", "unirlhf", "--input", str(tmp_path / "uni"), "--flat",
                  str(tmp_path / "uni" / "halfcheetah-prefrl_transitions.npz"),
                  "--out", str(tmp_path / "back.npz")]):
        _prefrl(monkeypatch, capsys, ["convert", *args])
    back, header = dataset_lib.load(tmp_path / "back.npz")
    assert back.num_queries == 4 and header["meta"]["converted_from"] == "unirlhf"


def test_serve_queries_blocks_until_a_person_has_answered(data, tmp_path):
    # What a training loop does: serve its pending queries, wait, go on with the labels.
    import queue
    import threading

    from prefrl.annotate import serve_queries

    urls: queue.Queue = queue.Queue()
    result: dict = {}
    pairs = np.array([[0, 1], [2, 3], [4, 5]])

    def train():
        result["data"] = serve_queries(data.segments, pairs, tmp_path / "round0.npz", task="run",
                                       announce=urls.put, timeout=120)

    thread = threading.Thread(target=train)
    thread.start()
    url = urls.get(timeout=60).rstrip("/")
    for q, answer in enumerate(("right", "skip", "equal")):
        assert not result  # still waiting for the person
        code, raw = _request(url + "/api/answer", {"query": q, "answer": answer,
                                                   "annotator": "ann"})
        assert code == 200, raw
    thread.join(60)
    labelled = result["data"]
    np.testing.assert_array_equal(np.asarray(labelled.labels["human"]), [0.0, 0.5, 0.5])
    np.testing.assert_array_equal(np.asarray(labelled.label_mask["human"]), [True, False, True])
    np.testing.assert_array_equal(np.asarray(labelled.first), [0, 2, 4])
    assert LabelStore.open(tmp_path / "round0.npz").fields["skipped"].tolist() == [
        False, True, False]


def test_serve_queries_times_out_with_the_labels_kept(data, tmp_path):
    from prefrl.annotate import serve_queries

    with pytest.raises(TimeoutError, match="3 of 3 queries still unanswered"):
        serve_queries(data.segments, np.array([[0, 1], [2, 3], [4, 5]]), tmp_path / "r.npz",
                      task="run", announce=lambda url: None, timeout=0.2)
    assert (tmp_path / "r.npz").exists()


def test_schema_extension_arrays_are_ignored_by_base_readers(data, tmp_path):
    ext = {"annotation": ({"schema_version": 1}, {"x.human": np.arange(NUM_QUERIES)})}
    dataset_lib.save(tmp_path / "d.npz", data, task="run", extensions=ext)
    loaded, header = dataset_lib.load(tmp_path / "d.npz")
    assert header["extensions"] == {"annotation": {"schema_version": 1}}
    assert set(loaded.labels) == {"partial_return"}
    for bad in ("", "a.b", "label", "segments"):
        with pytest.raises(ValueError, match="extension name"):
            dataset_lib.save(tmp_path / "e.npz", data, task="run", extensions={bad: ({}, {})})
    ext = {"annotation": ({}, {"t": np.array([np.nan] * NUM_QUERIES)})}
    with pytest.raises(FileFormatError, match="NaN"):  # extensions are checked like the rest
        dataset_lib.save(tmp_path / "f.npz", data, task="run", extensions=ext)


def test_annotate_refuses_a_dataset_without_physics_states(data, tmp_path, monkeypatch, capsys):
    # An imported flat file has observations only: nothing to draw, so nothing is served.
    from prefrl import cli

    flat = dataset_lib.from_flat(dataset_lib.to_flat(data, "partial_return"))
    dataset_lib.save(tmp_path / "flat.npz", flat, task="run")
    monkeypatch.setattr(cli, "configure_jax", lambda **kwargs: None)
    monkeypatch.setattr("prefrl.render.Renderer.__init__", lambda self, *a, **k: None)
    monkeypatch.setattr("prefrl.render.Renderer.close", lambda self: None)
    code = cli.main(["annotate", "--dataset", str(tmp_path / "flat.npz"), "--out-dir",
                     str(tmp_path / "out")])
    assert code == 1
    assert "no stored qpos/qvel" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
