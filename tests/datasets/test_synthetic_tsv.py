import gzip
import logging
import re
from pathlib import Path

import pyarrow as pa
import pytest

from ctr.cli import main
from ctr.datasets.criteo import CriteoConfig, CriteoDataset


def test_synth_writes_dac_tsv_that_the_criteo_reader_reads(tmp_path, capsys):
    out = tmp_path / "day.tsv"
    assert main(["data", "synth", str(out), "--rows", "3000", "--vocab-scale", "0.01", "--seed", "5"]) == 0
    assert "wrote 3,000 rows" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert len(lines) == 3000 and all(line.count("\t") == 39 for line in lines)
    rows = pa.Table.from_batches(list(CriteoDataset(CriteoConfig(path=str(out))).streams()["all"]()))
    assert rows.column("__problem__").null_count == 3000
    assert set(rows.column("label").to_pylist()) == {"0", "1"}
    assert 0.05 < rows.column("I1").null_count / 3000 < 0.15  # missing counts are empty fields
    assert all(len(token) == 8 for token in rows.column("C1").to_pylist())
    again = tmp_path / "again.tsv"
    main(["data", "synth", str(again), "--rows", "3000", "--vocab-scale", "0.01", "--seed", "5"])
    assert again.read_bytes() == out.read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))


def test_synth_of_one_row_says_row(tmp_path, capsys):
    """`--rows 1` said "wrote 1 rows"."""
    assert main(["data", "synth", str(tmp_path / "day.tsv"), "--rows", "1", "--vocab-scale", "0.01"]) == 0
    assert capsys.readouterr().out == f"wrote 1 row to {tmp_path / 'day.tsv'}\n"
    assert len((tmp_path / "day.tsv").read_text().splitlines()) == 1


def test_synth_to_a_gz_name_writes_gzip_data(tmp_path, capsys):
    """``ctr data synth day_0.gz`` wrote plain text under the gzip name (``zcat`` refused it)."""
    plain, packed = tmp_path / "day.tsv", tmp_path / "day_0.gz"
    for out in (plain, packed):
        assert main(["data", "synth", str(out), "--rows", "500", "--vocab-scale", "0.01", "--seed", "5"]) == 0
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    assert main(["data", "synth", str(tmp_path / "big.gz"), "--rows", str(10**15)]) == 2  # at least 1 byte in 1032
    assert "rows take at least 2.4e+05 GB, more than the " in capsys.readouterr().err


def test_synth_to_a_name_of_gzip_in_capitals_writes_gzip_data(tmp_path):
    """``ctr data synth day_0.GZ`` wrote plain text under the gzip name, as ``day_0.gz`` once did."""
    assert main(["data", "synth", str(tmp_path / "day_0.GZ"), "--rows", "5", "--vocab-scale", "0.01"]) == 0
    assert len(gzip.decompress((tmp_path / "day_0.GZ").read_bytes()).splitlines()) == 5


@pytest.mark.parametrize("name", ["day.tsv.bz2", "day.tsv.xz", "day.tsv.zst", "day.zip"])
def test_synth_to_a_name_of_another_compression_is_refused(tmp_path, capsys, name):
    """``ctr data synth day.tsv.bz2`` wrote plain text under the bzip2 name (``bzcat`` refused it)."""
    assert main(["data", "synth", str(tmp_path / name), "--rows", "5", "--vocab-scale", "0.01"]) == 2
    plain = name.rpartition(".")[0]
    assert capsys.readouterr().err == (f"ctr: error: {tmp_path / name}: synthetic rows are written plain or "
                                       f"gzip-compressed (*.gz); name it {plain} or {plain}.gz\n")
    assert list(tmp_path.iterdir()) == []


def test_synth_to_an_existing_file_of_another_compression_refuses_the_name_first(tmp_path, capsys):
    """``ctr data synth existing.bz2`` said "exists (give --force ...)", then refused the name
    once --force was given."""
    existing = tmp_path / "day.tsv.bz2"
    existing.write_text("kept")
    assert main(["data", "synth", str(existing), "--rows", "5", "--vocab-scale", "0.01"]) == 2
    assert capsys.readouterr().err == (f"ctr: error: {existing}: synthetic rows are written plain or "
                                       "gzip-compressed (*.gz); name it day.tsv or day.tsv.gz\n")
    assert existing.read_text() == "kept"


