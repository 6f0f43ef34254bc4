"""Writing files so that a reader never sees half of one: a temporary name beside the
target, renamed over it once complete (``os.replace`` is atomic on one file system)."""

from __future__ import annotations

import csv
import errno
import io
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ctr.errors import UserError, reason


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write a file or a folder at; it replaces ``path``
    when the block ends without an error and is removed otherwise (``path``'s parent folder
    is created). A folder replace of ``path`` that a kill stopped between its renames gives
    the old folder back first (its new one, a dead writer's temporary, is removed). An
    OSError naming the temporary, or a full disk named by no file (a library's writer), is
    raised naming ``path``.

    Example:
        >>> with atomic_path(folder / "data.csv") as tmp:  # doctest: +SKIP
        ...     frame.to_csv(tmp)
    """
    path = Path(path)
    check_not_special(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    if _aside(path).is_dir():
        finish_replace(path)
    tmp = path.with_name(f"{_tmp_prefix(path)}{os.getpid()}")
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            _swap_in(tmp, path)
        else:
            os.replace(tmp, path)
    except OSError as err:
        if err.filename is None and err.errno in DISK_FULL:  # pyarrow's, torch's: a long text, no file
            raise OSError(err.errno, os.strerror(err.errno), str(path)) from None
        if err.filename is None or Path(err.filename) != tmp:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from None  # the user named path, not its temporary
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextmanager
def removes_made_folders(folder: Path) -> Iterator[None]:
    """Removes ``folder`` and the folders above it that are missing as the block begins (made in
    it) when they are empty as it ends, however it ends: a command stopped (Ctrl+C) or refused
    before it wrote there leaves no new, empty folder; a folder that was there before stays, as
    does one a ctr process holds (its ``.<name>.lock`` beside it: ``ctr tune`` holds its --out
    while a point's run locks a folder inside) and those above it. Two commands writing into
    one new folder at once are not told apart otherwise: one that stops may remove it while it
    is still empty, and the other's write then fails naming its file."""
    made = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    try:
        yield
    finally:
        for each in made:  # each inside the next
            if (each.parent / f".{each.name}.lock").exists():
                break
            try:
                each.rmdir()
            except FileNotFoundError:  # removed meanwhile: the folders above may still be empty
                continue
            except OSError:  # not empty (it holds what was written)
                break


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device, the disk quota exceeded


SPECIAL_FILES = ((stat.S_ISFIFO, "a fifo"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                 (stat.S_ISSOCK, "a socket"))


def special_kind(path: Path) -> str | None:
    """``a fifo``, ``a character device``, ... where ``path`` is (or links to) a file that is
    neither a regular file nor a folder; None otherwise (nothing there included)."""
    try:
        mode = path.stat().st_mode
    except OSError:  # nothing there (or nothing that can be looked at): what reads or writes it says what fails
        return None
    return next((kind for is_kind, kind in SPECIAL_FILES if is_kind(mode)), None)


def check_not_special(path: Path) -> None:
    """Refuses a ``path`` that is (or links to) a fifo, a device or a socket: the rename that
    completes a write would put a regular file in its place (as root, ``--out /dev/null``
    replaced the system's /dev/null)."""
    kind = special_kind(path)
    if kind is not None:
        raise UserError(f"{path}: not a regular file ({kind}); name a file to write")


def check_writable(path: Path) -> None:
    """Fails where ``atomic_path(path)`` would fail only at its end, before the work that
    makes the file: a UserError naming ``path`` when no file can be created beside it, or in
    the nearest folder above it that exists (``atomic_path`` creates the rest; this creates
    nothing); a fifo, device or socket at ``path`` is refused (``check_not_special``)."""
    check_not_special(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        handle, probe = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:  # it names the probe or a parent, not the path asked for
        raise UserError(f"{path}: cannot be written ({(err.strerror or reason(err)).lower()})") from None


def staging_folder(path: Path) -> Path:
    """Where a folder that is to replace folder ``path`` is written (``.<name>.tmp`` beside
    it) before ``replace_folder`` puts it in place."""
    return path.with_name(f".{path.name}.tmp")


def replace_folder(path: Path) -> None:
    """Puts the whole folder ``staging_folder(path)`` at ``path`` in place of the folder there.
    A folder cannot be renamed over another, so the old one goes aside first (``.<name>.old``)
    and a kill between the two renames leaves no ``path``: ``replaced_folder`` finds its folder
    then, and ``finish_replace`` completes the replace."""
    _swap_in(staging_folder(path), path)


def replaced_folder(path: Path) -> Path:
    """The folder at ``path``; where a ``replace_folder`` into it was stopped between its
    renames (``path`` missing, its old folder aside), the whole new folder that was to replace
    it, else the old one."""
    if path.exists() or not _aside(path).exists():
        return path
    staged = staging_folder(path)
    return staged if staged.is_dir() else _aside(path)


def finish_replace(path: Path) -> None:
    """Completes a ``replace_folder`` into ``path`` that a kill stopped between its renames
    (``replaced_folder`` goes to ``path``) and removes an old folder it left aside."""
    found = replaced_folder(path)
    if found != path:
        os.replace(found, path)
    shutil.rmtree(_aside(path), ignore_errors=True)


def _swap_in(new: Path, path: Path) -> None:
    """Puts folder ``new`` at ``path``: the folder there goes aside first (``.<name>.old``), so
    a kill leaves no half-deleted folder, only a moment between two renames without one."""
    old = _aside(path)
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    try:
        os.replace(new, path)
    except OSError:  # the new folder did not land: the old one goes back (a kill leaves it aside)
        if old.is_dir() and not path.exists():
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (whoever owns it)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    return True


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def _remove_orphans(path: Path) -> None:
    """Removes the temporaries of ``path`` that a killed writer left (its process is gone):
    a process stopped by SIGKILL runs no cleanup."""
    prefix = _tmp_prefix(path)
    for entry in path.parent.iterdir():
        pid = entry.name[len(prefix):]
        if entry.name.startswith(prefix) and pid.isdigit() and not process_alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def atomic_write(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


class CsvRows:
    """A CSV file of result rows kept whole on disk: each ``add`` rewrites it atomically, so an
    interrupted job leaves every finished row and a rerun can read them back. ``numbers``:
    column → ``int`` or ``float``, what a non-empty value of that column must parse as;
    ``filled``: row → the columns of ``numbers`` that such a row holds a value in (a row's
    seed always, its metrics when it finished); ``renamed``: a column's earlier name → its
    name now (a file written before is read under the new names, and rewritten with them)."""

    def __init__(self, path: Path, columns: list[str], numbers: dict[str, type] | None = None,
                 filled: Callable[[dict[str, str]], tuple[str, ...]] = lambda row: (),
                 renamed: dict[str, str] | None = None):
        self.path, self.columns = path, columns
        self.rows: list[dict[str, str]] = []
        if path.exists():
            try:
                with path.open(newline="") as handle:
                    reader = csv.DictReader(handle)
                    found = reader.fieldnames or []
                    if [(renamed or {}).get(name, name) for name in found] != columns:  # another command's, or cut
                        raise UserError(f"{path}: not a results file of this command (its columns: "
                                        f"{', '.join(found or ['none'])}); choose another --out")
                    reader.fieldnames = columns
                    for row in reader:
                        self.rows.append(_checked_row(row, reader.line_num, path, numbers or {}, filled))
            except (UnicodeDecodeError, csv.Error) as err:
                raise UserError(f"{path}: not a readable results file ({reason(err, typed=True)}); choose another "
                                "--out") from None

    def add(self, row: dict[str, object]) -> dict[str, str]:
        """Appends ``row`` (missing or None columns empty) and rewrites the file; the row as stored."""
        stored = {k: "" if row.get(k) is None else str(row[k]) for k in self.columns}
        self.rows.append(stored)
        self._write()
        return stored

    def drop(self, which: Callable[[dict[str, str]], bool]) -> None:
        """Leaves out the rows ``which`` is true of and rewrites the file (when any was)."""
        kept = [row for row in self.rows if not which(row)]
        if len(kept) < len(self.rows):
            self.rows = kept
            self._write()

    def _write(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, text.getvalue())


def _checked_row(row: dict[str, str], line: int, path: Path, numbers: dict[str, type],
                 filled: Callable[[dict[str, str]], tuple[str, ...]]) -> dict[str, str]:
    """``row`` (line ``line`` of ``path``); a UserError when it was cut short or runs long, or a
    column of ``numbers`` holds no number of its type, or is empty and in ``filled(row)`` (a
    damaged file: callers parse them)."""
    values = [v for k, v in row.items() if k is not None and v is not None] + (row.get(None) or [])  # None: csv's
    expected = len(row) - (None in row)  # a short row's missing values and a long row's extra ones
    if len(values) != expected:
        raise UserError(f"{path}:{line}: {len(values)} fields, expected {expected} (a damaged results file); choose "
                        "another --out")
    required = filled(row)
    for column, kind in numbers.items():
        try:
            if row.get(column) or column in required:
                kind(row[column])
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise UserError(f"{path}:{line}: column {column}: not {what}: {row[column]!r} (a damaged results file); "
                            "choose another --out") from None
    return row
