"""How ``ctr`` ends on what is not its own error: a signal during a fit (Lightning ends it
with ``SystemExit`` on SIGINT and SIGTERM, code 1 and 0, which would pass for a failed or a
finished run) or during a procedure stage (ctr's own ``KeyboardInterrupt`` and ``Terminated``),
a path the system refuses, a closed output pipe."""

import errno
import shlex
import sys

import pytest
import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ctr import cli
from ctr.errors import Terminated


def _sigterm_in_fit(args):
    raise SIGTERMException()  # what Lightning's fit raises on SIGTERM


def _sigint_in_procedure(args):
    raise KeyboardInterrupt  # SIGINT outside a Lightning fit (OptEmbed's search, Dedup's dedup stage)


def _sigterm_in_procedure(args):
    raise Terminated  # SIGTERM outside a Lightning fit, under sigterm_raises


def _sigint_in_fit(args):
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise SystemExit(1)  # what Lightning's fit does on Ctrl+C


def _make_run(folder):
    """``folder`` as a run stopped after its first checkpoint: what ``--resume`` continues."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "recipe.yaml").write_text("{}\n")
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")


def _in_run(stop, tmp_path):
    """``stop`` once the command trained in its run directory (``a run``, a name to quote)."""
    def stopped(args):
        args.run_dir = tmp_path / "a run"
        _make_run(args.run_dir)
        stop(args)
    return stopped


HINT = "`ctr train --resume {run}` continues from its last checkpoint, if one was written"


@pytest.mark.parametrize("fit, code, said", [
    (_sigterm_in_fit, 143, "ctr: terminated (SIGTERM); " + HINT),
    (_sigint_in_fit, 130, "ctr: interrupted; " + HINT),
    (_sigterm_in_procedure, 143, "ctr: terminated (SIGTERM); " + HINT),
    (_sigint_in_procedure, 130, "ctr: interrupted; " + HINT),
])
def test_a_signal_during_a_fit_exits_with_the_shells_code_and_says_how_to_resume(tmp_path, monkeypatch, capsys, fit,
                                                                                  code, said):
    monkeypatch.setattr(cli, "_train", _in_run(fit, tmp_path))
    assert cli.main(["train", "recipe.yaml"]) == code
    assert capsys.readouterr().err.strip() == said.format(run=shlex.quote(str(tmp_path / "a run")))


AGAIN = "; no checkpoint was written: the same command trains the run from the start"


@pytest.mark.parametrize("argv, made, held, hint", [
    (["train", "recipe.yaml"], False, [], ""), (["train", "r.yaml", "--out", "run"], False, [], ""),
    (["train", "r.yaml", "--out", "run"], True, [], ""),
    (["train", "r.yaml", "--out", "run"], True, ["run/"], ""),  # a folder the user made for it
    (["train", "r.yaml", "--out", "run"], True, ["run/", "run/recipe.yaml", "run/schema/"], AGAIN),  # no checkpoint yet
    (["train", "r.yaml", "--out", "run"], True, ["run/", "run/recipe.yaml", "run/schema/", "run/stages/",
                                                 "run/stages/initial.pt"], AGAIN),  # a multi-stage run's, no stage done
])
def test_a_signal_before_the_run_directory_is_made_says_nothing_to_resume(tmp_path, monkeypatch, capsys, argv, made,
                                                                          held, hint):
    """SIGTERM as the recipe is read (no run directory named yet), before the named one was
    made, or before anything was trained in it (an empty folder the user made for --out, the
    recipe and schema a run keeps before its first checkpoint) said `ctr train --resume
    RUN_DIR`, the placeholder itself, or a folder that --resume then called no run directory
    or refused with nothing to resume; a run that wrote its recipe but no checkpoint is
    trained again by the same command."""
    def stopped(args):
        if made:
            args.run_dir = args.out
        raise Terminated

    monkeypatch.chdir(tmp_path)
    for path in held:
        if path.endswith("/"):
            (tmp_path / path).mkdir()
        else:
            (tmp_path / path).write_text("{}\n")
    monkeypatch.setattr(cli, "_train", stopped)
    assert cli.main(argv) == 143
    assert capsys.readouterr().err.strip() == "ctr: terminated (SIGTERM)" + hint


def test_a_signal_as_a_resume_reads_its_recipe_names_the_run(tmp_path, monkeypatch, capsys):
    """The run to resume is known from the command line, before its recipe is read."""
    _make_run(tmp_path)
    monkeypatch.setattr(cli, "_train", _sigterm_in_procedure)
    assert cli.main(["train", "--resume", str(tmp_path)]) == 143
    said = "ctr: terminated (SIGTERM); " + HINT.format(run=shlex.quote(str(tmp_path)))
    assert capsys.readouterr().err.strip() == said


def test_a_signal_after_the_run_finished_says_so_not_to_resume(tmp_path, monkeypatch, capsys):
    """SIGTERM once metrics.json was written (as the run's last lines are logged) said to
    resume a run that ``--resume`` then calls finished."""
    def finished_then_terminated(args):
        args.run_dir = tmp_path
        (tmp_path / "metrics.json").write_text("{}\n")
        raise Terminated

    monkeypatch.setattr(cli, "_train", finished_then_terminated)
    assert cli.main(["train", "recipe.yaml"]) == 143
    assert capsys.readouterr().err.strip() == (f"ctr: terminated (SIGTERM); the run had finished: "
                                               f"{tmp_path / 'metrics.json'} holds its results")


@pytest.mark.parametrize("stop, code, said", [
    (_sigterm_in_fit, 143, "ctr: terminated (SIGTERM)"), (_sigint_in_procedure, 130, "ctr: interrupted"),
])
def test_a_signal_during_an_evaluation_says_no_resume(monkeypatch, capsys, stop, code, said):
    """ctr eval (a Lightning test loop) stopped by SIGTERM or Ctrl+C has nothing to resume."""
    monkeypatch.setattr(cli, "_eval", stop)
    assert cli.main(["eval", "run"]) == code
    assert capsys.readouterr().err.strip() == said


@pytest.mark.parametrize("command, handler, said", [
    (["bench", "compression", "r.yaml"], "_bench_compression",
     "the same command continues: finished cells are kept, the stopped ones resume"),
    (["tune", "r.yaml", "--grid", "train.embedding_optimizer.lr=0.01,0.1"], "_tune",
     "the same command continues: finished runs are kept, the stopped one resumes"),
])
def test_ctrl_c_during_a_command_that_resumes_says_how_to_go_on(monkeypatch, capsys, command, handler, said):
    """Ctrl+C on a benchmark said only ``ctr: interrupted`` (its SIGTERM said how to go on)."""
    monkeypatch.setattr(cli, handler, _sigint_in_procedure)
    assert cli.main(command) == 130
    assert capsys.readouterr().err.strip() == f"ctr: interrupted; {said}"


def test_another_system_exit_passes_through(monkeypatch):
    def leave(args):
        raise SystemExit(3)

    monkeypatch.setattr(cli, "_train", leave)
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "recipe.yaml"])
    assert stop.value.code == 3


@pytest.mark.parametrize("error, said", [
    (PermissionError(errno.EACCES, "Permission denied", "/runs/ro/.recipe.yaml.tmp-1"),
     "ctr: error: /runs/ro/.recipe.yaml.tmp-1: permission denied"),
    (FileExistsError(errno.EEXIST, "File exists", "afile"), "ctr: error: afile: file exists"),
])
def test_a_path_the_system_refuses_is_one_line(monkeypatch, capsys, error, said):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_train", fail)
    assert cli.main(["train", "recipe.yaml"]) == 2
    assert capsys.readouterr().err.strip() == said


def test_an_os_error_without_a_path_is_a_bug_with_its_traceback(monkeypatch):
    def fail(args):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(cli, "_train", fail)
    with pytest.raises(OSError):
        cli.main(["train", "recipe.yaml"])


def test_a_full_disk_without_a_path_is_one_line(monkeypatch, capsys):
    """A write no ctr code names (a logger's, a library's) on a full disk was a traceback."""
    def fail(args):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(cli, "_train", fail)
    assert cli.main(["train", "recipe.yaml"]) == 2
    assert capsys.readouterr().err.strip() == ("ctr: error: no space left on device on a disk this command writes to "
                                               "(its output folder, data.cache_dir)")


def test_a_closed_pipe_ends_quietly_with_sigpipes_code(monkeypatch, capfd):
    """``ctr models | head -1``: the reader left; no traceback, SIGPIPE's shell code."""
    def write_to_a_closed_pipe(args):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    silenced = []  # the real dup2 onto this process's fd 1 broke the output capture of later tests in an xdist worker
    monkeypatch.setattr(cli.os, "dup2", lambda source, target: silenced.append(target))
    monkeypatch.setattr(cli, "_train", write_to_a_closed_pipe)
    assert cli.main(["train", "recipe.yaml"]) == 141
    assert silenced == [sys.stdout.fileno()]
    assert capfd.readouterr().err == ""



@pytest.mark.parametrize("argv, argument", [
    (["predict", "run", "LOOP", "--out", "scores.parquet"], "input"),
    (["predict", "run", "rows.csv", "--out", "LOOP/scores.parquet"], "--out"),
    (["export", "run", "--out", "LOOP"], "--out"), (["train", "recipe.yaml", "--out", "LOOP/run"], "--out"),
    (["eval", "LOOP"], "run_dir"),
])
def test_a_path_in_a_symlink_loop_is_refused_naming_the_argument(tmp_path, capsys, argv, argument):
    """Path.resolve raises RuntimeError on a symlink loop (Python 3.11): it ended in a traceback."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    argv = [arg.replace("LOOP", str(tmp_path / "a")) for arg in argv]
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    looped = next(arg for arg in argv if str(tmp_path) in arg)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: argument {argument}: {looped}: a symlink loop")


@pytest.mark.parametrize("argv, argument", [
    (["predict", "run", "in\udcff.tsv", "--out", "s.csv"], "input"),
    (["predict", "run", "rows.csv", "--out", "s\udcff.csv"], "--out"),
    (["data", "synth", "s\udcff.tsv", "--rows", "5"], "out"), (["eval", "run", "--data", "in\udcff.tsv"], "--data"),
    (["tune", "r.yaml", "--grid", "seed=1,2", "--out", "t\udcff"], "--out"),
    (["train", "r.yaml", "--out", "r\udcff"], "--out"),
])
def test_a_path_whose_name_is_not_utf8_is_refused_naming_the_argument(tmp_path, monkeypatch, capsys, argv, argument):
    """A name of bytes that are not UTF-8 (a Latin-1 ``\xff``; Python's argv holds it as the
    surrogate ``\udcff``) ended in pyarrow's UnicodeEncodeError traceback as a file was read or
    written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    named = next(arg for arg in argv if "\udcff" in arg).replace("\udcff", "\\xff")
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"error: argument {argument}: {named}: a name that is not UTF-8 (byte 0xff); rename it")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("words, options", [
    (["tune"], ["--grid", "train.batch_size=256,512", "--seeds", "1"]),
    (["bench", "compression"], ["--methods", "full", "--budgets", "0.5", "--seeds", "1"]),
])
def test_a_recipe_in_a_folder_whose_name_is_not_utf8_is_read(tmp_path, words, options):
    """Python opens a recipe of any name: ``ctr tune caf\xe9/c.yaml`` ran, then was refused as
    the paths pyarrow opens are (exit 2)."""
    from tests.conftest import run_ctr, tiny_recipe

    folder = tmp_path / "caf\udce9"
    folder.mkdir()
    (folder / "c.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, data={"rows": 2000, "chunk_rows": 1000})))
    done = run_ctr(*words, folder / "c.yaml", *options, "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "results.md").exists()


@pytest.mark.parametrize("command", [["tune", "--grid", "seed=1,2"], ["bench", "compression"]])
def test_a_default_out_named_by_a_recipe_that_is_not_utf8_is_refused(tmp_path, capsys, monkeypatch, command):
    """``runs/tune-r\xe9`` (from recipe ``r\xe9.yaml``) ended in a UnicodeEncodeError traceback
    as the results naming it were written; ``--out`` is refused so, and the default now too."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r\udce9.yaml"
    recipe.write_text("name: r\n")
    words = 1 if command[0] == "tune" else 2
    assert cli.main([*command[:words], str(recipe), *command[words:]]) == 2
    kind = command[0] if command[0] == "tune" else "bench"
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: {tmp_path}/r\\xe9.yaml: a name that is not UTF-8 (byte 0xe9), which the default --out "
        f"runs/{kind}-r\\xe9 would take; give --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r\udce9.yaml"]


@pytest.mark.parametrize("argv, flag", [
    (["data", "clean", "--cache-dir", ""], "--cache-dir"), (["plan", "recipe.yaml", "--memory-per-rank", ""], "--memory-per-rank"),
])
def test_an_empty_value_is_refused_not_read_as_the_default(tmp_path, monkeypatch, capsys, argv, flag):
    """``--cache-dir "$UNSET"`` cleaned the default cache, ~/.cache/ctr; an empty size planned with the planner's."""
    monkeypatch.setenv("CTR_CACHE", str(tmp_path))  # the default cache a failing run would clean
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: argument {flag}: empty; leave the flag out for its default")


@pytest.mark.parametrize("argv, argument", [
    (["train", "recipe.yaml", "--out", ""], "--out"), (["tune", "recipe.yaml", "--grid", "a=1", "--out", ""], "--out"),
    (["bench", "compression", "recipe.yaml", "--out", ""], "--out"), (["export", "run", "--out", ""], "--out"),
    (["predict", "run", "", "--out", "s.csv"], "input"), (["eval", ""], "run_dir"),
])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch, capsys, argv, argument):
    """``ctr train r.yaml --out "$UNSET"`` wrote the run (recipe.yaml, checkpoints/, ...) into the
    current folder, and ``ctr tune`` its results.csv and runs/: Path("") is ".". """
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: argument {argument}: an empty path")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["predict", "run", "rows.csv", "--out", "scores/"], ["export", "run", "--out", "models/"],
    ["data", "synth", "rows/", "--rows", "10"], ["data", "synth", "rows/.", "--rows", "10"],
    ["export", "run", "--out", ".."],
])
def test_a_file_to_write_named_as_a_folder_is_refused(tmp_path, monkeypatch, capsys, argv):
    """``--out scores/`` (a folder that does not exist yet) wrote a file named ``scores``: the
    trailing slash was dropped with the rest of the path's text."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    name = next(arg for arg in argv if arg.endswith(("/", ".")))
    assert capsys.readouterr().err.strip().endswith(f"{name}: names a folder; name the file to write")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, argument", [
    (["train", "recipe.yaml", "--out=~/runs/a"], "out"), (["train", "--resume=~/runs/a"], "resume"),
    (["eval", "~/runs/a"], "run_dir"), (["predict", "~/runs/a", "rows.csv", "--out", "s.csv"], "run_dir"),
])
def test_a_path_argument_expands_the_home_folder(tmp_path, monkeypatch, argv, argument):
    """The shell leaves ``--out=~/runs/a`` (a ``~`` after ``=``) as it is: the run went into a
    folder named ``~`` in the current one."""
    monkeypatch.setenv("HOME", str(tmp_path))
    args = cli.build_parser(cli._handlers()).parse_args(argv)
    assert getattr(args, argument) == tmp_path / "runs" / "a"


def test_a_path_argument_naming_no_user_s_home_is_one_line(capsys):
    """``--out '~nosuchuser/a'``: expanding it raised a RuntimeError, a traceback."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "recipe.yaml", "--out", "~no-such-user-of-ctr/a"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        "error: argument --out: ~no-such-user-of-ctr/a: names the home folder of no user of this machine")


