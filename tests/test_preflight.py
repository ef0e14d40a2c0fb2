"""Checks before work: memory estimates against the machine's memory, output paths, exit codes."""

import io

import pytest

from prefrl import cli, preflight
from prefrl.config import ConfigError, parse_int

GiB = 2**30


def test_available_memory_reads_memavailable(monkeypatch):
    meminfo = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    2097152 kB\n"
    monkeypatch.setattr(preflight, "open", lambda *a, **k: io.StringIO(meminfo), raising=False)
    assert preflight.available_memory() == 2 * GiB  # 2 097 152 kB × 1024


def test_available_memory_falls_back_without_proc(monkeypatch):
    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(preflight, "open", no_proc, raising=False)
    value = preflight.available_memory()
    assert value is None or value > 0


def test_the_same_estimate_passes_or_fails_with_the_machines_memory(monkeypatch):
    estimate = 3 * GiB
    monkeypatch.setattr(preflight, "available_memory", lambda: 4 * GiB)  # 0.8 × 4 > 3
    preflight.check_memory("--steps", 10, estimate)
    monkeypatch.setattr(preflight, "available_memory", lambda: 2 * GiB)
    with pytest.raises(ConfigError) as err:
        preflight.check_memory("--steps", 10, estimate)
    # The option, its value, the estimate and the machine's memory.
    assert str(err.value).startswith("--steps 10: needs about 3.0 GiB of memory")
    assert "2.0 GiB this machine has available" in str(err.value)
    monkeypatch.setattr(preflight, "available_memory", lambda: None)  # unknown: no refusal
    preflight.check_memory("--steps", 10, estimate)


def test_trajectory_estimate_known_answer():
    # (2·17 + 6 + 2 + 9 + 9) × 4 + 2 = 242 bytes a step; 10 × 3 steps + 3 environments.
    assert preflight.trajectory_bytes(10, 3) == 30 * 242 + 3 * preflight.ENV_BYTES


def test_output_file_checks(tmp_path):
    assert preflight.check_output_file(tmp_path / "new" / "a.npz", "--out")
    with pytest.raises(ConfigError, match="--out .*: is a folder"):
        preflight.check_output_file(tmp_path, "--out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="file is not a folder"):
        preflight.check_output_file(tmp_path / "file" / "a.npz", "--out")
    with pytest.raises(ConfigError, match="/dev/null is not a folder"):
        preflight.check_output_file("/dev/null/a.npz", "--output")


def test_integer_options_accept_integral_scientific_notation():
    assert parse_int("1e9") == 10**9 and parse_int("12") == 12
    for bad in ("1.5", "many", "inf", "nan"):
        with pytest.raises(Exception, match="expected an integer"):
            parse_int(bad)


def test_exit_status_tells_usage_from_data_errors():
    from prefrl.checkpoints import NonFiniteError
    from prefrl.io import FileFormatError

    assert cli.exit_status(ConfigError("--budget")) == 2
    assert cli.exit_status(ValueError("bad value")) == 2
    assert cli.exit_status(FileNotFoundError("x: no such file")) == 1
    assert cli.exit_status(IsADirectoryError("x")) == 1
    assert cli.exit_status(FileFormatError("x: corrupt")) == 1
    assert cli.exit_status(NonFiniteError("diverged")) == 1
