"""The shipped PPO experts of a task: find the checkpoints, order them by training progress.

An expert folder holds one PPO run's checkpoints (``final.npz``, snapshots);
the final checkpoint's critic V_E stands in for V* in the regret oracle
(docs/design.md §3), earlier ones give behaviour of every quality.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

EXPERTS_ENV_HINT = "pass --experts DIR (a folder of PPO checkpoints, e.g. experiments/experts/TASK)"


@dataclasses.dataclass(frozen=True)
class Experts:
    """The task's PPO checkpoints: ``checkpoints`` sorted by training progress, last = final."""

    directory: Path
    checkpoints: tuple[Path, ...]
    progress: tuple[float, ...]  # env steps of each checkpoint
    headers: tuple[dict[str, Any], ...]

    @property
    def final(self) -> Path:
        return self.checkpoints[-1]

    @property
    def final_header(self) -> dict[str, Any]:
        return self.headers[-1]


EXPERTS_ENV = "PREFRL_EXPERTS"


def experts_root() -> Path:
    """The folder of the shipped experts (one sub-folder per task).

    In order: ``$PREFRL_EXPERTS`` when set; ``prefrl/experts`` inside the
    installed package (``pip install .`` ships ``experiments/experts`` there as
    package data); ``<repository>/experiments/experts`` next to the package (a
    checkout, or ``pip install -e .``).
    """
    import os

    import prefrl

    if os.environ.get(EXPERTS_ENV):
        return Path(os.environ[EXPERTS_ENV])
    package = Path(prefrl.__file__).resolve().parent
    installed = package / "experts"
    return installed if installed.is_dir() else package.parent / "experiments" / "experts"


def default_experts_dir(task: str) -> Path:
    """``experts_root() / task``: the shipped PPO checkpoints of ``task``."""
    return experts_root() / task


def _progress(header: Mapping[str, Any]) -> float:
    progress = header.get("progress") or {}
    return float(progress.get("env_steps", progress.get("update", 0)) or 0)


def find_experts(directory: str | Path | None, task: str | None) -> Experts:
    """Every PPO checkpoint (``*.npz``, recursively) under ``directory`` trained on ``task``.

    ``directory`` ``None``/``""`` means :func:`default_experts_dir` (``task``
    required); ``task=None`` accepts checkpoints of any task. Checkpoints
    at the same training progress (``last.npz`` and ``final.npz`` of one run)
    are kept once, preferring ``final.npz``. Raises ``FileNotFoundError`` when
    the folder or its checkpoints are missing, ``ValueError`` when a
    checkpoint was trained on another task or on a learned reward.
    """
    from prefrl import checkpoints
    from prefrl.io import FileFormatError, load_npz

    if not directory and task is None:
        raise ValueError("find_experts needs a directory or a task name")
    folder = Path(directory) if directory else default_experts_dir(str(task))
    if not folder.is_dir():
        raise FileNotFoundError(
            f"expert folder {folder} not found; {EXPERTS_ENV_HINT} (or set ${EXPERTS_ENV})"
        )
    found: dict[float, tuple[Path, dict[str, Any]]] = {}
    skipped = []
    for path in sorted(folder.rglob("*.npz")):
        try:
            _, header = load_npz(path, kind=checkpoints.PPO_KIND)
        except FileFormatError as err:
            skipped.append(str(err))  # another kind of file, or unreadable
            continue
        if task is not None and header.get("task") not in (None, task):
            raise ValueError(f"{path}: checkpoint was trained on task {header.get('task')!r}, "
                             f"the demo runs {task!r}")
        if header.get("reward", "true") != "true":
            raise ValueError(f"{path}: not an expert (trained on reward {header['reward']!r})")
        step = _progress(header)
        if step not in found or path.name == "final.npz":
            found[step] = (path, header)
    if not found:
        why = f" (skipped: {'; '.join(skipped[:3])})" if skipped else ""
        raise FileNotFoundError(
            f"no PPO checkpoints (*.npz) under {folder}{why}; {EXPERTS_ENV_HINT}")
    steps = sorted(found)
    return Experts(folder, tuple(found[s][0] for s in steps), tuple(steps),
                   tuple(found[s][1] for s in steps))


def behaviour_checkpoints(experts: Experts, count: int) -> list[int]:
    """Indices of ``count`` checkpoints evenly spread over training, always the final one."""
    n = len(experts.checkpoints)
    if count >= n:
        return list(range(n))
    picks = np.unique(np.round(np.linspace(n - 1, 0, count)).astype(int))
    return sorted(int(i) for i in picks)