STOPPED_IN = """
import os, signal, sys
import {module} as place

def stop(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)

place.{name} = stop
from ctr.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("module, name, argv, said", [
    ("ctr.train.tune", "budget_refusal", ["tune", "r.yaml", "--grid", "train.embedding_optimizer.lr=0.01,0.1",
                                          "-o", "embedding.method=hash", "-o", "embedding.budget=0.5", "--out", "t"],
     "ctr: terminated (SIGTERM); the same command continues: finished runs are kept, the stopped one resumes"),
    ("ctr.bench.compression", "prepare_once", ["bench", "compression", "r.yaml", "--out", "b"],
     "ctr: terminated (SIGTERM); the same command continues: finished cells are kept, the stopped ones resume"),
    ("ctr.datasets", "prepare", ["plan", "r.yaml"], "ctr: terminated (SIGTERM)"),
    ("ctr.datasets", "prepare", ["data", "prepare", "r.yaml"], "ctr: terminated (SIGTERM)"),
])
def test_sigterm_while_a_command_prepares_its_data_is_one_line_and_143(tmp_path, module, name, argv, said):
    """Outside a training run (tune and bench compression ask each budget's refusal and prepare
    the data themselves; plan and data prepare prepare it), SIGTERM ended the process without
    a word, leaving its encoded copy half-written."""
    import subprocess

    import yaml

    from tests.conftest import tiny_recipe

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    done = subprocess.run([sys.executable, "-c", STOPPED_IN.format(module=module, name=name), *argv],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert (done.returncode, done.stderr.strip().splitlines()[-1:]) == (143, [said]), done.stderr[-2000:]


FIRST = """
import os, signal, sys
import ctr.cli as cli

