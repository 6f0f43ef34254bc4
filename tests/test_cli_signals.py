"""How ``ctr train`` ends on a signal: Lightning ends a fit with ``SystemExit`` on SIGINT and
SIGTERM (code 1 and 0), which would pass for a failed or a finished run."""

import pytest
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ctr import cli


def _sigterm_in_fit(args):
    raise SIGTERMException()  # what Lightning's fit raises on SIGTERM


def _sigint_in_fit(args):
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise SystemExit(1)  # what Lightning's fit does on Ctrl+C


@pytest.mark.parametrize("fit, code, said", [
    (_sigterm_in_fit, 143, "ctr: terminated (SIGTERM); `ctr train --resume RUN_DIR` continues from the last checkpoint"),
    (_sigint_in_fit, 130, "ctr: interrupted; `ctr train --resume RUN_DIR` continues from the last checkpoint"),
])
def test_a_signal_during_a_fit_exits_with_the_shells_code_and_says_how_to_resume(monkeypatch, capsys, fit, code, said):
    monkeypatch.setattr(cli, "_train", fit)
    assert cli.main(["train", "recipe.yaml"]) == code
    assert capsys.readouterr().err.strip() == said


def test_another_system_exit_passes_through(monkeypatch):
    def leave(args):
        raise SystemExit(3)

    monkeypatch.setattr(cli, "_train", leave)
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "recipe.yaml"])
    assert stop.value.code == 3
