"""The 2×2 study's tables: text, Markdown, and the one-line JSON summary."""

from __future__ import annotations

from typing import Any

from prefrl.studies.two_by_two import METRICS


def format_table(result: dict[str, Any]) -> str:
    """A text table: one row per cell, IQM [low, high] per metric."""
    heads = ["labels", "learner", *METRICS]
    rows = []
    for name, cell in result["cells"].items():
        label, assumption = name.split("/")
        row = [label, assumption]
        for m in METRICS:
            point, low, high = cell["iqm"][m]
            row.append(f"{point:.3f} [{low:.3f}, {high:.3f}]")
        rows.append(row)
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
    seeds = result["config"]["seeds"]
    legend = (f"IQM [95% stratified-bootstrap CI] over {seeds} seeds; acc_* = held-out "
              "accuracy vs each oracle (ties excluded); *_r vs true reward, *_adv vs A_E; "
              "epic_r = EPIC distance to r")
    return "\n".join([line(heads), *(line(r) for r in rows), legend])


METRIC_HEADS = {
    "acc_pr": "acc vs PR labels", "acc_regret": "acc vs regret labels",
    "pearson_r": "Pearson r", "spearman_r": "Spearman r", "pearson_adv": "Pearson A_E",
    "spearman_adv": "Spearman A_E", "epic_r": "EPIC(·, r) ↓",
}


def format_markdown(result: dict[str, Any], command: str = "") -> str:
    """A Markdown table (one row per cell, IQM [95 % CI] per metric), with ``command``."""
    heads = ["labels", "learner", *(METRIC_HEADS[m] for m in METRICS)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, cell in result["cells"].items():
        label, assumption = name.split("/")
        vals = [f"{p:.3f} [{lo:.3f}, {hi:.3f}]" for p, lo, hi in
                (cell["iqm"][m] for m in METRICS)]
        lines.append("| " + " | ".join([label, assumption, *vals]) + " |")
    seeds = result["config"]["seeds"]
    legend = (f"IQM [95 % stratified-bootstrap CI] over {seeds} seeds. acc = held-out preference "
              "accuracy against each oracle's labels (ties excluded); Pearson/Spearman of the "
              "learned per-step function with the true reward r and with the expert advantage "
              "A_E on the held-out segments' steps; EPIC = EPIC distance to r (0 = equivalent "
              "up to shaping and scale).")
    out = [*lines, "", legend]
    if command:
        out += ["", "Produced by:", "", "```", command, "```"]
    return "\n".join(out) + "\n"


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON line a study run ends with: the IQM of every metric, per cell."""
    iqm = {name: {m: cell["iqm"][m][0] for m in METRICS} for name, cell in result["cells"].items()}
    return {"study": "two_by_two", "task": result["config"]["task"], "iqm": iqm}
