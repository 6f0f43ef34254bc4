"""``ctr --version`` names the package's version (pyproject reads it from ``ctr.__version__``)."""

import pytest

import ctr
from ctr import cli


def test_version_names_the_packages(capsys):
    with pytest.raises(SystemExit) as ended:
        cli.main(["--version"])
    assert ended.value.code == 0
    assert capsys.readouterr().out == f"ctr {ctr.__version__}\n"
