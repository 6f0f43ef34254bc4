"""Keeps the compression benchmark's finished cells and grows its tables in the docs.

A grid's out folder (``runs/...``) does not outlive its machine, so its finished cells are
kept in ``benchmarks/results/compression_<workload>.csv`` (rows of ``ctr bench
compression``'s ``results.csv``). For one workload this script

1. merges a grid's ``results.csv`` into that file (``--collect``; a cell's newer row wins);
2. rewrites the workload's table in docs/benchmarks/compression.md: each (method, budget)
   whose seeds have all finished, or that the method refuses, gets its lines from the file;
   a group the file does not hold keeps its lines (cells measured before the file existed);
3. redraws the workload's plot from the merged table.

To resume a grid elsewhere, copy the file to the grid's out folder as ``results.csv``: the
grid skips the cells it holds.

    python -m benchmarks.compression_tables beauty --collect runs/bench-beauty-v3/results.csv
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from ctr.atomic import atomic_write
from ctr.bench.compression import Results, cell_groups, markdown, plot_points

METHODS = ("full,hash,unified,optembed,dnis,compo,robe,dhe,ttrec,adaptemb,mgqe,dedup,mde,autodim,deeplight,pep,"
           "autosrh,int8,int16,alpt,dpq").split(",")
BUDGETS = ["full", "0.5", "0.1", "0.01", "0.001"]
DOC = Path("docs/benchmarks/compression.md")
RESULTS = Path("benchmarks/results")


@dataclass(frozen=True)
class Workload:
    """One grid: its seeds, its table's marker in ``DOC`` and its plot."""

    seeds: int
    marker: str
    png: Path


WORKLOADS = {
    "beauty": Workload(3, "beauty-table", Path("docs/benchmarks/compression_beauty.png")),
    "criteo": Workload(1, "criteo-table", Path("docs/benchmarks/compression_criteo.png")),
}


def collect(kept: Results, grid: Path) -> None:
    """Adds every row of the grid's ``results.csv`` to ``kept``, replacing its cell's row."""
    for row in Results(grid).rows:
        key = Path(row["run_dir"]).name
        kept.rows = [r for r in kept.rows if Path(r["run_dir"]).name != key]
        kept.add(row)


def complete(rows: list[dict[str, str]], seeds: int) -> list[dict[str, str]]:
    """Rows of the (method, budget) groups with ``seeds`` finished runs or a refusal, at a
    budget the table has a column of (``BUDGETS``), in the order of ``METHODS`` and ``BUDGETS``."""
    done = [
        group for (_, budget), group in cell_groups(rows).items()
        if budget in BUDGETS and (sum(r["status"] == "ok" for r in group) >= seeds
                                  or all(r["status"].startswith(("cannot", "not run")) for r in group))
    ]
    return [row for group in sorted(done, key=lambda g: _place(g[0]["method"], g[0]["budget"] or "full"))
            for row in group]


def without_column(rows: list[dict[str, str]]) -> list[str]:
    """``method at budget`` of each group of ``rows`` at a budget the table has no column of
    (kept in the file, left out of the table)."""
    return [f"{method} at {budget}" for method, budget in cell_groups(rows) if budget not in BUDGETS]


def _place(method: str, budget: str) -> tuple[int, int]:
    return METHODS.index(method) if method in METHODS else len(METHODS), BUDGETS.index(budget)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse(block: str) -> tuple[dict[str, dict[str, str]], dict[tuple[str, str], str]]:
    """The summary (method → budget → AUC cell) and detail ((method, budget) → line) of one
    ``markdown`` block."""
    summary_part, _, detail_part = block.strip().partition("\n\n")
    lines = summary_part.splitlines()
    columns = [c.removeprefix("budget ").replace("full size", "full") for c in _cells(lines[0])[1:]]
    summary = {}
    for line in lines[2:]:
        method, *values = _cells(line)
        summary[method] = {budget: value for budget, value in zip(columns, values) if value}
    details = {tuple(_cells(line)[:2]): line for line in detail_part.partition("\n\n")[0].splitlines()[2:]}
    return summary, details


def merge(old: str, new: str) -> tuple[str, dict[tuple[str, str], str]]:
    """``new``'s groups over ``old``'s: the merged block and its detail lines."""
    summary, details = parse(old) if old.strip() else ({}, {})
    new_summary, new_details = parse(new) if new.strip() else ({}, {})
    for method, values in new_summary.items():
        summary.setdefault(method, {}).update(values)
    details.update(new_details)
    methods = sorted(summary, key=lambda m: _place(m, "full"))
    lines = ["| method | full size | " + " | ".join(f"budget {b}" for b in BUDGETS[1:]) + " |", "|---" * 6 + "|"]
    lines += [f"| {m} | " + " | ".join(summary[m].get(b, "") for b in BUDGETS) + " |" for m in methods]
    ordered = sorted(details, key=lambda key: _place(*key))
    header = new.strip().partition("\n\n")[2].splitlines()[:2] or old.strip().partition("\n\n")[2].splitlines()[:2]
    block = "\n".join(lines) + "\n\n" + "\n".join(header + [details[key] for key in ordered]) + "\n"
    return block, {key: details[key] for key in ordered}


def points(details: dict[tuple[str, str], str]) -> dict[str, list[tuple[float, float, float]]]:
    """(embedding bytes, test AUC mean, sd) per method from detail lines (refusals left out)."""
    found: dict[str, list[tuple[float, float, float]]] = {}
    for (method, _), line in details.items():
        cells = _cells(line)
        if cells[-1] == "0":
            continue
        mean, _, sd = cells[4].partition(" ± ")
        found.setdefault(method, []).append((float(cells[2].replace(",", "")), float(mean), float(sd or 0)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--collect", type=Path, action="append", default=[], help="a grid's results.csv to keep")
    args = parser.parse_args()
    workload = WORKLOADS[args.workload]
    kept = Results(RESULTS / f"compression_{args.workload}.csv")
    for grid in args.collect:
        collect(kept, grid)
    rows = complete(kept.rows, workload.seeds)
    unshown = without_column(kept.rows)
    if unshown:
        print(f"{args.workload}: kept, but no column of the table for {', '.join(unshown)} (its budgets: "
              f"{', '.join(BUDGETS[1:])})")
    pattern = re.compile(f"(<!-- {workload.marker} -->\n)(.*?)(<!-- /{workload.marker} -->)", re.S)
    text = DOC.read_text()
    found = pattern.search(text)
    if found is None:
        raise SystemExit(f"{DOC}: no <!-- {workload.marker} --> ... <!-- /{workload.marker} --> markers")
    block, details = merge(found.group(2), markdown(rows) if rows else "")
    atomic_write(DOC, text[:found.start(2)] + block + text[found.end(2):])
    plot_points(points(details), workload.png)
    print(f"{args.workload}: {len(kept.rows)} cells kept, {len(details)} groups in {DOC}, plot {workload.png}")


if __name__ == "__main__":
    main()
