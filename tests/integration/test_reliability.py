"""Issue 26's classes beyond single inputs: one writer per output, the compilation cache,
sweep cell failures, argument checks of the factories, OS errors and header schemas.

All cheap: no training (sweeps run a fake runner), CLI calls in this process.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli_fuzz_round2 import SWEEP, _dataset_file

from prefrl import cli, locks
from prefrl import io as prefrl_io

HOLDER = """
import sys
from prefrl import locks
lock = locks.hold(sys.argv[1], option="--out-dir")
lock.__enter__()
print("held", flush=True)
sys.stdin.read()
"""


def _run(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "ppo"
    proc = _holder(out)
    try:
        code = _run(["train", "ppo", "--out-dir", str(out), "--total-steps", "8", "--num-envs",
                     "1", "--rollout-steps", "8", "--progress", "false"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert f"being written by process {proc.pid} on " in err and "--out-dir" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of ours
        # Any other writer of the folder is refused the same way.
        with pytest.raises(ValueError, match=f"process {proc.pid}"):
            with locks.hold(out):
                pass
    finally:
        proc.kill()  # kill -9: the lock file stays, naming a dead process
        proc.wait()
    assert (out / ".lock").read_text().split()[0] == str(proc.pid)
    with locks.hold(out) as path:  # the OS dropped the dead process's lock: taken over
        assert path.read_text().split()[0] == str(os.getpid())
        with pytest.raises(locks.FolderLocked, match=f"process {os.getpid()}"):
            with locks.hold(out):  # another open of the same lock, in this process too
                pass
    assert not (out / ".lock").exists()


def test_a_refused_run_leaves_no_folder_and_lock_files_are_git_ignored(tmp_path):
    with pytest.raises(RuntimeError), locks.hold(tmp_path / "new" / "run"):
        raise RuntimeError("the run failed before writing")
    assert not (tmp_path / "new" / "run").exists()
    ignored = (Path(__file__).resolve().parents[2] / ".gitignore").read_text().split()
    assert ".lock" in ignored and ".*.lock" in ignored


def _tiny_sweep(tmp_path: Path) -> Path:
    _dataset_file(tmp_path / "data.npz")
    text = SWEEP.format(budget=8, length=10).replace(
        'expert = "../../../experiments/experts/run/final.npz"\n', "")
    path = tmp_path / "sw.toml"
    path.write_text(text.replace('"../data.npz"', '"data.npz"'))
    return path


def _ok_runner(cell, seeds, scale):  # noqa: ANN001, ANN202 - a runner that trains nothing
    return [{"heldout_accuracy/partial_return": 0.5} for _ in seeds]


def test_a_sweep_neither_reads_nor_writes_a_compilation_cache_in_its_results(
        tmp_path, monkeypatch, capsys):
    from prefrl.sweeps import execute
    from prefrl.sweeps import spec as spec_lib

    spec = spec_lib.load_sweep(_tiny_sweep(tmp_path))
    out = tmp_path / "out"
    planted = out / ".jax_cache"  # a cache someone else's results folder brought along
    planted.mkdir(parents=True)
    (planted / "entry").write_bytes(b"native code")
    used: list[str] = []
    monkeypatch.setattr(execute, "enable_compile_cache", used.append)
    monkeypatch.setenv("PREFRL_JAX_CACHE", str(tmp_path / "cache"))
    outcome = execute.run_sweep(spec, out, {"rm_pr": _ok_runner}, workers=1)
    assert outcome.written and not outcome.failed
    assert used == [str((tmp_path / "cache").resolve())]
    assert sorted(p.name for p in planted.iterdir()) == ["entry"]  # neither read nor written
    assert sorted(p.name for p in out.iterdir()) == [".jax_cache", "runs", "summary.json",
                                                     "sweep.json", "sweep.toml"]
    assert not [p for p in out.rglob("*") if "cache" in p.name and p != planted] + [
        p for p in out.rglob("*lock")]
    # A cache inside the results folder is refused before anything is written.
    before = sorted(out.rglob("*"))
    with pytest.raises(spec_lib.SweepError, match="inside the result directory"):
        execute.run_sweep(spec, out, {"rm_pr": _ok_runner}, workers=1, resume=True,
                          compile_cache=str(out / "cache"))
    code = _run(["sweep", str(tmp_path / "sw.toml"), "--out", str(out), "--resume",
                 "--compile-cache", str(out / "cache")])
    assert code == 2 and "inside the result directory" in capsys.readouterr().err
    assert sorted(out.rglob("*")) == before
    # The default lives in the user's cache folder.
    monkeypatch.delenv("PREFRL_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert execute.default_compile_cache() == tmp_path / "xdg" / "prefrl" / "jax"


def _failing_runner(cell, seeds, scale):  # noqa: ANN001, ANN202
    raise ValueError("the fit diverged\nsecond line of the message")


def test_a_failing_cell_records_one_line_and_keeps_its_traceback_in_a_log(tmp_path, capsys):
    from prefrl.sweeps import execute
    from prefrl.sweeps import spec as spec_lib

    spec = spec_lib.load_sweep(_tiny_sweep(tmp_path))
    out = tmp_path / "out"
    outcome = execute.run_sweep(spec, out, {"rm_pr": _failing_runner}, workers=1,
                                compile_cache=False)
    err = capsys.readouterr().err
    (label, reason), = outcome.failed.items()
    assert "\n" not in reason and reason.startswith("ValueError: the fit diverged")
    assert "Traceback" not in err and f"cell {label} failed: ValueError" in err
    failure, = (out / "failed").glob("*.json")
    assert json.loads(failure.read_text())["reason"] == reason
    assert json.loads((out / "summary.json").read_text())["failed"] == {label: reason}
    log = Path(reason.rpartition("traceback in ")[2].rstrip(")"))
    assert log.is_file() and "Traceback" in log.read_text() and "second line" in log.read_text()
    assert not list((out / "runs").glob("*.json"))  # nothing half-made
    execute.run_sweep(spec, out, {"rm_pr": _ok_runner}, workers=1, resume=True,
                      compile_cache=False)
    assert not (out / "failed").exists() and not (out / "cells").exists()
    assert json.loads((out / "summary.json").read_text())["failed"] == {}


def test_an_unreachable_ray_address_fails_within_its_timeout(tmp_path, capsys):
    import socket

    from prefrl.sweeps import guards
    from prefrl.sweeps.spec import SweepError

    silent = socket.socket()  # accepts connections (the backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    start = time.monotonic()
    try:
        for address, why in (("127.0.0.1:1", "Connection refused"),
                             # (a slow resolver runs into the timeout instead)
                             ("no-such-host.invalid:6379", "(no Ray cluster answers|no answer)"),
                             (f"127.0.0.1:{silent.getsockname()[1]}", "no answer within")):
            with pytest.raises(SweepError, match=f"--ray {address}: .*{why}"):
                guards.check_ray_address(address, 0.5)
    finally:
        silent.close()
    assert time.monotonic() - start < 5
    sweep = _tiny_sweep(tmp_path)
    code = _run(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--ray", "127.0.0.1:1",
                 "--ray-timeout", "1"])
    assert code == 2 and "no Ray cluster answers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no runs/.lock, nothing at all


def test_make_functions_say_which_argument_has_the_wrong_type():
    import optax

    from prefrl.learners import bc, cpl, ppo
    from prefrl.learners import reward_model as rm
    from prefrl.networks import make_network

    with pytest.raises(TypeError, match=r"reward_model.make: argument 'network' should be a "
                                        r"flax module.*optimiser.*optimizer="):
        rm.make(rm.RewardModelConfig(), optax.adam(3e-3))
    with pytest.raises(TypeError, match="cpl.make: argument 'config' should be a CPLConfig"):
        cpl.make(rm.RewardModelConfig(), make_network(6, (8,), True))
    with pytest.raises(TypeError, match="bc.make: argument 'optimizer' should be an optax"):
        bc.make(bc.BCConfig(), make_network(6, (8,), True), "adam")
    with pytest.raises(TypeError, match="ppo.make: argument 'obs_dim' should be an integer"):
        ppo.make(ppo.PPOConfig(), 17.0, 6, num_updates=1)
    rm.make(rm.RewardModelConfig(), optimizer=optax.adam(3e-3))  # the keyword is fine


def test_os_errors_name_the_path(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prefrl_io.tempfile, "mkstemp", full)
    target = tmp_path / "sub" / "x.json"
    with pytest.raises(OSError, match=f"cannot write {target}: No space left on device"):
        prefrl_io.atomic_write_json(target, {})
    err = OSError(errno.EACCES, "Permission denied", str(target))
    assert cli.error_message(err) == f"{target}: Permission denied"
    assert cli.exit_status(err) == 1


@pytest.mark.parametrize("argv", [
    ["train", "ppo", "--out-dir", "/dev/null/run", "--total-steps", "8"],
    ["sweep", "SWEEP", "--out", "/dev/null/sweep"],
    ["report", "RESULTS", "--out", "/dev/null/report"],
    ["bench", "label", "--out", "/dev/null/label.json", "--queries", "2"],
])
def test_unwritable_outputs_are_option_errors(argv, tmp_path, capsys):
    argv = [str(_tiny_sweep(tmp_path)) if a == "SWEEP" else a for a in argv]
    argv = [str(tmp_path) if a == "RESULTS" else a for a in argv]
    code = _run(argv)
    err = capsys.readouterr().err
    assert code == 2 and "/dev/null is not a folder" in err and "Traceback" not in err


def test_header_schemas_extend_to_new_kinds(tmp_path):
    from prefrl import schema

    schema.register("sac_checkpoint", schema.Schema({
        "obs_dim": schema.required(schema.integer(min=1)),
        "target_entropy": schema.optional(schema.number(max=0.0)),
        "task": schema.optional(schema.task_name()),
    }))
    try:
        path = tmp_path / "sac.npz"
        for header, field in (({"obs_dim": 0}, "'obs_dim': must be >= 1"),
                              ({"obs_dim": 17, "target_entropy": float("nan")},
                               "'target_entropy': expected a finite number"),
                              ({"obs_dim": 17, "task": "fly"}, "'task': unknown task 'fly'")):
            prefrl_io.save_npz(path, {"w": np.zeros(3)},
                               {"kind": "sac_checkpoint", "schema_version": 1, **header})
            with pytest.raises(prefrl_io.FileFormatError, match=f"{path}: header field {field}"):
                prefrl_io.load_npz(path, kind="sac_checkpoint")
        with pytest.raises(ValueError, match="already has a schema"):
            schema.register("sac_checkpoint", schema.Schema({}))
    finally:
        schema.SCHEMAS.pop("sac_checkpoint")
