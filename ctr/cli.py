"""The ``ctr`` command line.

Errors a user can fix print one line (``ctr: error: <key or file:line>: <what>``) and exit
with code 2, never a traceback (``CTR_DEBUG=1`` prints it above the line: a plugin's error's
own traceback, say).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ctr.atomic import DISK_FULL, removes_made_folders
from ctr.cli_args import build_parser
from ctr.errors import Terminated, UserError, not_utf8, raise_terminated, sigterm_raises
from ctr.host import launched

if TYPE_CHECKING:
    from ctr.datasets.cache import Stale


def entry() -> None:
    """The ``ctr`` command (the console script and ``python -m ctr``): exits with ``main``'s code.

    SIGTERM raises ``Terminated`` from the start (the CLI says so on one line and exits 143;
    a command's own parts hand it to Lightning inside a fit), not only once a command took it
    over: before, the seconds of importing torch and Lightning ended ``ctr train`` without a
    word. Ctrl+C there says so on one line too and exits 130, as inside a command (it printed
    the traceback of the import it stopped). A rank of a launched group keeps the default,
    which ends it even inside a blocking collective; its launcher says why it ended. Once
    ``main`` returned, its output is written and SIGTERM is ignored while the process ends
    with its code.

    A process that imported torch exits without the interpreter's finalization once its
    output is flushed (and no thread of its own runs), as multiprocessing's child processes
    do: torch's teardown takes seconds, after a run's last line, in which a SIGTERM ended
    the process without a word. In a process that joined a process group it is needed too:
    DDP and torch.distributed.checkpoint keep the gloo process group alive past
    ``destroy_process_group``, so its worker threads outlive ``main``; one still releasing
    the tensors of a last collective when finalization begins takes the GIL and aborts the
    process ("terminate called without an active exception"), turning a finished run into
    a failed one. An unexpected exception prints its traceback and exits with 1 on either path.
    """
    if not launched():
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        code = main()
    except Terminated:  # before main could say it (while the command line is read)
        print("ctr: terminated (SIGTERM)", file=sys.stderr)
        code = 143
    except KeyboardInterrupt:  # Ctrl+C there
        print("ctr: interrupted", file=sys.stderr)
        code = 130
    except Exception:  # a bug: its traceback, then the same exit as any other end
        traceback.print_exc()
        code = 1
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    launch = sys.modules.get("ctr.train.launch")  # never imported: no group was joined
    if launch is not None and launch.joined_a_group() or "torch" in sys.modules and not _own_threads():
        cache = sys.modules.get("ctr.datasets.cache")  # os._exit runs no atexit: the leases of what it read go now
        if cache is not None:
            cache.release_all()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _own_threads() -> bool:
    """Whether a Python thread that the interpreter's finalization would wait for still runs."""
    return any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_handlers())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return args.run(args) or 0
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":  # every rank of a distributed run meets the same error: one line
            if os.environ.get("CTR_DEBUG", "0") not in ("", "0"):  # where it was raised, and what it was raised from
                traceback.print_exc()
            print(f"ctr: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C where ctr, not Lightning, handles it (a procedure stage)
        return _say_signal_end(args, ("interrupted", 130))
    except BrokenPipeError:  # the reader of our output left (`ctr models | head -1`): end quietly, as on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:
        if err.filename is None and err.errno in DISK_FULL:  # a write no ctr code named (a logger's)
            print(f"ctr: error: {os.strerror(err.errno).lower()} on a disk this command writes to (its output "
                  "folder, data.cache_dir)", file=sys.stderr)
            return 2
        if err.filename is None:  # not about a path the user gave: a bug, with its traceback
            raise
        print(f"ctr: error: {err.filename}: {err.strerror.lower() if err.strerror else err}", file=sys.stderr)
        return 2
    except Terminated:  # SIGTERM where ctr, not Lightning, handles it (a procedure stage)
        return _say_signal_end(args, ("terminated (SIGTERM)", 143))
    except SystemExit as stop:
        ended = _signal_end(stop)
        if ended is None:
            raise
        return _say_signal_end(args, ended)


def _say_signal_end(args: argparse.Namespace, ended: tuple[str, int]) -> int:
    """Prints how a signal ended the command (with how to go on, for a command that resumes);
    its code."""
    command = " ".join(filter(None, [args.command, getattr(args, "bench_command", None)]))
    hint = _train_hint(args) if command == "train" else CONTINUING.get(command)
    print(f"ctr: {ended[0]}{f'; {hint}' if hint else ''}", file=sys.stderr)
    return ended[1]


def _train_hint(args: argparse.Namespace) -> str | None:
    """How a stopped ``ctr train`` goes on: the ``--resume`` of its run directory once the
    run has checkpointed there, the same command before (the recipe written, no checkpoint
    yet: nothing to resume), or where a finished run's results are; nothing when the run had
    written nothing (no run directory named yet, or a folder made for ``--out`` still empty)."""
    run_dir = getattr(args, "run_dir", None) or args.resume  # a resume's is known from the start
    if run_dir is None:
        return None
    from ctr.train.rundir import RunDir

    run = RunDir(run_dir)
    if run.metrics.exists():
        return f"the run had finished: {run.metrics} holds its results"
    if not run.recipe.exists():  # nothing of this run written
        return None
    if not run.started:  # --resume would refuse: nothing to resume
        return "no checkpoint was written: the same command trains the run from the start"
    return f"`ctr train --resume {shlex.quote(str(run_dir))}` continues from its last checkpoint, if one was written"


SYNTH_FLAGS = {"rows": "--rows", "seed": "--seed", "vocab_scale": "--vocab-scale"}  # ctr data synth's, by config key
CONTINUING = {  # how each command other than train that can be stopped and resumed goes on
    "bench compression": "the same command continues: finished cells are kept, the stopped ones resume",
    "tune": "the same command continues: finished runs are kept, the stopped one resumes",
}


def _signal_end(stop: SystemExit) -> tuple[str, int] | None:
    """What a signal made of a Lightning fit: it ends the fit with ``SystemExit(1)`` on
    SIGINT (raised while handling the KeyboardInterrupt) and with its ``SIGTERMException``
    (a ``SystemExit(0)``) on SIGTERM; both would pass for a finished or a failed run. The
    message and the shell's exit code (128 + the signal), or None for any other exit."""
    if type(stop).__name__ == "SIGTERMException":
        return "terminated (SIGTERM)", 143
    if isinstance(stop.__context__, KeyboardInterrupt):
        return "interrupted", 130
    return None


def _handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    """Each command's function, looked up when the parser is built."""
    return {"train": _train, "eval": _eval, "plan": _plan, "predict": _predict, "export": _export, "tune": _tune,
            "models": _models, "data prepare": _prepare, "data clean": _clean, "data synth": _synth,
            "bench compression": _bench_compression, "bench kernels": _bench_kernels, "bench train": _bench_train}


def _bench_train(args: argparse.Namespace) -> int:
    from ctr.bench.train import TrainBenchConfig, format_result, run_train_bench

    config = TrainBenchConfig(args.recipe, args.override, args.device, args.warmup, args.steps, args.profile_steps)
    print(format_result(run_train_bench(config), config))
    return 0


def _train(args: argparse.Namespace) -> int:
    from ctr.recipe import load_recipe
    from ctr.train.rundir import RESUME_OVERRIDES, RunDir, default_run_dir
    from ctr.train.launch import die_with_starter

    die_with_starter()

    if args.resume:
        _check_resume_args(args, RESUME_OVERRIDES)
        if args.out is not None:
            raise UserError(f"--resume continues the run in {args.resume}; give no --out (copy the run directory "
                            "first to keep the interrupted one)")
        recipe, out = _resumed_recipe(RunDir(args.resume), args.override), args.resume
    elif args.recipe:
        recipe, out = load_recipe(args.recipe, args.override), args.out
    else:
        raise UserError("train: give a recipe file or --resume RUN_DIR")
    out = args.run_dir = out or default_run_dir(recipe)  # named by the hint a signal's end prints
    if recipe.trainer.world_size > 1 and not launched():
        return _spawn_train(args, recipe, out)
    return _train_in_this_process(recipe, out, bool(args.resume))


def _check_resume_args(args: argparse.Namespace, allowed: tuple[str, ...]) -> None:
    """Refuses a recipe given to ``--resume``, or an ``-o`` of a key other than ``allowed``
    (the world size), naming the first such key."""
    if args.recipe:
        raise UserError(f"--resume continues a run with its own recipe (in {args.resume}); give no recipe "
                        f"({args.recipe})")
    key = next((key for item in args.override if (key := item.partition("=")[0]) not in allowed), None)
    if key is not None:
        raise UserError(f"--resume continues a run with its own recipe, and -o {key} would change it: give -o only "
                        f"for {' or '.join(allowed)} (a distributed run resumes on another world size), and train "
                        "other settings as a new run")


def _train_in_this_process(recipe, out: Path, resume: bool) -> int:  # noqa: ANN001 (a Recipe)
    """``ctr train`` in this process: a one-process run, or a rank of a launched group (neither
    the launcher nor its ranks import Lightning and its training loop: they would delay the
    ranks' start)."""
    if launched():
        from ctr.train.distributed import train_in_group

        metrics = train_in_group(recipe, out, resume)
    else:
        from ctr.train.runner import train

        metrics = train(recipe, out, resume=resume)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(_metrics_line("test", metrics["test"]) + f"  (embedding {metrics['embedding_bytes'] / 1e6:.2f} MB)")
    return 0


def _resumed_recipe(run, overrides: list[str]):  # noqa: ANN001, ANN202 (a RunDir, a Recipe)
    """The run's recipe with the world-size ``overrides`` applied."""
    from ctr.recipe import recipe_from_dict
    from ctr.recipe.files import apply_override

    recipe = run.load_recipe()
    if not overrides:
        return recipe
    raw = recipe.to_dict()
    for item in overrides:
        apply_override(raw, item)
    return recipe_from_dict(raw)


def _spawn_train(args: argparse.Namespace, recipe, root: Path) -> int:  # noqa: ANN001 (a Recipe)
    """``ctr train`` in ``trainer.devices`` processes of this machine (one run directory)."""
    from ctr.train.launch import check_distributed, spawn
    from ctr.train.rundir import RunDir

    check_distributed(recipe)  # before any process starts: one error line, not one per rank
    if args.resume:
        _check_spawned_resume(RunDir(args.resume), recipe)
    overrides = [f"-o{item}" for item in args.override]
    command = ["train", "--resume", str(root)] if args.resume else ["train", args.recipe, "--out", str(root)]
    RunDir(root).check_usable()
    with RunDir(root).exclusive():  # the ranks train in it: the launcher holds it for them
        return spawn(command + overrides, recipe)


def _check_spawned_resume(run, recipe) -> None:  # noqa: ANN001 (a RunDir, a Recipe)
    """Refuses, before any process starts, a resume of ``run`` that its ranks would refuse."""
    from ctr.train.checkpoints import check_resumable

    run.check_resumed_world(recipe.trainer.world_size)
    check_resumable(run.root)
    run.check_resumed_inputs(recipe.data)


def _eval(args: argparse.Namespace) -> int:
    from ctr.metrics import metrics_json
    from ctr.train.runner import evaluate

    if args.data is not None and args.split is not None:
        raise UserError("eval: --data evaluates a whole file; give no --split with it")
    split = args.split or "test"
    with sigterm_raises():  # the encoded copy and a half-written file are removed on the way out
        metrics = evaluate(args.run_dir, split, args.data)
    scored = args.data if args.data is not None else f"its {split} split"
    print(f"{args.run_dir}: best checkpoint scored on {scored}", file=sys.stderr)
    print(metrics_json(metrics))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ctr.metrics import metrics_json
    from ctr.train.predict import predict

    with sigterm_raises(), removes_made_folders(args.out.parent):
        result = predict(args.run_dir, args.input, args.out)
    print(f"scored {result['rows']:,} rows into {args.out} ({result['rows_per_s']:,.0f} rows/s)", file=sys.stderr)
    print(metrics_json(result))
    return 0


def _export(args: argparse.Namespace) -> int:
    from ctr.train.export import export_run

    with sigterm_raises(), removes_made_folders(args.out.parent):
        beside = export_run(args.run_dir, args.out)
    print(f"exported {args.out} (schema and vocabularies in {beside})")
    return 0


def _models(args: argparse.Namespace) -> int:
    from ctr.registry import DATASETS, EMBEDDINGS, MODELS, OPTIMIZERS, import_plugins

    import_plugins([m.strip() for m in args.plugins.split(",") if m.strip()], "--plugins")
    for registry in (MODELS, EMBEDDINGS, DATASETS, OPTIMIZERS):
        print(f"{registry.kind}s:")
        for entry in registry.entries():
            print(f"  {entry.name:<18} {entry.summary}")
    return 0


def _bench_compression(args: argparse.Namespace) -> int:
    from ctr.bench.compression import PLOT, RESULTS_CSV, RESULTS_MD, check_grid, plan, run_grid, tally
    from ctr.train.rundir import held

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        raise UserError(f"--budgets: expected comma-separated numbers, got {args.budgets!r}") from None
    out = args.out or _default_out("bench", args.recipe)
    grid = check_grid(args.recipe, methods, budgets, args.seeds, out, args.override, args.jobs)  # before the lock
    with held(out, "is writing results in this folder"), sigterm_raises():  # outside a cell's training too
        results = run_grid(grid, args.drop_checkpoints)
    print((out / RESULTS_MD).read_text(), end="")
    print(f"\n{tally(results.shown(args.seeds))} in {out / RESULTS_CSV}; plot {out / PLOT}")
    unfinished = results.unfinished(plan(methods, budgets, args.seeds))
    if unfinished:
        cells = f"{len(unfinished)} cell{'s' if len(unfinished) != 1 else ''}"
        print(f"ctr: {cells} failed ({', '.join(unfinished[:3])}{' ...' if len(unfinished) > 3 else ''}): "
              "their status is in the table above (a training's output in OUT/logs/<cell>.log); fix what it says, or "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def _tune(args: argparse.Namespace) -> int:
    from ctr.train.rundir import held
    from ctr.train.runner import train
    from ctr.train.grid import parse_grid
    from ctr.train.tune import BEST, RESULTS_CSV, RESULTS_MD, Tuning

    out = args.out or _default_out("tune", args.recipe)
    tuning = Tuning(args.recipe, parse_grid(args.grid), args.seeds, out, args.override, train)
    tuning.check()  # before its lock beside it is made (the lock makes out's parent)
    with held(out, "is writing results in this folder"), sigterm_raises():  # outside a run's training too
        best = tuning.run()
    print((out / RESULTS_MD).read_text(), end="")
    print(f"\nchosen: {best.label}; recipe {out / BEST}; runs in {out / RESULTS_CSV}")
    return 0


def _default_out(kind: str, recipe: Path) -> Path:
    """``runs/<kind>-<recipe file name>``, the output folder of ``ctr tune`` and ``ctr bench
    compression`` without --out; refused for a recipe name that is not UTF-8 (the results
    files name the folder: a UnicodeEncodeError as the first was written)."""
    found = not_utf8(recipe.stem)
    if found is not None:
        raise UserError(f"{not_utf8(str(recipe))[0]}: a name that is not UTF-8 (byte {found[1]:#04x}), which "
                        f"the default --out runs/{kind}-{found[0]} would take; give --out")
    return Path("runs") / f"{kind}-{recipe.stem}"


def _prepare(args: argparse.Namespace) -> int:
    from ctr.datasets import prepare
    from ctr.datasets.report import format_report
    from ctr.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.override)
    with sigterm_raises():  # the encoded copy is removed on the way out
        prepared = prepare(recipe.data, recipe.trainer.progress_bar)
    print(format_report(prepared.report))
    print(f"\nencoded data: {prepared.root}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from ctr.datasets import prepare
    from ctr.recipe import load_recipe
    from ctr.train.plan import check_plan_request, format_plan, parse_bytes, plan_tables

    memory = parse_bytes(args.memory_per_rank) if args.memory_per_rank else None
    recipe = load_recipe(args.recipe, args.override)
    check_plan_request(recipe, args.world_size)
    with sigterm_raises():  # outside a fit: SIGTERM would end it without a word
        prepared = prepare(recipe.data, recipe.trainer.progress_bar)
        prepared.schema.require_sparse()
        plan = plan_tables(recipe, prepared.schema, args.world_size, memory)
    print(format_plan(plan, recipe))
    return 0


def _clean(args: argparse.Namespace) -> int:
    from ctr.datasets.cache import cache_root, remove_stale, stale_entries

    if args.cache_dir and not Path(args.cache_dir).expanduser().exists():
        raise UserError(f"--cache-dir: {args.cache_dir}: no such folder")
    root = cache_root(args.cache_dir, "--cache-dir")
    stale = stale_entries(root)
    for entry in stale:
        if not args.dry_run:
            remove_stale([entry])  # said once done: an entry that cannot be removed stops here, named
        print(_clean_line(entry, args.dry_run))
    gone = [entry for entry in stale if not entry.readers and not entry.left]
    total = sum(entry.bytes for entry in gone) / 1e6
    entries = "entry" if len(gone) == 1 else "entries"
    # an entry found stale no more or gone under its lock counts as left, even where a process read it as clean looked
    kept = sum(1 for entry in stale if entry.readers and not entry.left)
    kept_note = f"; {kept} more kept while a running process reads {'it' if kept == 1 else 'them'}" if kept else ""
    left = len(stale) - len(gone) - kept
    left_note = f"; {left} more stale no more or gone since clean looked" if left else ""
    print(f"{len(gone)} stale {entries} ({total:.1f} MB) in {root}{kept_note}{left_note}"
          + (" (dry run)" if args.dry_run else ""))
    return 0


def _clean_line(entry: Stale, dry_run: bool) -> str:
    """What ``ctr data clean`` did with stale ``entry``: removed it, kept it for its readers, or
    left it (stale no more when clean took its lock)."""
    if entry.left:
        return f"left {entry.path.name} ({entry.bytes / 1e6:.1f} MB): {entry.reason}; {entry.left}"
    verb = ("would keep" if dry_run else "kept") if entry.readers else ("would remove" if dry_run else "removed")
    read = f"; read by {', '.join(entry.readers)}" if entry.readers else ""
    return f"{verb} {entry.path.name} ({entry.bytes / 1e6:.1f} MB): {entry.reason}{read}"


def _synth(args: argparse.Namespace) -> int:
    from ctr.datasets.synthetic_tsv import check_name, write_dac_tsv
    from ctr.datasets.synthetic import SyntheticConfig

    check_name(args.out)  # before "exists (give --force)": --force would not make the name one to write
    if args.out.exists() and not (args.force and args.out.is_file()):
        what = "exists (give --force to replace it)" if args.out.is_file() else "exists and is not a file"
        raise UserError(f"{args.out}: {what}")
    try:
        config = SyntheticConfig(rows=args.rows, seed=args.seed, vocab_scale=args.vocab_scale)
    except ValueError as err:  # "vocab_scale must be ...": named as the flag that set it
        key, _, rest = str(err).partition(" ")
        flag = SYNTH_FLAGS.get(key.rstrip(":"))
        raise UserError(f"{flag}: {rest}" if flag else f"data synth: {err}") from None
    try:
        rows = write_dac_tsv(args.out, config, progress=sys.stderr.isatty())
    except UserError as err:  # "data.vocab_scale: ...": a recipe's key, here the flag that set it
        key, _, rest = str(err).partition(": ")
        flag = SYNTH_FLAGS.get(key.removeprefix("data."))
        raise UserError(f"{flag}: {rest}" if flag and key.startswith("data.") else str(err)) from None
    print(f"wrote {rows:,} {'row' if rows == 1 else 'rows'} to {args.out}")
    return 0


def _bench_kernels(args: argparse.Namespace) -> int:
    import torch

    from ctr.bench.kernels import KernelBenchConfig, run
    from ctr.host import usable_cores

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads: must be >= 1, got {args.threads}")
    if args.threads is not None and args.threads > usable_cores():  # libgomp aborts on absurd counts
        raise UserError(f"--threads: {args.threads} is more than the {usable_cores()} cores this process may run on "
                        "(a benchmark of waiting threads measures nothing)")
    lookup_only = [flag for flag, value in (("--optimizer", args.optimizer), ("--peak-gbps", args.peak_gbps))
                   if value is not None]
    if args.suite == "step" and lookup_only:
        raise UserError(f"{' and '.join(lookup_only)}: the lookup suite's; --suite step compares its own updates "
                        "(adagrad, rowwise_adagrad) and reports no bandwidth")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = KernelBenchConfig(
        suite=args.suite, device=args.device, batch=args.batch, tables=args.tables, rows=args.rows, dims=args.dims,
        poolings=args.pooling, alpha=args.alpha, optimizer=args.optimizer or "rowwise_adagrad", iters=args.iters,
        warmup=args.warmup, peak_gbps=args.peak_gbps,
    )
    print(run(config))
    return 0


def _metrics_line(split: str, metrics: dict[str, float]) -> str:
    return f"{split}: " + "  ".join(f"{k} {v:.6f}" for k, v in metrics.items())


if __name__ == "__main__":
    entry()
