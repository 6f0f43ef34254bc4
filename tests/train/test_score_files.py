"""``ctr predict``'s CSV and TSV score files: a name or value is quoted only where it needs it,
and the file reads back to the same values."""

import csv

import pandas as pd
import pyarrow as pa
import pytest

from ctr.train.predict import _CsvWriter

MIXED = pa.table({
    "row": pa.array([0, 1, 2, 3, 4], pa.int64()),
    "user_id": ["u1", "a,b", 'say "hi"', "two\nlines", None],
    "tabbed": ["x\ty", "plain", "p", "q", "r"],
    "item_id": pa.array(["i1", "i2", "i1", "c,d", "i2"]).dictionary_encode(),
    "raw": pa.array([b"k1", b"k,2", b"k3", b"k4", b"k5"]),
    "score": [0.25, 0.5, 1e-7, 1.0, 0.75],
})


def write(path, tables, delimiter):
    writer = _CsvWriter(path, tables[0].schema, delimiter=delimiter)
    for table in tables:
        writer.write_table(table)
    writer.close()
    return path.read_text()


def test_only_the_values_that_need_quotes_are_quoted(tmp_path):
    """A value holding the delimiter, a quote or a line break made pyarrow quote every string
    of its table (each ``u1`` became ``"u1"``), and every value of a column of bytes."""
    text = write(tmp_path / "mixed.csv", [MIXED.slice(0, 2), MIXED.slice(2)], ",")
    assert text == ("row,user_id,tabbed,item_id,raw,score\n"
                    "0,u1,x\ty,i1,k1,0.25\n"
                    '1,"a,b",plain,i2,"k,2",0.5\n'
                    '2,"say ""hi""",p,i1,k3,1e-7\n'
                    '3,"two\nlines",q,"c,d",k4,1\n'
                    "4,,r,i2,k5,0.75\n")
    tsv = write(tmp_path / "mixed.tsv", [MIXED], "\t").splitlines()
    assert tsv[1:3] == ['0\tu1\t"x\ty"\ti1\tk1\t0.25', "1\ta,b\tplain\ti2\tk,2\t0.5"]


@pytest.mark.parametrize("suffix, delimiter", [("csv", ","), ("tsv", "\t")])
def test_a_score_file_reads_back_to_its_values(tmp_path, suffix, delimiter):
    path = tmp_path / f"scores.{suffix}"
    write(path, [MIXED.slice(0, 3), MIXED.slice(3)], delimiter)
    read = pd.read_csv(path, sep=delimiter)
    for name in ("row", "tabbed", "item_id", "score"):
        assert read[name].tolist() == MIXED[name].to_pylist()
    assert read["user_id"].tolist()[:4] == MIXED["user_id"].to_pylist()[:4] and pd.isna(read["user_id"][4])
    assert read["raw"].tolist() == [value.decode() for value in MIXED["raw"].to_pylist()]
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle, delimiter=delimiter))
    assert [row[1] for row in rows[1:]] == ["u1", "a,b", 'say "hi"', "two\nlines", ""]
    assert [row[3] for row in rows[1:]] == MIXED["item_id"].to_pylist() and len({len(row) for row in rows}) == 1


def test_a_header_name_is_quoted_where_it_needs_it(tmp_path):
    odd = pa.table({"a,b": [1, 2], 'say "x"': [2.5, 3.5], "plain": ["u1", "u2"]})
    assert write(tmp_path / "odd.csv", [odd], ",").splitlines() == ['"a,b","say ""x""",plain', "1,2.5,u1", "2,3.5,u2"]
    assert pd.read_csv(tmp_path / "odd.csv").to_dict("list") == odd.to_pydict()
