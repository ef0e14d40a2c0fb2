"""Checks made before any work starts: memory estimates and output paths.

A size option given as ``1e9`` would otherwise allocate until the process is
killed (or XLA aborts the whole process), hours into a sweep. Each command
estimates the bytes its largest arrays need from the shapes it is about to
allocate and calls :func:`check_memory` first; a refused value raises
:class:`prefrl.config.ConfigError` naming the option, the estimate and the
memory this machine has available. Output paths are checked the same way, so
a refused input leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefrl.config import ConfigError

# Resident bytes of one half-cheetah environment in the C stepper (MjModel
# copy + MjData), measured as ~0.47 MB per environment; rounded up.
ENV_BYTES = 512 * 1024
# Share of the available memory one command may plan to use.
MEMORY_FRACTION = 0.8


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation, or ``None`` when unknown.

    Reads ``MemAvailable`` from ``/proc/meminfo`` (Linux; counts reclaimable
    page cache, unlike ``MemFree``), else ``sysconf`` available pages.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``: a byte count for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_memory(option: str, value: object, estimate: float) -> None:
    """Refuse ``option = value`` when its ``estimate`` (bytes) exceeds the available memory.

    Raises:
      ConfigError: naming the option, its value, the estimate and the
        available memory (a usage error: lower the option).
    """
    available = available_memory()
    if available is None or estimate <= MEMORY_FRACTION * available:
        return
    raise ConfigError(
        f"{option} {value}: needs about {format_bytes(estimate)} of memory, more than "
        f"{MEMORY_FRACTION:.0%} of the {format_bytes(available)} this machine has "
        f"available; lower {option}"
    )


def trajectory_bytes(steps: int, num_envs: int, *, obs_dim: int = 17, act_dim: int = 6,
                     nq: int = 9, nv: int = 9, itemsize: int = 4) -> int:
    """Bytes of a ``[steps, num_envs]`` :class:`prefrl.types.Trajectory` plus the environments.

    Per step: ``obs``, ``next_obs``, ``action``, ``reward``, ``x_velocity``,
    ``qpos``, ``qvel`` in ``itemsize`` bytes and two bool flags.
    """
    per_step = (2 * obs_dim + act_dim + 2 + nq + nv) * itemsize + 2
    return int(steps) * int(num_envs) * per_step + int(num_envs) * ENV_BYTES


def batch_bytes(batch_size: int, segment_shape: tuple[int, ...], act_dim: int,
                hidden_total: int) -> int:
    """Bytes a minibatch of ``batch_size`` segment pairs needs in a training step.

    ``segment_shape`` is ``(k, obs_dim)``; the step holds both segments' inputs
    and, for each hidden unit of the network(s), a float32 activation and its
    gradient per time step.
    """
    k, obs_dim = (int(d) for d in segment_shape)
    return int(batch_size) * 2 * k * (obs_dim + int(act_dim) + 2 * int(hidden_total)) * 4


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Refuse an output file path that cannot be written: a folder, or under a non-folder.

    Checked before any work so that a refused run writes nothing. Returns the path.
    """
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{option} {out}: is a folder; give a file path (e.g. {out}/out.npz)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"{option} {out}: {parent} is not a folder, so nothing can be written there")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{option} {out}: folder {parent} is not writable")
            break
    return out


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Refuse an output folder that cannot be written: a file, or under a read-only folder.

    Checked before any work (exit status 2, like any option that cannot work).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{option} {out}: is a file; give a folder")
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(
                    f"{option} {out}: {folder} is not a folder, so nothing can be written there")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError(f"{option} {out}: folder {folder} is not writable")
            break
    return out


__all__ = ["available_memory", "batch_bytes", "check_memory", "check_output_dir",
           "check_output_file", "format_bytes", "trajectory_bytes"]
