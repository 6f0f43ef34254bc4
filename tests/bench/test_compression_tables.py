import pytest

from benchmarks.compression_tables import collect, complete, merge, points
from ctr.bench.compression import Results, markdown
from ctr.bench.grid import Cell
from ctr.errors import UserError


def row(method, budget, seed, status="ok", auc="0.70", size="100"):
    return {"method": method, "budget": budget, "seed": str(seed), "status": status, "test_auc": auc,
            "test_logloss": "0.5", "train_seconds": "3", "embedding_bytes": size, "memory_ratio": "0.5",
            "inference_rows_per_s": "1000", "peak_rss_mib": "900", "run_dir": f"runs/x/{method}-{budget}-s{seed}"}


def test_collect_keeps_one_row_per_cell_the_newest(tmp_path):
    kept = Results(tmp_path / "kept.csv")
    kept.add(row("hash", "0.5", 0, status="failed (exit 1)"))
    grid = Results(tmp_path / "grid.csv")
    grid.add(row("hash", "0.5", 0, auc="0.71"))
    grid.add(row("hash", "0.5", 1, auc="0.73"))
    collect(kept, grid.path)
    again = Results(tmp_path / "kept.csv")
    assert [(r["seed"], r["status"], r["test_auc"]) for r in again.rows] == [("0", "ok", "0.71"), ("1", "ok", "0.73")]
    assert again.done(Cell("hash", 0.5, 1))  # the grid skips a kept cell


def test_only_groups_with_every_seed_or_a_refusal_are_complete():
    rows = [row("robe", "0.1", 0), row("hash", "0.5", 0), row("hash", "0.5", 1),
            row("hash", "0.001", 0, status="cannot reach (min 0.002)", auc="")]
    assert [(r["method"], r["budget"]) for r in complete(rows, seeds=2)] == [
        ("hash", "0.5"), ("hash", "0.5"), ("hash", "0.001")]


def test_merge_replaces_measured_groups_keeps_the_others_and_orders_by_method_and_budget():
    old = markdown([row("full", "", 0, auc="0.78", size="400"), row("robe", "0.5", 0, auc="0.60")])
    new = markdown([row("hash", "0.01", 0, auc="0.65", size="4"), row("robe", "0.5", 0, auc="0.75", size="200")])
    block, details = merge(old, new)
    summary = block.split("\n\n")[0].splitlines()
    assert summary[2:] == ["| full | 0.7800 |  |  |  |  |", "| hash |  |  |  | 0.6500 |  |",
                           "| robe |  | 0.7500 |  |  |  |"]
    assert list(details) == [("full", "full"), ("hash", "0.01"), ("robe", "0.5")]
    assert points(details) == {"full": [(400.0, 0.78, 0.0)], "hash": [(4.0, 0.65, 0.0)], "robe": [(200.0, 0.75, 0.0)]}
    assert merge(block, "")[0] == block  # merging nothing changes nothing


def test_a_run_over_its_budget_is_not_credited_under_it():
    """A plugin method that ignores its budget was shown under "budget 0.1" at full size."""
    from ctr.bench.compression import _budget_status

    assert _budget_status(Cell("mine", 0.1, 0), 1.0) == "over budget (1.0000 × full)"
    assert _budget_status(Cell("mine", 0.1, 0), 0.1) == "ok"
    assert _budget_status(Cell("full", None, 0), 1.0) == "ok"
    table = markdown([row("mine", "0.1", 0, status="over budget (1.0000 × full)")])
    assert "| mine | 0.1 | – | – | over budget (1.0000 × full) |" in table


def test_a_finished_row_without_its_auc_is_a_damaged_file(tmp_path):
    """An ok row whose test AUC was emptied (a hand edit) was a traceback of float('') when
    the table was built; a failed row has none to hold."""
    kept = Results(tmp_path / "results.csv")
    kept.add(row("hash", "0.5", 0, status="failed (exit 1)", auc=""))
    kept.add(row("hash", "0.5", 1, auc=""))
    with pytest.raises(UserError, match=r"results\.csv:3: column test_auc: not a number: '' \(a damaged results file"):
        Results(tmp_path / "results.csv")


def test_merge_reads_the_detail_lines_only_of_a_table_that_names_unfigured_cells():
    new = markdown([row("hash", "0.5", 0), row("hash", "0.5", 1, status="failed (exit 1)", auc="")])
    assert "Not in the figures above:" in new
    assert list(merge("", new)[1]) == [("hash", "0.5")]


def test_peak_memory_is_labelled_mib_and_an_older_results_file_reads(tmp_path):
    """The peak resident memory is ``ru_maxrss`` KiB / 1024: MiB, which the table called MB
    (and results.csv ``peak_rss_mb``); a results.csv or bench.json written under the old name
    is read as before."""
    from ctr.bench.compression import COLUMNS, peak_mib

    assert "| test rows/s | peak memory MiB | seeds |" in markdown([row("hash", "0.5", 0)])
    assert "| 1,000 | 900 | 1 |" in markdown([row("hash", "0.5", 0)])
    older = tmp_path / "results.csv"
    header = ",".join("peak_rss_mb" if c == "peak_rss_mib" else c for c in COLUMNS)
    older.write_text(f"{header}\nhash,0.5,0,ok,0.7,0.5,0.6,100,200,0.5,3,0.5,1000,900.5,runs/x/hash-0.5-s0\n")
    (kept,) = Results(older).rows
    assert kept["peak_rss_mib"] == "900.5"
    (tmp_path / "bench.json").write_text('{"peak_rss_mb": 512.25}\n')
    assert peak_mib(tmp_path) == 512.25
    (tmp_path / "bench.json").write_text('{"peak_rss_mib": 600.0}\n')
    assert peak_mib(tmp_path) == 600.0
    (tmp_path / "bench.json").unlink()
    assert peak_mib(tmp_path) is None


def test_the_count_of_cells_says_how_many_finished_failed_and_were_refused():
    """"5 runs in results.csv" counted the cells a method refused (never run) and those that
    failed as runs."""
    from ctr.bench.compression import tally

    rows = [row("full", "", 0), row("hash", "0.5", 0), row("hash", "0.001", 0, status="cannot reach (min 0.006)"),
            row("robe", "0.001", 0, status="not run: compute (9 GFLOP forward per 4096 ids)"),
            row("robe", "0.5", 0, status="error: embedding.block: 3 must divide dim 8"),
            row("mine", "0.5", 0, status="over budget (1.0000 × full)")]
    assert tally(rows) == "6 cells (2 finished, 1 over its budget, 1 failed, 2 not run: refused by their method)"
    assert tally(rows[:1]) == "1 cell (1 finished)"


def test_a_group_at_a_budget_the_table_has_no_column_of_is_left_out_not_a_traceback():
    """A grid collected with ``--budgets 0.05`` (or 1): building the table raised ValueError
    ``'0.05' is not in list`` after its rows were kept, so every later run of the script failed
    until they were deleted by hand."""
    from benchmarks.compression_tables import without_column

    rows = [row("hash", "0.05", 0), row("hash", "0.5", 0), row("hash", "1.0", 0)]
    assert [(r["method"], r["budget"]) for r in complete(rows, seeds=1)] == [("hash", "0.5")]
    assert without_column(rows) == ["hash at 0.05", "hash at 1.0"]
