"""The preparation report: per-feature vocabulary size, OOV and missing rates, label stats."""

from __future__ import annotations

from ctr.datasets.encode import Tally
from ctr.schema import Schema


def build_report(schema: Schema, tallies: dict[str, Tally], skipped: dict[str, int]) -> dict:
    """Summarises a preparation run as plain data (saved as report.json)."""
    splits = {
        split: {
            "rows": t.rows,
            "positive_rate": t.positives / t.rows if t.rows else 0.0,
            "skipped_bad_rows": skipped.get(split, 0),
        }
        for split, t in tallies.items()
    }
    features = []
    for info in schema.features:
        name = info.spec.name
        values = sum(t.values[name] for t in tallies.values())
        rows = sum(t.rows for t in tallies.values())
        held_out = sum(tallies[s].values[name] for s in ("valid", "test"))
        held_out_oov = sum(tallies[s].oov[name] for s in ("valid", "test"))
        features.append(
            {
                "name": name,
                "kind": info.spec.kind,
                "vocab_size": info.vocab_size if info.spec.is_sparse else None,
                "table": info.table or None,
                "oov_rate": held_out_oov / held_out if info.spec.is_sparse and held_out else 0.0,
                "missing_rate": sum(t.missing[name] for t in tallies.values()) / rows if rows else 0.0,
                "values_per_row": values / rows if rows else 0.0,
            }
        )
    return {"splits": splits, "features": features}


def format_report(report: dict) -> str:
    """A fixed-width text table of the report, for ``ctr data prepare``."""
    lines = [f"{'feature':<24}{'kind':<13}{'vocab':>10}{'oov%':>8}{'missing%':>10}{'len':>7}"]
    for f in report["features"]:
        vocab = "" if f["vocab_size"] is None else str(f["vocab_size"])
        lines.append(
            f"{f['name']:<24}{f['kind']:<13}{vocab:>10}{100 * f['oov_rate']:>8.2f}"
            f"{100 * f['missing_rate']:>10.2f}{f['values_per_row']:>7.2f}"
        )
    lines.append("")
    for split, s in report["splits"].items():
        lines.append(
            f"{split:<6} rows {s['rows']:>10,}   positive rate {s['positive_rate']:.4f}"
            f"   skipped bad rows {s['skipped_bad_rows']:,}"
        )
    return "\n".join(lines)
