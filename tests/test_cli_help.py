"""``ctr <command> --help`` explains every argument, and the default of each that has one."""

import argparse

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
    for name, parser in _commands(cli._parser()):
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
