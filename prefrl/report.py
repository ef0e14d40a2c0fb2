"""Reports on a sweep's result directory: a tidy CSV table, figures and a Markdown summary.

:func:`write_report` reads every valid record of ``RESULTS_DIR/runs/`` (see
:mod:`prefrl.sweep`) and writes to ``OUT``:

* ``runs.csv`` — one row per run: the cell's axes, the seed and every scalar
  metric (the tidy table to load in pandas/R);
* ``cells.csv`` — one row per cell and metric: the number of seeds, the
  interquartile mean (IQM) across seeds and its 95 % percentile-bootstrap
  interval (Agarwal et al. 2021, "Deep RL at the edge of the statistical
  precipice", as ``rliable`` computes them);
* ``assumption_table.csv`` — the 2×2 *label model × learner assumption* table
  (which preference model labelled the data × which one the learner assumes);
* figures (PNG and PDF): the headline metric (true return; held-out accuracy
  for fit-only cells) against the label budget per learner and label model;
  the 2×2 table as a heat map; KL-to-π_ref vs true-return frontiers and
  proxy-vs-true reward curves when the records hold those metrics;
* ``summary.md`` — the tables in Markdown with links to the figures.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, so
importing or running this module never touches pyplot's global state.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefrl import evaluation
from prefrl.io import atomic_write_bytes, atomic_write_text
from prefrl.sweep import FIT_ONLY_LEARNERS, LABEL_MODELS, load_records

# Metrics with these names are the headline of a cell (first present wins).
RETURN_METRIC = "true_return"
ACCURACY_METRIC = "heldout_accuracy"
AXES = ("task", "label_model", "learner", "beta", "epsilon", "label_budget", "segment_length")
ASSUMPTIONS = ("partial_return", "regret")


# --------------------------------------------------------------------------------------
# Tables


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def tidy_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per run: axes, seed, assumption, wall time and every scalar metric."""
    rows = []
    for r in records:
        cell = r["cell"]
        row: dict[str, Any] = {"run_id": r["run_id"], "sweep": r.get("sweep", "")}
        row.update({k: cell[k] for k in AXES})
        row["assumption"] = r.get("assumption", "")
        row["fit_only"] = cell["learner"] in FIT_ONLY_LEARNERS
        row["seed"] = r["seed"]
        row["budget_scale"] = r.get("budget_scale", 1.0)
        row["wall_time_s"] = r.get("wall_time_s", float("nan"))
        for k, v in sorted(r["metrics"].items()):
            if _is_number(v):
                row[k] = float(v)
        rows.append(row)
    return rows


def headline_metric(row: Mapping[str, Any]) -> str | None:
    """``true_return`` for policy learners, ``heldout_accuracy`` for fit-only ones."""
    name = ACCURACY_METRIC if row["fit_only"] else RETURN_METRIC
    return name if _is_number(row.get(name)) else None


def _group(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, list]:
    out: dict[tuple, list] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in keys), []).append(row)
    return dict(sorted(out.items(), key=lambda kv: tuple(map(_sort_key, kv[0]))))


def _sort_key(v: Any) -> tuple[int, Any]:
    # Numbers in numeric order (250 < 1000), then strings.
    return (0, v, "") if _is_number(v) else (1, 0, str(v))