handlers = cli._handlers

def stopped_first():
    found = handlers()
    command = found[sys.argv[1]]
    def stop_then_run(args):
        os.kill(os.getpid(), signal.SIGTERM)
        return command(args)
    found[sys.argv[1]] = stop_then_run
    return found

cli._handlers = stopped_first
cli.entry()
"""


def test_sigterm_as_ctr_train_starts_is_one_line_and_143(tmp_path):
    """Before the training took SIGTERM over (the seconds of importing torch and Lightning),
    a SIGTERM ended ``ctr train`` without a word (exit -15)."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", FIRST, "train", "r.yaml", "--out", "run"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 143 and done.stderr == "ctr: terminated (SIGTERM)\n"  # no run directory to resume
    assert list(tmp_path.iterdir()) == []


ENDED = """
import atexit, sys, time
import ctr.cli as cli

def said(args):
    print("done", flush=True)
    return 0

handlers = cli._handlers
cli._handlers = lambda: {**handlers(), "models": said}
atexit.register(time.sleep, 1.0)  # a teardown that takes its time, as torch's does (seconds)
cli.entry()
"""


def test_sigterm_once_a_command_said_its_result_ends_it_with_its_code(tmp_path):
    """After ``ctr train``'s test line, the interpreter's teardown of torch took seconds, in
    which a SIGTERM ended the process without a word (exit -15)."""
    import signal
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", ENDED, "models"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert child.stdout.readline() == "done\n"
    child.send_signal(signal.SIGTERM)
    err = child.communicate(timeout=60)[1]
    assert (child.returncode, err) in [(0, ""), (143, "ctr: terminated (SIGTERM)\n")], (child.returncode, err)


