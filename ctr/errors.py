"""Errors a user can fix; the CLI prints them on one line and exits with code 2. Also
``Terminated``, how a SIGTERM ends work that has no handler of its own, and
``refuse_for_training``, a refusal that a finished run being scored is spared."""

import difflib
import signal
from contextlib import contextmanager
from typing import Iterable, Iterator


class UserError(Exception):
    """Bad input from the user: a recipe, a data file, a command-line value.

    The message must name what is wrong and where (file, line, key path), on one line.
    """


class RecipeError(UserError):
    """A recipe key is unknown, has the wrong type, or names nothing registered."""


class DataError(UserError):
    """A data file is malformed (wrong field count, unparsable value, bad label, ...)."""


class TrainingDiverged(UserError):
    """The training loss became non-finite (inf or nan); the last good checkpoint is kept."""


_scoring_saved_run = False  # while a finished run is scored: see scoring_a_saved_run


@contextmanager
def scoring_a_saved_run() -> Iterator[None]:
    """While a finished run is scored (``ctr eval``, ``predict``, ``export``; also a
    decorator), a value a later ctr refuses because training with it learns nothing
    (``refuse_for_training``) is taken as the run saved it: scoring reads the weights and
    vocabularies trained with it, not the value."""
    global _scoring_saved_run
    before, _scoring_saved_run = _scoring_saved_run, True
    try:
        yield
    finally:
        _scoring_saved_run = before


def refuse_for_training(message: str, error: type[Exception] = ValueError) -> None:
    """A check's ``error(message)`` (a config's ValueError; a RecipeError where the value is
    checked against the data, as the net is built) for a value only training reads, except
    while a saved run is scored (``scoring_a_saved_run``)."""
    if not _scoring_saved_run:
        raise error(message)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``, did you mean X?`` naming the choice closest to a mistyped ``name``, compared
    without case (``DeepFM`` → ``deepfm``); empty when none is close."""
    by_folded = {choice.casefold(): choice for choice in choices}
    close = difflib.get_close_matches(str(name).casefold(), list(by_folded), n=1)
    return f", did you mean {by_folded[close[0]]}?" if close else ""


def not_utf8(text: str) -> tuple[str, int] | None:
    """Where ``text`` holds a byte that is not UTF-8 (Python keeps such a byte of ``sys.argv``
    as a surrogate, ``\\xe9`` as ``\\udce9``, which pyarrow cannot encode to open a file):
    ``text`` with its bytes escaped (``caf\\xe9.csv``) and the first such byte; None for UTF-8 text."""
    byte = next((ord(char) - 0xDC00 for char in text if 0xDC80 <= ord(char) <= 0xDCFF), None)
    if byte is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), byte


def reason(err: BaseException, typed: bool = False) -> str:
    """What a one-line error quotes of ``err``: its message's first line (its first detail
    when that line only introduces the details, as torch's ``load_state_dict`` does: "Error(s)
    in loading state_dict for Net:" then "size mismatch for ..."), or its type's name when
    it has none; ``typed`` puts the type's name first (``EOFError: Ran out of input``). Of a
    torch.distributed.checkpoint failure, the first failed rank's own exception."""
    failures = getattr(err, "failures", None)  # CheckpointException: {rank: (exception, traceback)}
    if isinstance(failures, dict) and failures:
        err = next(iter(failures.values()))[0]
    lines, name = [line.strip() for line in str(err).splitlines() if line.strip()], type(err).__name__
    if not lines:
        return name
    said = lines[1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return f"{name}: {said}" if typed else said


class Terminated(BaseException):
    """The process received SIGTERM (where ctr, not Lightning, handles it). A BaseException,
    as KeyboardInterrupt is: an ``except Exception`` that reads a failure as a broken file or
    an unusable plugin does not take a SIGTERM for one."""


def raise_wrapped_signal(err: BaseException) -> None:
    """Raises the ``KeyboardInterrupt`` or ``Terminated`` that a torch.distributed.checkpoint
    failure wraps (its ``CheckpointException`` holds whatever a rank raised, a signal's too):
    a save or load that a signal stopped ends as the signal, not as a broken checkpoint."""
    for failure in (getattr(err, "failures", None) or {}).values():
        if isinstance(failure[0], (KeyboardInterrupt, Terminated)):
            raise failure[0] from None


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler: the main thread raises ``Terminated`` where it is."""
    raise Terminated


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside, SIGTERM raises ``Terminated`` in the main thread (the CLI says so on one line
    and exits 143) instead of ending the process without a word; the previous handler is
    back on the way out. Not for a Lightning fit, which ends itself at a step's end, nor a
    rank of a process group, which SIGTERM must end even inside a blocking collective."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def raise_until_lightning(signum: int, frame: object) -> None:
    """A SIGTERM handler for a Lightning fit: raises ``Terminated`` while it is the handler
    installed (the fit's setup, a checkpoint's restore, its teardown), and leaves SIGTERM to
    Lightning once the Trainer installed its own, which calls the handler it found too."""
    if signal.getsignal(signal.SIGTERM) is raise_until_lightning:
        raise Terminated


@contextmanager
def sigterm_to_lightning() -> Iterator[None]:
    """Inside (a Lightning fit), SIGTERM is Lightning's alone once its Trainer handles it: it
    ends the fit at a step's end (``sigterm_raises``' handler, which Lightning calls too, would
    raise mid-step). Before that, and after, it raises ``Terminated``."""
    previous = signal.signal(signal.SIGTERM, raise_until_lightning)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