def aggregate(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    metric: str,
    *,
    strata: str | None = None,
    reps: int = 2000,
) -> list[dict[str, Any]]:
    """IQM and 95 % interval of ``metric`` across the runs of each group of ``keys``.

    ``strata`` (e.g. ``"task"``) makes the bootstrap stratified over that column.
    """
    out = []
    finite = [r for r in rows if _is_number(r.get(metric)) and math.isfinite(r[metric])]
    for key, group in _group(finite, keys).items():
        if strata is None:
            parts = [[r[metric] for r in group]]
        else:
            parts = [[r[metric] for r in g] for g in _group(group, [strata]).values()]
        point, low, high = evaluation.stratified_bootstrap_ci(parts, evaluation.iqm, reps=reps)
        out.append(
            {**dict(zip(keys, key, strict=True)), "metric": metric, "n": len(group),
             "iqm": point, "ci_low": low, "ci_high": high}
        )
    return out


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt_csv(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _fmt_csv(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)
    return v


# --------------------------------------------------------------------------------------
# Figures


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
    conditions = list(_group(cells, condition_keys))
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


def assumption_table(
    rows: Sequence[Mapping[str, Any]], metric: str, reps: int = 2000
) -> list[dict[str, Any]]:
    """2×2 rows ``(label_model, assumption, n, iqm, ci)`` at each cell's largest label budget.

    Runs are pooled across tasks, noise settings and learners of one
    assumption; the bootstrap is stratified by task (scores of different tasks
    are not exchangeable). Only the largest budget enters so that cells of
    different budgets do not blur the comparison.
    """
    rows = [r for r in rows if _is_number(r.get(metric))]
    if not rows:
        return []
    top = max(r["label_budget"] for r in rows)
    rows = [r for r in rows if r["label_budget"] == top]
    out = aggregate(rows, ("label_model", "assumption"), metric, strata="task", reps=reps)
    for row in out:
        row["label_budget"] = top
    return out


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
        if _is_number(r["metrics"].get("kl_to_ref")) and _is_number(r["metrics"].get("true_return"))
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


# --------------------------------------------------------------------------------------
# Markdown


def _md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_ci(row: Mapping[str, Any]) -> str:
    return f"{row['iqm']:.4g} [{row['ci_low']:.4g}, {row['ci_high']:.4g}]"


def write_report(
    results_dir: str | os.PathLike, out: str | os.PathLike, *, reps: int = 2000
) -> dict[str, Any]:
    """Write the CSV tables, figures and ``summary.md`` of a result directory to ``out``.

    Returns ``{"runs": n, "cells": n, "files": [names written]}``.
    """
    records = load_records(results_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = tidy_rows(records)
    files: list[str] = []
    _write_csv(out / "runs.csv", rows)
    files.append("runs.csv")

    metrics = sorted({k for r in rows for k, v in r.items() if k.startswith(
        ("true_return", "heldout_accuracy", "reward_", "epic", "kl_to_ref", "proxy_return")
    ) and _is_number(v)})
    cells = []
    for metric in metrics:
        cells.extend(aggregate(rows, AXES, metric, reps=reps))
    _write_csv(out / "cells.csv", cells)
    files.append("cells.csv")

    figures: list[tuple[str, str]] = []
    policy_rows = [r for r in rows if not r["fit_only"]]
    fit_rows = [r for r in rows if r["fit_only"]]
    policy_cells = [c for c in cells if c["learner"] not in FIT_ONLY_LEARNERS]
    fit_cells = [c for c in cells if c["learner"] in FIT_ONLY_LEARNERS]
    written = plot_vs_budget(policy_cells, RETURN_METRIC, out, "return_vs_budget")
    if written:
        figures.append(("True return vs label budget", written[0]))
        files += written
    written = plot_vs_budget(fit_cells, ACCURACY_METRIC, out, "accuracy_vs_budget")
    if written:
        figures.append(("Held-out preference accuracy vs label budget (reward fit only)",
                        written[0]))
        files += written

    tables: list[tuple[str, list[dict[str, Any]]]] = []
    for name, subset, metric in (
        ("return", policy_rows, RETURN_METRIC), ("accuracy", fit_rows, ACCURACY_METRIC)
    ):
        table = assumption_table(subset, metric, reps=reps)
        if table:
            tables.append((name, table))
            _write_csv(out / f"assumption_table_{name}.csv", table)
            files.append(f"assumption_table_{name}.csv")
            written = plot_assumption_table(table, out, f"assumption_table_{name}")
            figures.append((f"Label model × assumption ({name})", written[0]))
            files += written

    written = plot_kl_frontier(records, out, "kl_frontier")
    if written:
        figures.append(("True return vs KL to π_ref", written[0]))
        files += written
    written = plot_proxy_vs_true(records, out, "proxy_vs_true")
    if written:
        figures.append(("Proxy (learned) vs true reward during PPO", written[0]))
        files += written

    md = _summary_markdown(records, rows, cells, tables, figures, results_dir)
    atomic_write_text(out / "summary.md", md)
    files.append("summary.md")
    return {"runs": len(rows), "cells": len({tuple(r[k] for k in AXES) for r in rows}),
            "files": files}


def _summary_markdown(
    records: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    cells: Sequence[Mapping[str, Any]],
    tables: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    figures: Sequence[tuple[str, str]],
    results_dir: Any,
) -> str:
    sweeps = sorted({r.get("sweep", "") for r in records})
    seeds = sorted({r["seed"] for r in rows})
    n_cells = len({tuple(r[k] for k in AXES) for r in rows})
    scales = sorted({r["budget_scale"] for r in rows})
    lines = [
        f"# Sweep report: {', '.join(s for s in sweeps if s) or Path(results_dir).name}",
        "",
        f"{len(rows)} runs in {n_cells} cells; seeds {seeds}; budget scale {scales}.",
        "Aggregates are the interquartile mean (IQM) across seeds with a 95 % percentile-",
        "bootstrap interval (Agarwal et al. 2021). Fit-only cells (`rm_pr`, `rm_regret`)",
        "report held-out preference accuracy; policy learners report true return.",
        "Tables: [runs.csv](runs.csv) (one row per run), [cells.csv](cells.csv) (per cell).",
        "",
    ]
    if tables:
        lines += ["## Label model × learner assumption", ""]
        for _name, table in tables:
            by = {(r["label_model"], r["assumption"]): r for r in table}
            md_rows = []
            for model in LABEL_MODELS:
                row = {"labels from": model}
                for a in ASSUMPTIONS:
                    row[f"assumes {a}"] = _fmt_ci(by[(model, a)]) if (model, a) in by else "—"
                md_rows.append(row)
            metric = table[0]["metric"]
            lines += [f"**{metric}** at {table[0]['label_budget']} labels "
                      "(pooled over tasks, noise and learners; bootstrap stratified by task):", ""]
            lines += [_md_table(md_rows, list(md_rows[0])), ""]
    headline = [
        c for c in cells
        if c["metric"] == (ACCURACY_METRIC if c["learner"] in FIT_ONLY_LEARNERS else RETURN_METRIC)
    ]
    if headline:
        lines += ["## Headline metric per cell", ""]
        md_rows = [{**{k: c[k] for k in AXES}, "metric": c["metric"], "n": c["n"],
                    "IQM [95% CI]": _fmt_ci(c)} for c in headline]
        lines += [_md_table(md_rows, list(md_rows[0])), ""]
    if figures:
        lines += ["## Figures", ""]
        for title, png in figures:
            pdf = png[:-4] + ".pdf"
            lines += [f"### {title}", "", f"![{title}]({png})", "", f"[PDF]({pdf})", ""]
    failed = [r for r in rows if any(isinstance(v, float) and math.isnan(v) for v in r.values())]
    if failed:
        lines += [f"{len(failed)} run(s) have NaN metrics (see runs.csv).", ""]
    return "\n".join(lines)