def test_sigterm_in_a_fit_before_lightning_takes_it_raises_and_is_lightnings_after():
    """Inside ``sigterm_to_lightning`` SIGTERM was the default until the Trainer installed its
    handler (its setup, a checkpoint's restore): it ended the process without a word."""
    import os
    import signal

    from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose

    from ctr.errors import sigterm_to_lightning

    noted = []
    with sigterm_to_lightning():
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)  # else the kill below ends pytest
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
        # as the Trainer composes its handler with the one it finds
        signal.signal(signal.SIGTERM, _HandlersCompose([lambda *_: noted.append(1), signal.getsignal(signal.SIGTERM)]))
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's: noted, the fit ends at a step's end, nothing raised
    assert noted == [1]


def test_sigterm_while_a_checkpoint_loads_is_not_a_broken_checkpoint(tmp_path, monkeypatch):
    """``except Exception`` around torch.load (a broken file is one line naming it) took the
    Terminated of a SIGTERM for the file's fault: "last.ckpt: not a readable checkpoint"."""
    import torch

    from ctr.train.loop import load_checkpoint

    def stopped(*args, **kwargs):
        raise Terminated

    monkeypatch.setattr(torch, "load", stopped)
    with pytest.raises(Terminated):
        load_checkpoint(tmp_path / "last.ckpt")


