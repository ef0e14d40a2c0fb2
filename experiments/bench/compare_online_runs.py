"""Compare two `prefrl bench online` result folders row by row: IQMs and the difference.

    python experiments/bench/compare_online_runs.py NEW_DIR OLD_DIR [--rows true online-pr-1000]

For each task and row present in both, the IQM of the final returns in each folder and a
95 % percentile-bootstrap interval on IQM(new) − IQM(old) (prefrl.evaluation.difference_ci;
the two folders are independent samples: the physics is chaotic, so even the same seed on
other code or another CPU is a new draw). Writes NEW_DIR/compare.json; ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefrl.evaluation import difference_ci, iqm


def _returns(folder: Path) -> dict[tuple[str, str], dict[int, float]]:
    out: dict[tuple[str, str], dict[int, float]] = {}
    for path in sorted(folder.glob("runs/*/*/seed*.json")):
        record = json.loads(path.read_text())
        out.setdefault((record["task"], record["row"]), {})[int(record["seed"])] = float(
            record["final_return"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new")
    parser.add_argument("old")
    parser.add_argument("--rows", nargs="*", default=None)
    args = parser.parse_args()
    new, old = _returns(Path(args.new)), _returns(Path(args.old))
    table = []
    for key in sorted(new.keys() & old.keys()):
        if args.rows and key[1] not in args.rows:
            continue
        a, b = list(new[key].values()), list(old[key].values())
        point, low, high = difference_ci(a, b)
        table.append({"task": key[0], "row": key[1], "new_iqm": iqm(a), "old_iqm": iqm(b),
                      "new_seeds": sorted(new[key]), "old_seeds": sorted(old[key]),
                      "difference": point, "ci95": [low, high],
                      "new_returns": a, "old_returns": b})
    result = {"bench": "compare_online_runs", "new": args.new, "old": args.old,
              "table": table}
    from prefrl.io import atomic_write_json

    atomic_write_json(Path(args.new) / "compare.json", result)
    print(json.dumps({"bench": "compare_online_runs", "rows": [
        {k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()
         if k in ("task", "row", "new_iqm", "old_iqm", "difference")}
        | {"ci95": [round(x, 1) for x in r["ci95"]]} for r in table]}))


if __name__ == "__main__":
    main()
