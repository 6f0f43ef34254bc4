"""``ctr --version`` names the installed package's version (pyproject reads it from
``ctr.__version__``, so the two cannot disagree)."""

import importlib.metadata

import pytest

from ctr import cli


def test_version_is_the_installed_packages(capsys):
    with pytest.raises(SystemExit) as ended:
        cli.main(["--version"])
    assert ended.value.code == 0
    assert capsys.readouterr().out == f"ctr {importlib.metadata.version('ctr')}\n"