def test_synth_without_a_bar_logs_the_rows_written(tmp_path, monkeypatch, caplog):
    """With stderr not a terminal (a log file, a pipe) `ctr data synth --rows 1000000` printed
    nothing for 22 s (a Criteo day's 45M rows: many minutes): it logs the rows written every
    PROGRESS_LOG_SECONDS (here 0: every chunk of rows), as preparing data does."""
    from ctr.datasets import progress

    monkeypatch.setattr(progress, "PROGRESS_LOG_SECONDS", 0.0)
    caplog.set_level(logging.INFO)
    assert main(["data", "synth", str(tmp_path / "day.tsv"), "--rows", "3000", "--vocab-scale", "0.01"]) == 0
    written = [m for m in caplog.messages if "rows written" in m]
    assert written and re.fullmatch(r"data synth: 3,000 rows written \([\d,]+ rows/s\)", written[-1])


def test_synth_bad_arguments_are_user_errors(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "x.tsv"), "--rows", "0"]) == 2
    assert "ctr: error: --rows: " in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "no" / "x.tsv"), "--rows", "5"]) == 2


@pytest.mark.parametrize("flag, value, message", [
    ("--rows", "-5", "--rows: must be a finite number > 0, got -5"),
    ("--seed", "-1", "--seed: must be >= 0, got -1"),
    ("--vocab-scale", "-1", "--vocab-scale: must be a finite number > 0, got -1.0"),
])
def test_a_bad_flag_is_named_as_typed(tmp_path, capsys, flag, value, message):
    """`--vocab-scale -1` said `data synth: vocab_scale must be ...`, naming a recipe key the
    command has not: the error names the flag."""
    args = {"--rows": "10", flag: value}
    assert main(["data", "synth", str(tmp_path / "x.tsv"), *[a for pair in args.items() for a in pair]]) == 2
    assert capsys.readouterr().err.startswith(f"ctr: error: {message}")


def test_synth_to_a_place_that_takes_no_file_names_it(tmp_path, capsys):
    """OUT under a file, or in a folder where no file can be created (/proc): one line naming
    it, not a traceback of pyarrow's writer."""
    (tmp_path / "rows.tsv").write_text("x\n")
    under_file = tmp_path / "rows.tsv" / "x.tsv"
    assert main(["data", "synth", str(under_file), "--rows", "5"]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {tmp_path / 'rows.tsv'}: not a folder"
    if Path("/proc/self").is_dir():
        assert main(["data", "synth", "/proc/x.tsv", "--rows", "5"]) == 2
        assert capsys.readouterr().err.startswith("ctr: error: /proc/x.tsv: cannot be written (")


def test_synth_vocabularies_past_memory_are_refused_on_one_line(tmp_path, capsys):
    """A vocab_scale whose planted model cannot fit in memory (numpy's 'Maximum allowed size
    exceeded' or a 10 PiB allocation before), or whose sizes overflow a float, is one line."""
    for scale in ("1e12", "1e30", "1e306"):
        assert main(["data", "synth", str(tmp_path / "x.tsv"), "--rows", "5", "--vocab-scale", scale]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"ctr: error: --vocab-scale: {float(scale):g} gives ") and "GiB" in err  # the flag
        assert "\n" not in err and err.endswith("; lower it")
    assert not list(tmp_path.iterdir())


def test_synth_rows_past_the_free_disk_are_refused_before_writing(tmp_path, capsys):
    """--rows 1e15 wrote for years until the disk was full: one line naming the folder."""
    assert main(["data", "synth", str(tmp_path / "x.tsv"), "--rows", str(10**15)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctr: error: --rows: 1,000,000,000,000,000 rows take at least 2.48e+08 GB, more than the ")
    assert err.endswith(f" GB free in {tmp_path}") and not list(tmp_path.iterdir())


def test_synth_on_a_terminal_shows_the_share_of_the_rows_written(tmp_path, capsys):
    """The bar knows the rows asked for (it counted rows without a total: no share, no time left)."""
    from ctr.datasets.synthetic import SyntheticConfig
    from ctr.datasets.synthetic_tsv import write_dac_tsv

    write_dac_tsv(tmp_path / "x.tsv", SyntheticConfig(rows=1000, vocab_scale=0.001), progress=True)
    assert "| 0/1000 [" in capsys.readouterr().err  # rows written of the 1,000 asked, then their share
