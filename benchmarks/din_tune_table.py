"""The table of ``benchmarks/din_tune.sh``: each model form's chosen settings over its seeds,
one row per form, a column pair (test AUC, test group AUC: mean ± sample sd) per dataset.

    .venv/bin/python -m benchmarks.din_tune_table runs/din-tune

Reads ``<root>/<dataset>/<form>/results.csv`` as ``ctr tune`` wrote them; the chosen point
is the one ``ctr tune`` trained over seeds (the only point with more than one seed).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ctr.metrics import mean_std

DATASETS = ("Beauty", "Toys_and_Games")
FORMS = ("paper", "authors_inference", "authors", "ctr", "deepfm")


def chosen_rows(results: Path) -> list[dict[str, str]]:
    """The rows of the point ``ctr tune`` chose (trained over its seeds)."""
    with results.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    seeds: dict[str, int] = {}
    for row in rows:
        seeds[row["point"]] = seeds.get(row["point"], 0) + 1
    chosen = [point for point, count in seeds.items() if count > 1]
    if len(chosen) != 1:
        raise SystemExit(f"{results}: no point trained over several seeds yet (is the tuning finished?)")
    return [row for row in rows if row["point"] == chosen[0]]


def spread(rows: list[dict[str, str]], key: str) -> str:
    """Mean ± sample sd of ``key`` over ``rows``; a dash where no seed trained or a seed that
    trained has no value (an empty ``test_gauc``), as ctr tune's table gives."""
    values = [row[key] for row in rows]
    if not values or not all(values):
        return "–"
    mean, std = mean_std([float(value) for value in values])
    return f"{mean:.4f} ± {std:.4f}"


def seeds_note(rows: list[dict[str, str]], trained: list[dict[str, str]]) -> str:
    """``3 seeds``, or ``2 of 3 seeds; seed 44 failed: why`` where a seed's training failed
    (its row's ``failed``: ctr tune's table names it the same way)."""
    if len(trained) == len(rows):
        return f"{len(rows)} seeds"
    failed = "; ".join(f"seed {row['seed']} failed: {row['failed']}" for row in rows if row.get("failed"))
    return f"{len(trained)} of {len(rows)} seeds; {failed}"


def table(root: Path) -> str:
    """Markdown: forms × datasets, then each form's chosen settings per dataset."""
    datasets = [d for d in DATASETS if (root / d).is_dir()]
    head = "| model | " + " | ".join(f"{d} test AUC | {d} test group AUC" for d in datasets) + " |"
    lines, settings = [head, "|---" * (1 + 2 * len(datasets)) + "|"], []
    for form in tuned_forms(root, datasets):
        cells = []
        for dataset in datasets:
            rows = chosen_rows(root / dataset / form / "results.csv")
            trained = [row for row in rows if not row.get("failed")]
            cells += [spread(trained, "test_auc"), spread(trained, "test_gauc")]
            settings.append(f"- {dataset}, {form} ({seeds_note(rows, trained)}): `{rows[0]['settings']}`")
        lines.append(f"| {form} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "Chosen on validation AUC:", *settings]) + "\n"


def tuned_forms(root: Path, datasets: list[str]) -> list[str]:
    """The forms tuned on every dataset (``FORMS=`` tunes some); one tuned on some only is an
    unfinished run of the script, named."""
    tuned = {form: [d for d in datasets if (root / d / form / "results.csv").is_file()] for form in FORMS}
    partial = [form for form, found in tuned.items() if 0 < len(found) < len(datasets)]
    if partial:
        raise SystemExit(f"{root}: {partial[0]} is tuned on {', '.join(tuned[partial[0]])} only (is the tuning finished?)")
    return [form for form, found in tuned.items() if found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the folder din_tune.sh wrote (runs/din-tune)")
    print(table(parser.parse_args(argv).root), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
