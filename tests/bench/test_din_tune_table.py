import csv

import pytest

from benchmarks.din_tune_table import FORMS, table

COLUMNS = ["point", "settings", "seed", "monitor", "valid", "failed", "test_auc", "test_gauc", "test_logloss",
           "run_dir"]


def write(folder, rows):
    folder.mkdir(parents=True)
    with (folder / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows({**dict.fromkeys(COLUMNS, ""), **row} for row in rows)


def test_the_table_reports_each_forms_chosen_point_over_its_seeds(tmp_path):
    for form in FORMS:
        write(tmp_path / "Beauty" / form, [
            {"point": "p00", "settings": "a=1", "seed": "1", "valid": "0.80", "test_auc": "0.70", "test_gauc": "0.60"},
            {"point": "p01", "settings": "a=2", "seed": "1", "valid": "0.81", "test_auc": "0.72", "test_gauc": "0.62"},
            {"point": "p01", "settings": "a=2", "seed": "2", "valid": "0.79", "test_auc": "0.74", "test_gauc": "0.64"},
        ])
    text = table(tmp_path)
    assert "| paper | 0.7300 ± 0.0141 | 0.6300 ± 0.0141 |" in text
    assert "- Beauty, deepfm (2 seeds): `a=2`" in text and "Toys" not in text


def test_an_unfinished_tuning_is_named(tmp_path):
    write(tmp_path / "Beauty" / "paper", [{"point": "p00", "settings": "a=1", "seed": "1", "valid": "0.8",
                                           "test_auc": "0.7", "test_gauc": "0.6"}])
    with pytest.raises(SystemExit, match="paper/results.csv: no point trained over several seeds yet"):
        table(tmp_path)


def test_a_form_not_tuned_is_left_out(tmp_path):
    """``FORMS=din_authors:authors_inference bash benchmarks/din_tune.sh`` tunes one form."""
    write(tmp_path / "Beauty" / "authors_inference", [
        {"point": "p00", "settings": "a=1", "seed": "1", "valid": "0.80", "test_auc": "0.70", "test_gauc": "0.60"},
        {"point": "p00", "settings": "a=1", "seed": "2", "valid": "0.80", "test_auc": "0.72", "test_gauc": "0.62"},
    ])
    rows = [line for line in table(tmp_path).splitlines() if line.startswith("| ") and "test AUC" not in line]
    assert rows == ["| authors_inference | 0.7100 ± 0.0141 | 0.6100 ± 0.0141 |"]


def test_a_form_tuned_on_some_datasets_only_is_named(tmp_path):
    rows = [{"point": "p00", "settings": "a=1", "seed": s, "valid": "0.8", "test_auc": "0.7", "test_gauc": "0.6"}
            for s in ("1", "2")]
    write(tmp_path / "Beauty" / "paper", rows)
    write(tmp_path / "Toys_and_Games" / "ctr", rows)
    write(tmp_path / "Toys_and_Games" / "paper", rows)
    with pytest.raises(SystemExit, match="ctr is tuned on Toys_and_Games only"):
        table(tmp_path)


def test_a_seed_of_the_chosen_point_that_failed_is_named_not_a_traceback(tmp_path):
    """A chosen point's seed whose loss diverged has an empty test AUC (``failed`` says why):
    the table raised ValueError converting '' to a float; ctr tune's own table gives the mean
    of the others and names it."""
    for form in FORMS:
        write(tmp_path / "Beauty" / form, [
            {"point": "p00", "settings": "a=1", "seed": "1", "valid": "0.80", "test_auc": "0.70", "test_gauc": "0.60"},
            {"point": "p00", "settings": "a=1", "seed": "2", "valid": "0.82", "test_auc": "0.74", "test_gauc": "0.64"},
            {"point": "p00", "settings": "a=1", "seed": "3", "failed": "training: the loss is not finite at step 9"},
        ])
    text = table(tmp_path)
    assert "| paper | 0.7200 ± 0.0283 | 0.6200 ± 0.0283 |" in text
    assert "- Beauty, paper (2 of 3 seeds; seed 3 failed: training: the loss is not finite at step 9): `a=1`" in text


def test_an_empty_group_auc_of_a_seed_that_trained_is_a_dash(tmp_path):
    """A seed that trained with no test group AUC (an empty ``test_gauc``): float('') raised
    ValueError; ctr tune's table gives "–" for it."""
    for form in FORMS:
        write(tmp_path / "Beauty" / form, [
            {"point": "p00", "settings": "a=1", "seed": "1", "valid": "0.80", "test_auc": "0.70", "test_gauc": "0.60"},
            {"point": "p00", "settings": "a=1", "seed": "2", "valid": "0.82", "test_auc": "0.74"},
        ])
    assert "| paper | 0.7200 ± 0.0283 | – |" in table(tmp_path)
