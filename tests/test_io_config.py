"""File I/O and config plumbing: atomic writes, validated loads, typed options."""

import argparse
import dataclasses
from typing import Literal

import numpy as np
import pytest

from prefrl import config as cfg
from prefrl import io as pio


def test_npz_round_trip(tmp_path):
    path = tmp_path / "x.npz"
    arrays = {"a": np.arange(6.0).reshape(2, 3), "b": np.array([1, 2], np.int32)}
    pio.save_npz(path, arrays, {"kind": "thing", "schema_version": 1, "note": "hi"})
    loaded, header = pio.load_npz(path, kind="thing", required=("a", "b"))
    np.testing.assert_array_equal(loaded["a"], arrays["a"])
    assert loaded["b"].dtype == np.int32
    assert header["note"] == "hi"
    # No temporary files are left beside the result.
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:50]), "truncated or corrupt"),
        (lambda p: p.write_text("not a zip"), "not a readable .npz"),
    ],
)
def test_npz_corrupt_files(tmp_path, mutate, message):
    path = tmp_path / "x.npz"
    pio.save_npz(path, {"a": np.zeros(3)}, {"kind": "thing", "schema_version": 1})
    mutate(path)
    with pytest.raises(pio.FileFormatError, match=message):
        pio.load_npz(path, kind="thing")


def test_npz_wrong_kind_version_missing(tmp_path):
    path = tmp_path / "x.npz"
    pio.save_npz(path, {"a": np.zeros(3)}, {"kind": "thing", "schema_version": 7})
    with pytest.raises(pio.FileFormatError, match="expected a 'other' file"):
        pio.load_npz(path, kind="other")
    with pytest.raises(pio.FileFormatError, match="unknown schema_version 7"):
        pio.load_npz(path, kind="thing")
    with pytest.raises(pio.FileFormatError, match=r"missing array\(s\) \['b'\]"):
        pio.load_npz(path, kind="thing", supported_versions=(7,), required=("a", "b"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        pio.load_npz(tmp_path / "nope.npz", kind="thing")


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "x.npz"
    pio.save_npz(path, {"a": np.ones(2)}, {"kind": "thing", "schema_version": 1})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="dtype object"):
        bad = {"a": np.array([{}], dtype=object)}
        pio.save_npz(path, bad, {"kind": "thing", "schema_version": 1})
    assert path.read_bytes() == before


@dataclasses.dataclass(frozen=True)
class _Cfg:
    lr: float = cfg.field(1e-3, "learning rate")
    model: Literal["partial_return", "regret"] = cfg.field("regret", "label model")
    sizes: tuple[int, ...] = cfg.field((64, 64), "hidden sizes")
    use_ensemble: bool = cfg.field(False, "ensemble on/off")

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def test_dataclass_args_round_trip():
    parser = argparse.ArgumentParser()
    cfg.add_dataclass_args(parser, _Cfg)
    args = parser.parse_args(["--lr", "0.5", "--sizes", "8", "16", "--use-ensemble", "true"])
    c = cfg.from_args(_Cfg, args)
    assert c == _Cfg(lr=0.5, model="regret", sizes=(8, 16), use_ensemble=True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "nonsense"])


def test_mapping_unknown_key_and_bad_value():
    assert cfg.from_mapping(_Cfg, {"lr": 0.1, "sizes": [3]}) == _Cfg(lr=0.1, sizes=(3,))
    with pytest.raises(cfg.ConfigError, match=r"unknown key\(s\) \['lrr'\]"):
        cfg.from_mapping(_Cfg, {"lrr": 0.1}, where="sweep.toml [fit]")
    with pytest.raises(cfg.ConfigError, match="lr must be > 0"):
        cfg.from_mapping(_Cfg, {"lr": -1.0})


def test_cli_help_lists_commands(capsys):
    from prefrl import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "bench" in capsys.readouterr().out


def test_configure_jax_adds_host_devices_and_keeps_what_the_user_set():
    import os

    from prefrl.jax_setup import configure_jax, jax_settings

    env: dict[str, str] = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    configure_jax(env)
    count = max(1, os.cpu_count() or 1)
    assert env["XLA_FLAGS"] == (
        f"--xla_dump_to=/tmp/x --xla_force_host_platform_device_count={count}")
    mine = {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
    configure_jax(mine)
    assert mine == {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
    with_mjx = {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
    configure_jax(with_mjx, mjx=True)
    assert with_mjx["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=3 "
                                     "--xla_cpu_enable_concurrency_optimized_scheduler=false")
    fresh: dict[str, str] = {}
    configure_jax(fresh, mjx=True)
    assert fresh["XLA_FLAGS"].endswith(" --xla_cpu_enable_concurrency_optimized_scheduler=false")
    untouched = {"PREFRL_JAX_DEFAULTS": "1"}
    configure_jax(untouched, mjx=True)
    assert untouched == {"PREFRL_JAX_DEFAULTS": "1"}
    settings = jax_settings()
    assert settings["cpu_devices"] == 2  # tests/conftest.py, as the command line sets it
    assert isinstance(settings["cpu_async_dispatch"], bool)


@pytest.mark.parametrize("argv, mjx", [
    (["bench", "rollout", "--backend", "mjx"], True),
    (["train", "ppo", "--backend", "mjx"], True),
    (["train", "online", "--backend", "mjx"], True),
    (["train", "ppo"], False),
    (["bench", "rollout"], False),
])
def test_command_sets_the_mjx_cpu_flag_for_mjx_only(monkeypatch, argv, mjx):
    """MJX on XLA:CPU deadlocks at B >= 1024 without MJX_CPU_FLAG (prefrl.jax_setup)."""
    from prefrl import cli

    class Stop(Exception):
        pass

    def record(**kwargs):
        raise Stop(kwargs)

    monkeypatch.setattr(cli, "configure_jax", record)
    with pytest.raises(Stop) as err:
        cli.main(argv)
    assert err.value.args[0] == {"mjx": mjx}