@pytest.mark.parametrize("stop", [Terminated, KeyboardInterrupt])
def test_a_signal_while_a_distributed_checkpoint_loads_is_not_a_misfit(tmp_path, monkeypatch, stop):
    """torch.distributed.checkpoint wraps whatever a rank raises, a SIGTERM's Terminated and a
    Ctrl+C's KeyboardInterrupt too, in its CheckpointException: ``ctr eval`` of a distributed
    run stopped while it read the checkpoint said "best: does not fit this run's model
    (Terminated)", exit 2."""
    import torch
    import torch.distributed.checkpoint as dcp

    from ctr.train.sharded import _dcp_load

    dcp.save({"model": {"w": torch.ones(2, 3)}}, checkpoint_id=str(tmp_path / "best"), no_dist=True)

    def stopped(*args, **kwargs):
        raise stop

    monkeypatch.setattr(dcp.FileSystemReader, "read_data", stopped)
    with pytest.raises(stop):
        _dcp_load(dcp, {"model": {"w": torch.zeros(2, 3)}}, tmp_path / "best")


def test_a_signal_a_checkpoint_failure_wraps_is_raised_as_itself():
    """A distributed run's save and load (every rank's failure in one CheckpointException)
    ended on that exception's traceback, or as a checkpoint that does not fit, on a SIGTERM."""
    from torch.distributed.checkpoint.api import CheckpointException

    from ctr.errors import raise_wrapped_signal

    with pytest.raises(Terminated):
        raise_wrapped_signal(CheckpointException("read_data", {0: (Terminated(), None)}))
    raise_wrapped_signal(CheckpointException("read_data", {0: (ValueError("size mismatch"), None)}))
    raise_wrapped_signal(ValueError("size mismatch"))


INTERRUPTED_AT_START = """
import os, signal
import ctr.cli as cli

build = cli.build_parser

def interrupted_build(handlers):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C while the parser imports torch (the first seconds of every command)
    return build(handlers)

cli.build_parser = interrupted_build
cli.entry()
"""


def test_ctrl_c_as_a_command_starts_is_one_line_and_130(tmp_path):
    """Ctrl+C in the seconds before a command's own code runs (the parser's import of torch)
    printed Python's traceback of the import it stopped."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", INTERRUPTED_AT_START, "models"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert (done.returncode, done.stderr) == (130, "ctr: interrupted\n"), done.stderr[-2000:]
