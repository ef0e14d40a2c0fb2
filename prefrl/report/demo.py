"""The demo's outputs: the table it prints, its figure, its results file and summary line."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_table(results: Mapping[str, Any]) -> str:
    """The table: method, labels, true return mean ± std, mean speed v_x, speed error
    mean |v_x − v*|, and held-out preference accuracy under each oracle's labels."""
    header = ("method", "labels", "true return", "speed", "speed err", "acc (PR labels)",
              "acc (regret labels)")
    lines = []
    for row in results["rows"]:
        acc = row.get("heldout_accuracy") or {}
        lines.append((
            row["method"], row["labels"],
            f"{_fmt(row['mean_return'], '.1f')} ± {_fmt(row['std_return'], '.1f')}",
            _fmt(row.get("mean_speed"), ".2f"), _fmt(row.get("mean_speed_error"), ".3f"),
            _fmt(acc.get("partial_return"), ".3f"), _fmt(acc.get("regret"), ".3f"),
        ))
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), sep, *(fmt(r) for r in lines)])


def save_plot(results: Mapping[str, Any], path: str | Path) -> Path:
    """Bar charts of true return and speed error, and PPO's true/proxy reward curves (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prefrl.io import atomic_write_bytes

    rows = results["rows"]
    names = [r["method"] if r["labels"] == "-" else f"{r['method']}\n[{r['labels']}]"
             for r in rows]
    names = [n.replace(" (PPO, true reward)", "") for n in names]
    has_speed = any(r.get("mean_speed_error") is not None for r in rows)
    fig, axes = plt.subplots(1, 3 if has_speed else 2, figsize=(16 if has_speed else 11, 4.8))
    y = np.arange(len(rows))
    axes[0].barh(y, [r["mean_return"] for r in rows], xerr=[r["std_return"] for r in rows],
                 color="tab:blue", alpha=0.8)
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("true episode return (mean ± std)")
    axes[0].set_title(f"{results['task']['task']}: true return")
    ax = axes[1]
    if has_speed:
        axes[1].barh(y, [r.get("mean_speed_error") or 0.0 for r in rows], color="tab:orange",
                     alpha=0.8)
        axes[1].set_yticks(y, names, fontsize=8)
        axes[1].invert_yaxis()
        axes[1].set_xlabel("mean |v_x − v*| (m/s)")
        axes[1].set_title("speed error")
        ax = axes[2]
    for name, curve in results["ppo_curves"].items():
        ax.plot(curve["env_steps"], curve["true_reward"], label=f"{name}: true r")
        ax.plot(curve["env_steps"], curve["proxy_reward"], "--", label=f"{name}: learned (std.)")
    ax.set_xlabel("PPO environment steps")
    ax.set_ylabel("mean reward per step (rollouts)")
    ax.set_title("PPO on learned rewards")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def write_results(results: Mapping[str, Any], path: str | Path) -> Path:
    """``results`` as indented JSON, atomically (NaN written as null)."""
    from prefrl.io import atomic_write_json

    return atomic_write_json(path, _finite_or_none(results))


def _finite_or_none(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, Sequence) and not isinstance(x, str):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def summary_line(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """The one-line JSON summary: true return per row, held-out accuracies, wall time."""
    out = {"task": results["task"]["task"], "wall_s": round(float(results["wall_s"]), 1),
           "out_dir": str(out_dir), "label_agreement": results["data"]["label_agreement"]}
    for row in results["rows"]:
        key = row["method"] if row["labels"] == "-" else f"{row['method']} [{row['labels']}]"
        entry = {"return": round(row["mean_return"], 2), "speed": round(row["mean_speed"], 3)}
        if row.get("mean_speed_error") is not None:
            entry["speed_error"] = round(row["mean_speed_error"], 4)
        for label, acc in (row.get("heldout_accuracy") or {}).items():
            entry[f"acc_{label}"] = None if not math.isfinite(acc) else round(acc, 4)
        out[key] = entry
    return _finite_or_none(out)
