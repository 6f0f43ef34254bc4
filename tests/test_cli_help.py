"""``ctr <command> --help`` explains every argument, and the default of each that has one."""

import argparse
import re

import pytest

from ctr import cli


def _commands(parser: argparse.ArgumentParser, name: str = "ctr"):  # noqa: ANN202 (an iterator of pairs)
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _commands(subparser, f"{name} {sub}")


def test_every_argument_has_help_naming_its_default():
    """`ctr eval --help` listed run_dir and --split bare, `ctr tune --help` its --seeds without
    the 3 a user gets."""
    missing = []
    for name, parser in _commands(cli.build_parser(cli._handlers())):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            label = f"{name} {action.option_strings[-1] if action.option_strings else action.dest}"
            if not action.help:
                missing.append(f"{label}: no help")
            elif (isinstance(action.default, (int, float, str)) and not isinstance(action.default, bool)
                  and action.default != "" and "default" not in action.help):
                missing.append(f"{label}: default {action.default!r} not in its help")
    assert not missing, "\n".join(missing)


def test_the_default_a_help_names_is_argparses():
    """A help's ``default X`` (``--seeds``: 3, ``--budgets``: 0.5,0.1) is the value argparse gives."""
    wrong = []
    for name, parser in _commands(cli.build_parser(cli._handlers())):
        for action in parser._actions:
            written = re.search(r"\bdefault:? ([^\s;)]+)", action.help or "")
            if written is None or action.default in (None, "", []) or isinstance(action.default, bool):
                continue
            text, default = written.group(1), action.default
            if text not in (str(default), f"{default:g}" if isinstance(default, (int, float)) else None):
                wrong.append(f"{name} {action.option_strings[-1]}: help says default {text}, argparse gives {default!r}")
    assert not wrong, "\n".join(wrong)


def test_the_default_out_folder_a_help_names_is_from_the_recipe_files_name():
    """`ctr bench compression --help` said runs/bench-<recipe name> (the recipe's ``name:``),
    while the command names the folder after the recipe file, as `ctr tune --help` says."""
    helps = {name: action.help for name, parser in _commands(cli.build_parser(cli._handlers())) for action in parser._actions
             if "--out" in action.option_strings}
    assert "(default runs/bench-<recipe file name>)" in helps["ctr bench compression"]
    assert "(default runs/tune-<recipe file name>)" in helps["ctr tune"]


@pytest.mark.parametrize("argv, choices", [
    ([], "{train,eval,plan,predict,export,tune,models,data,bench}"),
    (["data"], "{prepare,clean,synth}"),
    (["bench"], "{kernels,compression,train}"),
])
def test_a_missing_command_is_named_by_its_choices(capsys, argv, choices):
    """`ctr data` said 'the following arguments are required: data_command', a name no user types."""
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: the following arguments are required: {choices}")


def test_the_help_of_a_file_to_read_or_score_names_what_is_taken():
    """`ctr predict --help` called a .tsv score file CSV (it is tab-separated), and `ctr eval
    --help` and `ctr predict --help` named a file where a folder of them is read too."""
    helps = {(name, action.dest): action.help for name, parser in _commands(cli.build_parser(cli._handlers()))
             for action in parser._actions}
    assert helps[("ctr predict", "out")].startswith("scores: CSV (.csv), TSV (.tsv) or parquet (any other name)")
    assert "file or folder" in helps[("ctr predict", "input")] and "file or folder" in helps[("ctr eval", "data")]
