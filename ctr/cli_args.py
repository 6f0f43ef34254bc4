"""The ``ctr`` command line's arguments: its commands, their options and help."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Mapping

import ctr
from ctr.errors import not_utf8

Handler = Callable[[argparse.Namespace], "int | None"]


def build_parser(handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """The ``ctr`` argument parser; each command runs ``handlers[<command words>]`` (``args.run``)."""
    parser = argparse.ArgumentParser(prog="ctr", description="Train and compare CTR models.")
    parser.add_argument("--version", action="version", version=f"ctr {ctr.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a recipe; writes a run directory")
    train.add_argument("recipe", nargs="?", help="recipe YAML (omit with --resume)")
    train.add_argument("--out", type=a_utf8_path, help="run directory (default runs/<name>-<time>)")
    train.add_argument("--resume", type=a_utf8_path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    overrides(train)
    train.set_defaults(run=handlers["train"])

    evaluate = commands.add_parser("eval", help="re-evaluate a finished run's best checkpoint")
    evaluate.add_argument("run_dir", type=a_utf8_path, help="a run directory (ctr train --out)")
    evaluate.add_argument("--split", choices=("test", "valid"),  # None: not given (test), told from --split test
                          help="the split of the recipe's data to score (default test)")
    evaluate.add_argument("--data", type=a_utf8_path,
                          help="evaluate every row of this file or folder (the recipe's format) instead")
    evaluate.set_defaults(run=handlers["eval"])

    plan = commands.add_parser("plan", help="how a recipe's tables would shard over N processes (TorchRec's planner)")
    plan.add_argument("recipe", help="recipe YAML")
    plan.add_argument("--world-size", type=int, default=2, help="processes (default 2)")
    plan.add_argument("--memory-per-rank", type=given, help="memory of each rank, e.g. 16GB (default: the planner's)")
    overrides(plan)
    plan.set_defaults(run=handlers["plan"])

    predict = commands.add_parser("predict", help="score raw rows with a finished run (a score column per row)")
    predict.add_argument("run_dir", type=a_utf8_path, help="a finished run directory")
    predict.add_argument("input", type=a_utf8_path,
                         help="rows in the recipe's format, a file or folder (label optional)")
    predict.add_argument("--out", type=a_file, required=True,
                         help="scores: CSV (.csv), TSV (.tsv) or parquet (any other name)")
    predict.set_defaults(run=handlers["predict"])

    export = commands.add_parser("export", help="a torch.export program of a finished run's inference model")
    export.add_argument("run_dir", type=a_utf8_path, help="a finished run directory")
    export.add_argument("--out", type=a_file, required=True, help="the program file (model.pt2); its schema goes beside it")
    export.set_defaults(run=handlers["export"])

    tune = commands.add_parser("tune", help="a grid of recipe settings chosen on validation, then over seeds")
    tune.add_argument("recipe", type=a_path, help="base recipe YAML")
    tune.add_argument(
        "--grid", action="append", default=[], metavar="KEY.PATH=V1,V2",
        help="one axis of the grid (repeatable), e.g. --grid model.dropout=0,0.2",
    )
    tune.add_argument("--seeds", type=int, default=3,
                      help="seeds of the chosen point (recipe seed, +1, ...; default 3)")
    tune.add_argument("--out", type=a_utf8_path, help="output folder (default runs/tune-<recipe file name>)")
    overrides(tune)
    tune.set_defaults(run=handlers["tune"])

    models = commands.add_parser("models", help="list what the registries hold")
    models.add_argument("--plugins", default="", metavar="MOD[,MOD]",
                        help="comma-separated plugin modules to import first, as a recipe's plugins: list")
    models.set_defaults(run=handlers["models"])

    data = commands.add_parser("data", help="data commands").add_subparsers(dest="data_command", required=True)
    prep = data.add_parser("prepare", help="encode a recipe's data and print its statistics")
    prep.add_argument("recipe", help="recipe YAML")
    overrides(prep)
    prep.set_defaults(run=handlers["data prepare"])
    clean = data.add_parser(
        "clean", help="remove stale encoded-data cache entries (changed inputs, old versions, killed runs)"
    )
    clean.add_argument("--cache-dir", type=given,
                       help="the cache (default $CTR_CACHE, else ~/.cache/ctr), as data.cache_dir")
    clean.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    clean.set_defaults(run=handlers["data clean"])
    synth = data.add_parser("synth", help="write synthetic Criteo-schema rows as raw Criteo DAC TSV")
    synth.add_argument("out", type=a_file, help="the TSV file to write (gzip-compressed when named *.gz)")
    synth.add_argument("--rows", type=int, required=True, help="rows to write")
    synth.add_argument("--seed", type=int, default=2024, help="seed of the planted model and rows (default 2024)")
    synth.add_argument("--vocab-scale", type=float, default=1.0,
                       help="multiplies the Criteo-like vocabulary sizes (default 1.0)")
    synth.add_argument("--force", action="store_true", help="replace OUT if it exists")
    synth.set_defaults(run=handlers["data synth"])

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    _bench_kernels_parser(bench, handlers)
    _bench_compression_parser(bench, handlers)
    _bench_train_parser(bench, handlers)
    for subcommands in (commands, data, bench):
        named_by_choices(subcommands)
    return parser


def _bench_compression_parser(bench: argparse._SubParsersAction, handlers: Mapping[str, Handler]) -> None:
    compression = bench.add_parser(
        "compression", help="embedding methods x memory budgets x seeds on one recipe (table, plot, results file)"
    )
    compression.add_argument("recipe", type=a_path, help="base recipe (data, model, train)")
    compression.add_argument("--methods", default="full,hash",
                             help="comma-separated embedding methods (default full,hash)")
    compression.add_argument("--budgets", default="0.5,0.1",
                             help="comma-separated budgets, fractions of the full bytes (default 0.5,0.1)")
    compression.add_argument("--seeds", type=int, default=3, help="seeds per cell (recipe seed, +1, ...; default 3)")
    compression.add_argument("--out", type=a_utf8_path, help="output folder (default runs/bench-<recipe file name>)")
    compression.add_argument("--jobs", type=int, default=1,
                             help="cells trained at once, each in its own process, at most the usable cores "
                                  "(default 1; their times then share the machine)")
    compression.add_argument("--drop-checkpoints", action="store_true",
                             help="delete a finished cell's checkpoints (its metrics, recipe and log stay): for "
                                  "grids whose tables take gigabytes")
    overrides(compression)
    compression.set_defaults(run=handlers["bench compression"])


def _bench_kernels_parser(bench: argparse._SubParsersAction, handlers: Mapping[str, Handler]) -> None:
    from ctr.kernels.optim import FUSABLE

    kernels = bench.add_parser(
        "kernels", help="embedding-bag kernels vs a loop of nn.EmbeddingBag and FBGEMM (ms, GB/s, %% of peak)"
    )
    kernels.add_argument("--suite", choices=("lookup", "step"), default="lookup",
                         help="lookup: DLRM-like TBE workload; step: DeepFM-sized training step (default lookup)")
    kernels.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="auto: cuda when there is a GPU, else cpu (default auto)")
    kernels.add_argument("--batch", type=int, help="batch size (default 65536 on GPU, 4096 on CPU and for --suite step)")
    kernels.add_argument("--tables", type=int, default=26, help="number of tables (default 26)")
    kernels.add_argument("--rows", type=int, default=100_000, help="rows per table (default 100000)")
    kernels.add_argument("--dims", type=int_list, help="comma-separated dims (default 64,128; step: 16)")
    kernels.add_argument("--pooling", type=int_list, help="comma-separated ids per bag (default 1,20; step: 1)")
    kernels.add_argument("--alpha", type=float, default=0.0, help="Zipf exponent of the ids (0 = uniform; default 0)")
    kernels.add_argument("--optimizer", choices=FUSABLE, help="the lookup suite's update (default rowwise_adagrad)")
    kernels.add_argument("--iters", type=int, default=10, help="timed iterations per measurement (default 10)")
    kernels.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    kernels.add_argument("--peak-gbps", type=float, help="the device's peak memory bandwidth in GB/s")
    kernels.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    kernels.set_defaults(run=handlers["bench kernels"])


def _bench_train_parser(bench: argparse._SubParsersAction, handlers: Mapping[str, Handler]) -> None:
    train = bench.add_parser("train", help="samples/s of a recipe's training loop, GPU busy share, time per phase")
    train.add_argument("recipe", type=a_path, help="recipe YAML")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto: cuda when there is a GPU, else cpu (default auto)")
    train.add_argument("--steps", type=int, default=50, help="timed training steps (default 50)")
    train.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    train.add_argument("--profile-steps", type=int, default=10, help="steps under the profiler on a GPU (default 10)")
    overrides(train)
    train.set_defaults(run=handlers["bench train"])


def named_by_choices(subcommands: argparse._SubParsersAction) -> None:
    """Names a group of subcommands by its choices (``{prepare,clean,synth}``), as its usage
    line does, in argparse's error for a missing one (it named the ``dest``: ``data_command``)."""
    subcommands.metavar = "{" + ",".join(subcommands.choices) + "}"


def overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a recipe value (repeatable), e.g. -o train.batch_size=1024",
    )


def given(text: str) -> str:
    """A value that an empty string would leave as not given (the default)."""
    if not text:
        raise argparse.ArgumentTypeError("empty; leave the flag out for its default")
    return text


def a_file(text: str) -> Path:
    """A file to write (``a_utf8_path``): one named as a folder, ``scores/``, ``scores/.`` or ``..``,
    is refused (``Path`` drops the slash and the dot: the file would take the folder's name)."""
    if text.endswith("/") or os.path.basename(text) in (".", ".."):
        raise argparse.ArgumentTypeError(f"{text}: names a folder; name the file to write")
    return a_utf8_path(text)


def a_utf8_path(text: str) -> Path:
    """A path that ctr writes into its files or pyarrow opens (a run directory, data, scores,
    an output folder): ``a_path``, refused when its bytes are not UTF-8 (a Latin-1 ``\\xff``:
    pyarrow's open and the YAML, CSV and JSON files naming it raised a UnicodeEncodeError)."""
    path = a_path(text)
    found = not_utf8(str(path))  # after ~ is expanded: a HOME that is not UTF-8 too
    if found is not None:
        raise argparse.ArgumentTypeError(f"{found[0]}: a name that is not UTF-8 (byte {found[1]:#04x}); rename it")
    return path


def a_path(text: str) -> Path:
    """A path argument, ``~`` expanded (the shell leaves the one of ``--out=~/runs/a``); an
    empty one (an unset shell variable) is refused, not read as the current folder
    (``Path("")`` is ``.``), and so is one in a symlink loop (``Path.resolve`` raises a
    RuntimeError on it wherever the command resolves it). A recipe's is one: Python opens
    any name."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    try:
        path = Path(text).expanduser()
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text}: names the home folder of no user of this machine") from None
    try:
        path.resolve()
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text}: a symlink loop") from None
    return path


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:  # an empty list would fall back to the default sizes unseen
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values
