"""A run whose metrics.json is cut short or not a report (an edit, a copy that failed) is
one line naming the file in ``ctr eval``, ``ctr predict`` and ``ctr export``, before any data
is read. (A best_checkpoint that is no path was a TypeError traceback.)"""

import pytest
import yaml

from ctr import cli
from tests.conftest import tiny_recipe


@pytest.mark.parametrize("text", [b"", b'{\n  "valid": {\n    "auc": 0.5', b"[]", b"null", b"\xff\xfe",
                                  b'{"best_checkpoint": 5}', b'{"best_checkpoint": null}', b'{"best_checkpoint": ""}'],
                         ids=["empty", "cut", "list", "null", "not_utf8", "best_a_number", "best_null", "best_empty"])
@pytest.mark.parametrize("command", [["eval", "{run}"], ["predict", "{run}", "{run}/rows.csv", "--out", "{tmp}/s.csv"],
                                     ["export", "{run}", "--out", "{tmp}/model.pt2"]])
def test_a_broken_metrics_json_is_one_line_naming_it(tmp_path, capsys, text, command):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    (run / "metrics.json").write_bytes(text)
    args = [arg.format(run=run, tmp=tmp_path) for arg in command]
    assert cli.main(args) == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith(f"ctr: error: {run / 'metrics.json'}: not a readable metrics.json") and "\n" not in said
