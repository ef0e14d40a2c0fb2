"""Figures of a sweep's records (PNG and PDF), drawn on ``matplotlib.figure.Figure``.

The Agg canvas only: importing or running this module never touches pyplot's
global state.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.io import atomic_write_bytes
from prefrl.report.tables import ASSUMPTIONS, group_rows, is_number
from prefrl.sweeps.spec import LABEL_MODELS


def _new_figure(ncols: int, nrows: int = 1, width: float = 4.2, height: float = 3.4) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Any, out: Path, stem: str) -> list[str]:
    names = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150 if ext == "png" else None)
        atomic_write_bytes(out / f"{stem}.{ext}", buf.getvalue())
        names.append(f"{stem}.{ext}")
    return names


_PRETTY = {
    "partial_return": "partial return",
    "regret": "regret",
    "true_return": "true return (IQM, 95% CI)",
    "heldout_accuracy": "held-out accuracy (IQM, 95% CI)",
}


def _condition_label(key: tuple, names: Sequence[str]) -> str:
    short = {"beta": "β", "epsilon": "ε", "segment_length": "k"}
    parts = []
    for name, value in zip(names, key, strict=True):
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(text if name == "task" else f"{short.get(name, name)}={text}")
    return ", ".join(parts)


def plot_vs_budget(
    cells: Sequence[Mapping[str, Any]], metric: str, out: Path, stem: str
) -> list[str] | None:
    """One panel per (condition, label model); a line per learner with its 95 % band."""
    cells = [c for c in cells if c["metric"] == metric]
    if not cells:
        return None
    condition_keys = ("task", "beta", "epsilon", "segment_length")
    conditions = list(group_rows(cells, condition_keys))
    models = [m for m in LABEL_MODELS if any(c["label_model"] == m for c in cells)]
    learners = sorted({c["learner"] for c in cells})
    fig, axes = _new_figure(len(models), len(conditions))
    colors = _colors(learners)
    for i, cond in enumerate(conditions):
        for j, model in enumerate(models):
            ax = axes[i][j]
            for learner in learners:
                pts = sorted(
                    (c for c in cells if c["label_model"] == model and c["learner"] == learner
                     and tuple(c[k] for k in condition_keys) == cond),
                    key=lambda c: c["label_budget"],
                )
                if not pts:
                    continue
                x = [c["label_budget"] for c in pts]
                y = np.array([c["iqm"] for c in pts])
                yerr = np.array([[c["iqm"] - c["ci_low"] for c in pts],
                                 [c["ci_high"] - c["iqm"] for c in pts]])
                ax.errorbar(x, y, yerr=yerr, fmt="o-", capsize=3, color=colors[learner],
                            label=learner)
                ax.fill_between(
                    x, [c["ci_low"] for c in pts], [c["ci_high"] for c in pts],
                    color=colors[learner], alpha=0.2, linewidth=0,
                )
            budgets = sorted({c["label_budget"] for c in cells})
            if len(budgets) > 1 and budgets[-1] / max(budgets[0], 1) >= 8:
                ax.set_xscale("log")
            ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.minorticks_off()
            ax.set_title(f"{_condition_label(cond, condition_keys)}\nlabels: {_PRETTY[model]}",
                         fontsize=9)
            ax.set_xlabel("label budget (queries)")
            ax.set_ylabel(_PRETTY.get(metric, metric))
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, title="learner", title_fontsize=8)
    return _save(fig, out, stem)


def _colors(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def plot_assumption_table(table: Sequence[Mapping[str, Any]], out: Path, stem: str) -> list[str]:
    fig, axes = _new_figure(1, 1, width=4.6, height=3.8)
    ax = axes[0][0]
    grid = np.full((2, 2), np.nan)
    text = [["n/a", "n/a"], ["n/a", "n/a"]]
    for row in table:
        i, j = LABEL_MODELS.index(row["label_model"]), ASSUMPTIONS.index(row["assumption"])
        grid[i, j] = row["iqm"]
        text[i][j] = f"{row['iqm']:.3g}\n[{row['ci_low']:.3g}, {row['ci_high']:.3g}]\nn={row['n']}"
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=9,
                    color="white" if np.isfinite(grid[i, j]) else "black",
                    bbox={"facecolor": "black", "alpha": 0.35, "linewidth": 0})
    ax.set_xticks([0, 1], [f"assumes\n{_PRETTY[a]}" for a in ASSUMPTIONS])
    ax.set_yticks([0, 1], [f"labelled by\n{_PRETTY[m]}" for m in LABEL_MODELS])
    metric = table[0]["metric"] if table else ""
    budget = table[0]["label_budget"] if table else ""
    ax.set_title(f"{_PRETTY.get(metric, metric)}\nat {budget} labels", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, out, stem)


def _curves(records: Sequence[Mapping[str, Any]], *names: str) -> list[tuple[Mapping, dict]]:
    out = []
    for r in records:
        curves = r["metrics"].get("curves")
        if isinstance(curves, Mapping) and all(
            isinstance(curves.get(n), list) and curves[n] for n in names
        ):
            lengths = {len(curves[n]) for n in names}
            if len(lengths) == 1:
                out.append((r, {n: np.asarray(curves[n], np.float64) for n in names}))
    return out


def plot_kl_frontier(
    records: Sequence[Mapping[str, Any]], out: Path, stem: str
) -> list[str] | None:
    """True return against KL(π ‖ π_ref) per step, one point per run (the DPO authors' frontier).

    Runs of every budget, noise setting and seed are points, so the upper
    envelope of a learner's cloud is its return–KL frontier.
    """
    finals = [
        r for r in records
        if is_number(r["metrics"].get("kl_to_ref")) and is_number(r["metrics"].get("true_return"))
    ]
    if not finals:
        return None
    tasks = sorted({r["cell"]["task"] for r in finals})
    learners = sorted({r["cell"]["learner"] for r in finals})
    colors = _colors(learners)
    fig, axes = _new_figure(len(tasks))
    for j, task in enumerate(tasks):
        ax = axes[0][j]
        seen: set[str] = set()
        for r in finals:
            if r["cell"]["task"] != task:
                continue
            learner = r["cell"]["learner"]
            ax.scatter(
                r["metrics"]["kl_to_ref"], r["metrics"]["true_return"], color=colors[learner],
                marker="o" if r["cell"]["label_model"] == "partial_return" else "^", s=22,
                label=None if learner in seen else learner,
            )
            seen.add(learner)
        ax.set_xlabel("KL(π ‖ π_ref) per step")
        ax.set_ylabel("true return")
        ax.set_title(f"{task}: return–KL frontier\n(o: partial-return labels, ^: regret labels)",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out, stem)


def plot_proxy_vs_true(
    records: Sequence[Mapping[str, Any]], out: Path, stem: str
) -> list[str] | None:
    """Learned (proxy) vs true reward per step of PPO's rollouts, one panel per task × learner.

    Over-optimisation shows as the proxy rising while the true reward stalls
    or falls. Thin lines are runs; both axes share the step axis.
    """
    curves = _curves(records, "env_steps", "proxy_reward", "true_reward")
    if not curves:
        return None
    panels = sorted({(r["cell"]["task"], r["cell"]["learner"]) for r, _ in curves})
    fig, axes = _new_figure(len(panels))
    for j, (task, learner) in enumerate(panels):
        ax = axes[0][j]
        twin = ax.twinx()
        for r, c in curves:
            if (r["cell"]["task"], r["cell"]["learner"]) != (task, learner):
                continue
            ax.plot(c["env_steps"], c["true_reward"], color="tab:blue", alpha=0.6, linewidth=1)
            twin.plot(c["env_steps"], c["proxy_reward"], color="tab:orange", alpha=0.6,
                      linewidth=1, linestyle="--")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("true reward per step (solid)", color="tab:blue")
        twin.set_ylabel("learned reward per step (dashed)", color="tab:orange")
        ax.set_title(f"{task}, {learner}: proxy vs true", fontsize=9)
        ax.grid(alpha=0.3)
    return _save(fig, out, stem)


