"""The encoded-data cache: where its entries live, what keys them, and which are stale.

An entry is ``<cache_root>/<dataset>-<key>``, where the key hashes what the encoding depends
on (``key_inputs``); ``key.json`` keeps those inputs, so a run can say what changed since, and
``DONE`` marks a finished entry. A preparation writes into a temporary folder named with
``TMP_MARK`` and its process id and renames it into place. A process that reads an entry holds
a lease on it (``hold``): a file ``leases/<host>-<pid>`` in it (``<host>``: the hostname and its pid
namespace, ``lease_host``), removed when the process exits; ``ctr data clean`` keeps a stale entry that a
running process holds.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ctr.atomic import process_alive
from ctr.datasets.source import (DatasetSource, code_change, code_digest, file_digest, file_stamp, keyed_features,
                                 keyed_split, plugin_package)
from ctr.errors import RecipeError, UserError, not_utf8
from ctr.recipe import DataConfig, SplitConfig
from ctr.registry import DATASETS
from ctr.schema import FeatureSpec
from ctr.typed import parse

log = logging.getLogger(__name__)

# 12: a text file's last line without its newline is read in the block it is with it (entries of 11 read it
#     as a batch of its own, which drew its split apart and could move it to another split; a short libsvm
#     file's default fields were read without it; a last line of blanks was dropped, with its newline a bad row);
# 11: blank lines before a text file's header or first row skipped (with on_bad_rows: skip, entries of 10
#     left out a file starting with one as empty); a movielens side file's unreadable line refused (entries
#     of 10 hold its user's or movie's attributes missing); an amazon item mapped to no list refused (entries of 10
#     gave it the category <none>); a featindex naming an index twice refused (entries of 10 read its last line's);
# 10: a libsvm file's form and default fields are read once from the first MiB of training rows (a block of
#     the other form, or a training row with a field unseen there, is a bad row; entries of 9 read them silently);
# 9: amazon lines trimmed (a \r\n file's \r was an empty last item), not UTF-8 a bad row, a byte order
#    mark dropped; a movielens empty rating a bad row (it was left out as a 3); entries of 8 may hold those;
# 8: standardize's std of a column constant up to rounding is 1 (it was the rounding noise: a valid value
#    a little off standardized to ~1e16), standardized values kept inside the float32 range;
# 7: standardize's std merged per batch (entries of 6 may hold a std cancelled to noise, or 1);
#    libsvm fields no feature reads not checked (with on_bad_rows: skip, entries of 6 dropped rows for them);
# 6: a num_ids id read exactly as an int64, a log_square value past its range a bad row, a movielens
#    side file naming a key twice refused (entries of 5 may hold the old encodings);
# 5: file stamps hold the modification time in ns (an entry of 4 names the version, not a changed input);
# 4: a train stream without a test file gives data.split.test of its rows to test
PIPELINE_VERSION = 12
DONE = "DONE"
KEY_FILE = "key.json"
LEASES = "leases"  # an entry's folder of the leases of the processes that read it (``hold``)
TMP_MARK = ".tmp-"
PRIVATE_MARK = ".new"  # a temporary folder's name while its lease is written (``make_leased``)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)  # another user's folder, or read-only
# the names preparation gives: an entry <dataset>-<16 hex digits>, its temporary folder .<entry>.tmp-<pid>-<8 hex digits>
ENTRY_NAME = re.compile(rf"(.+-[0-9a-f]{{16}})|(\..+-[0-9a-f]{{16}}{re.escape(TMP_MARK)}\d+-[0-9a-f]{{8}})")


def key_inputs(source: DatasetSource, features, label, group, split: SplitConfig) -> dict[str, Any]:
    """What the encoding depends on: the pipeline version, the source (its options and its files'
    stamps: ``DatasetSource.fingerprint``), the feature specs (``keyed_features``), label, group
    and the ``split`` keys the rows depend on (``split_keys_read``; the others at their defaults)."""
    return {
        "version": PIPELINE_VERSION,
        "source": source.fingerprint(),
        "features": keyed_features(features),
        "label": label,
        "group": group,
        "split": keyed_split(split, split_keys_read(source, features)),
    }


def split_keys_read(source: DatasetSource, features: list[FeatureSpec]) -> tuple[str, ...]:
    """The ``data.split`` keys the encoded rows depend on: the source's ``split_keys``, and the
    seed where a quantile transform's boundaries are fitted on a sample it draws (``Fitter``)."""
    quantile = any(spec.kind == "numeric" and spec.transform == "quantile" for spec in features)
    return (*source.split_keys(), "seed") if quantile else source.split_keys()


def cache_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(key_blob(inputs).encode()).hexdigest()


def key_blob(inputs: dict[str, Any]) -> str:
    return json.dumps(inputs, sort_keys=True, default=str)


def input_change(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between two sources' fingerprints (``DatasetSource.fingerprint``): an
    input file changed (size or modification time), added or removed, or a dataset plugin's
    code changed; None when neither did."""
    old = {path: (size, mtime) for path, size, mtime in saved.get("files", [])}
    new = {path: (size, mtime) for path, size, mtime in current.get("files", [])}
    for path in sorted(old.keys() | new.keys()):
        if path not in new:
            return f"input {path} is gone"
        if path not in old:
            return f"input {path} is new"
        if old[path][0] != new[path][0]:
            return f"input {path} changed (its size)"
        if old[path] != new[path]:
            seconds, nanoseconds = divmod(old[path][1], 10**9)
            return (f"input {path} changed (its modification time; if its content is as it was, "
                    f"`touch -d @{seconds}.{nanoseconds:09d} {path}` gives it back its stamp)")
    if not _same_code(saved.get("code"), current.get("code")):
        return code_change((current.get("code") or saved.get("code"))[0])
    return None


def _same_code(saved: list[str] | None, current: list[str] | None) -> bool:
    """Whether a plugin's code as a run's key saved it (``plugin_code``: module, digest) is its
    code now: the same, or the digest an earlier ctr took of the module's file alone where the
    module is in a package (which its digest covers now) and that file is as it was."""
    if saved == current:
        return True
    if not saved or not current or saved[0] != current[0] or plugin_package(Path(saved[0])) is None:
        return False
    return saved[1] == file_digest(Path(saved[0]))


def generator_change(saved: dict[str, Any], config: DataConfig) -> str | None:
    """How the rows the generator of ``config``'s generated dataset draws now differ from those
    the generator of ``saved`` (a source's ``fingerprint``, of rows drawn before) drew: its
    version then and now; None when it draws the same rows (``draws_as``), or for data read
    from files."""
    if "generator" not in saved:
        return None
    source = DATASETS.get(config.dataset, "data.dataset").target(config)
    if source.draws_as(saved["generator"]):
        return None
    return (f"{config.dataset} generator version {saved['generator']} drew its rows, and this ctr's version "
            f"{getattr(source, 'generator_version', None)} draws others for its recipe")


def source_fingerprint(config: DataConfig) -> dict[str, Any]:
    """What identifies ``config``'s raw input now (its source's ``fingerprint``): read without
    encoding anything."""
    return DATASETS.get(config.dataset, "data.dataset").target(config).fingerprint()


def cache_root(cache_dir: str | None, key: str = "data.cache_dir") -> Path:
    """The folder of encoded-data entries: ``<cache_dir>/data``, where ``cache_dir`` defaults to
    ``$CTR_CACHE``, else ``~/.cache/ctr``. A UserError names what set the folder (``key`` for
    ``cache_dir``, ``$CTR_CACHE``, the default) when it, its ``data`` or a folder above is a file."""
    if cache_dir:
        base, where = cache_dir, key
    elif os.environ.get("CTR_CACHE"):
        base, where = os.environ["CTR_CACHE"], "$CTR_CACHE"
    else:
        base, where = "~/.cache/ctr", f"the default cache (neither $CTR_CACHE nor {key} set)"
    root = Path(base).expanduser() / "data"
    blocked = _nearest_not_a_folder(root)
    if blocked is not None:
        raise UserError(f"{where}: {blocked}: not a folder")
    return root


def _nearest_not_a_folder(path: Path) -> Path | None:
    """The nearest of ``path`` and the folders above it that exists, when it is not a folder
    (a file: nothing can be made under it); None when it is one."""
    for there in (path, *path.parents):
        if there.exists():
            return None if there.is_dir() else there
    return None


def utf8_cache_root(cache_dir: str | None) -> Path:
    """``cache_root``, refused where its path is not UTF-8 (``CTR_CACHE=/tmp/caf\\xe9``, or
    such a HOME under the default): pyarrow, which writes the entries, encodes UTF-8 names only.
    The error names where the path came from: ``data.cache_dir``, ``$CTR_CACHE`` or ``~/.cache/ctr``."""
    root = cache_root(cache_dir)
    found = not_utf8(str(root))
    if found is not None:
        where = "data.cache_dir" if cache_dir else "$CTR_CACHE" if os.environ.get("CTR_CACHE") else "~/.cache/ctr"
        raise RecipeError(f"{where}: {found[0]}: a name that is not UTF-8 (byte {found[1]:#04x}); "
                          "name another cache folder")
    return root


_held: set[Path] = set()  # the entries this process holds (``hold``): their leases are removed at its exit


def hold(root: Path) -> bool:
    """Leases finished entry ``root`` to this process until it exits (or ``release``s it):
    ``ctr data clean`` keeps an entry a running process holds. False, with nothing held, when
    ``root`` holds no finished entry (none was written yet, or a clean removed it). The look at ``DONE`` and the lease
    are one step against a clean's removal (``locked``)."""
    with locked(root, fcntl.LOCK_SH):
        if not (root / DONE).exists():
            return False
        write_lease(root)
    _held.add(root)
    return True


def write_lease(folder: Path) -> None:
    """Writes this process's lease into entry ``folder`` (a preparation's temporary folder
    holds it before a clean can see it, ``make_leased``: a clean on another host cannot see
    the preparing process run). A
    folder this user cannot write in (another user's cache, a read-only mount) gets none,
    quietly, and a clean of its owner's may remove it under this process; another failure (a
    full disk) warns, as that may too."""
    try:
        (folder / LEASES).mkdir(exist_ok=True)
        (folder / LEASES / _lease_name()).touch()
    except OSError as err:
        level = logging.DEBUG if err.errno in NOT_WRITABLE else logging.WARNING
        log.log(level, "%s: no lease taken (%s); a `ctr data clean` may remove it while this process reads it",
                folder, err)


def release(root: Path) -> None:
    """Removes this process's lease of entry ``root`` (``hold``): a clean may remove it then."""
    with suppress(OSError):  # the entry is gone, or was never this user's to write
        (root / LEASES / _lease_name()).unlink(missing_ok=True)
    _held.discard(root)


def readers(entry: Path, prune: bool = False) -> list[str]:
    """The processes whose leases (``hold``) entry ``entry`` holds and that may run: ``process
    <pid>`` where it runs on this host (``lease_host``), ``process <pid> on host <host> (delete
    <lease> once it has ended)`` for another host's or another pid namespace's (which cannot be seen
    from here). With ``prune``, the leases of this host's processes that are gone (killed: no exit
    removed them) are removed."""
    here, here_name, found = lease_host(), socket.gethostname(), []
    for lease in sorted((entry / LEASES).glob("*-*")):
        host, _, pid = lease.name.rpartition("-")
        if host != here:
            name, _, namespace = host.rpartition("@") if "@" in host else (host, "", "")
            where = f"on host {name}" + (f" in pid namespace {namespace}" if name == here_name else "")
            found.append(f"process {pid} {where} (delete {lease} once it has ended)")
        elif pid.isdigit() and process_alive(int(pid)):
            found.append(f"process {pid}")
        elif prune:
            lease.unlink(missing_ok=True)
    return found


def lease_host() -> str:
    """This process's host as its leases name it: the hostname, and where ``/proc`` tells it, the
    inode of its pid namespace (``<hostname>@<inode>``): containers sharing the host's hostname
    (docker --network host) number their processes in namespaces of their own."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:  # no /proc (macOS)
        return socket.gethostname()
    return f"{socket.gethostname()}@{namespace.partition('[')[2].rstrip(']')}"


def _lease_name() -> str:
    return f"{lease_host()}-{os.getpid()}"


def release_all() -> None:
    """Removes every lease this process holds (``hold``): at its exit, also one by ``os._exit``."""
    for root in list(_held):
        release(root)


atexit.register(release_all)  # a process killed (SIGKILL) leaves its leases: a clean drops those of the dead


@contextmanager
def locked(entry: Path, kind: int) -> Iterator[bool]:
    """Holds lock ``kind`` on folder ``entry`` while the block runs: shared while a reader
    takes its lease, exclusive while a clean looks at the leases and removes the entry, and
    while a preparation replaces an unfinished one. The folder locked is the one at ``entry``
    once the lock is taken (``_lock_handle``). No lock where there is no such folder, or where
    its file system has none. Yields False where nothing was at ``entry`` once the lock was
    tried (removed or renamed away meanwhile: what is there now, if anything, is not locked)."""
    with ExitStack() as held:
        there = True
        try:
            held.callback(os.close, _lock_handle(entry, kind))
        except FileNotFoundError:  # no folder there, or a link to none
            there = os.path.lexists(entry)
        except OSError:  # not a folder, or a file system without locks
            pass
        yield there


def _lock_handle(entry: Path, kind: int) -> int:
    """A handle of the folder at ``entry`` holding lock ``kind``. Where the folder there is
    replaced while this waits for the lock (a preparation published an entry in place of an
    unfinished one), the lock is taken again, on the one there now; an OSError when there is
    none."""
    while True:
        handle = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(handle, kind)
            if _identity(os.fstat(handle)) == _identity(os.stat(entry)):
                return handle
        except BaseException:
            os.close(handle)
            raise
        os.close(handle)


def _identity(stat: os.stat_result) -> tuple[int, int]:
    """Which file ``stat`` is of (its device and inode): a folder renamed keeps it, one put in its place has another."""
    return stat.st_dev, stat.st_ino


@dataclass
class Stale:
    """A cache entry no run will read again, why, its size, and the running processes that
    read it still (``readers``): it is kept while there are any. ``left`` is set by a clean
    that finds it gone or stale no more once it holds its lock (``remove_stale``), saying so:
    it is left then; empty otherwise."""

    path: Path
    reason: str
    bytes: int
    readers: list[str]
    left: str = ""


def stale_entries(root: Path) -> list[Stale]:
    """The entries of cache folder ``root`` (``cache_root``) that are stale: unfinished
    preparations whose process is gone, entries of another pipeline version (or written before
    entries recorded their key), entries of another version of a generated dataset's
    generator, entries whose input files changed, were deleted or gained one, and entries an older
    ctr keyed otherwise: by a recipe key their rows do not depend on (their recipe keys another
    entry now), or with a ``share_with`` on a numeric feature, which no recipe takes now (``_refused``).
    What is not named as preparation names an entry is left alone: a ``data.cache_dir`` of a
    project folder puts the entries in its ``data/``, beside the raw files."""
    stale = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if not ENTRY_NAME.fullmatch(entry.name):
            continue
        reason = _staleness(entry)
        if reason:
            stale.append(Stale(entry, reason, _folder_bytes(entry), readers(entry)))
    return stale


def remove_stale(stale: list[Stale]) -> None:
    """Removes each stale entry (a file in the cache folder too) but one a running process
    holds (``hold``): its ``readers`` are updated then, and it is kept (the leases of readers
    gone removed); and but one stale no more by then (``left`` says so): a preparation may have
    published a fresh entry at its name since ``stale_entries`` looked. What cannot be removed
    raises (an OSError naming it), nothing is reported removed that is not."""
    for entry in stale:
        if entry.path.is_dir() and not entry.path.is_symlink():
            doomed = _renamed_away(entry)
            if doomed is not None:
                shutil.rmtree(doomed)
        else:
            entry.path.unlink(missing_ok=True)


def _renamed_away(entry: Stale) -> Path | None:
    """Renames stale entry ``entry`` to a temporary folder's name (``temporary_name``: a later
    clean removes it were this one stopped) and returns that, unless what is at its path is stale
    no more (``left`` set) or a running process holds it (``readers`` updated): None then. Under
    the entry's lock, so no lease is taken and no entry published in between; the entry leaves
    its name in one step, so a reader the lock does not hold off (on another NFS client) finds
    it whole or not at all, never half deleted."""
    with locked(entry.path, fcntl.LOCK_EX):
        there = os.path.lexists(entry.path)
        if not there or not _staleness(entry.path):
            entry.left = "stale no more since clean looked" if there else "gone since clean looked"
            return None
        entry.readers = readers(entry.path, prune=True)
        if entry.readers:
            return None
        doomed = entry.path.with_name(temporary_name(entry.path.name))
        os.rename(entry.path, doomed)
    return doomed


def make_leased(tmp: Path) -> None:
    """Makes a preparation's temporary folder ``tmp`` (``temporary_name``) holding this
    process's lease (``write_lease``) from the moment a clean can see it: made under a private
    name no clean looks at (``ENTRY_NAME``), leased, then renamed. A clean on another host,
    which cannot see this process run, removes a temporary folder it finds without a lease."""
    private = tmp.with_name(f"{tmp.name}{PRIVATE_MARK}")
    private.mkdir()
    try:
        write_lease(private)
        os.rename(private, tmp)
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise


def temporary_name(entry: str) -> str:
    """The name of a temporary folder of this process for entry ``entry`` (``<dataset>-<key>``,
    or one of its temporary folders): ``.<entry>.tmp-<pid>-<8 hex digits>``."""
    return f".{entry.removeprefix('.').split(TMP_MARK)[0]}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _staleness(entry: Path) -> str | None:
    if not entry.is_dir():
        return "not an entry (a file in the cache folder)"
    if TMP_MARK in entry.name:
        pid = entry.name.split(TMP_MARK, 1)[1].split("-")[0]
        return None if pid.isdigit() and process_alive(int(pid)) else "unfinished (no process of this host prepares it)"
    if not (entry / DONE).exists():
        return "unfinished (no DONE)"
    if not (entry / KEY_FILE).exists():
        return "written by an older ctr (no key.json)"
    inputs = _saved_key(entry / KEY_FILE)
    if inputs is None:
        return f"its {KEY_FILE} cannot be read (damaged)"
    if inputs.get("version") != PIPELINE_VERSION:
        return f"pipeline version {inputs.get('version')} (now {PIPELINE_VERSION})"
    generator = _generator_change(entry.name, inputs["source"])
    if generator:
        return generator
    for path, size, mtime in inputs["source"].get("files", []):
        file = Path(path)
        if not file.exists():
            return f"input {file} was deleted"
        if file_stamp(file) != (size, mtime):
            return f"input {file} changed"
    if "code" in inputs["source"]:
        module, digest = inputs["source"]["code"]
        if not Path(module).is_file() or code_digest(Path(module)) != digest:
            return code_change(module)
    return _rekeyed(entry.name, inputs)


def _saved_key(file: Path) -> dict[str, Any] | None:
    """The inputs an entry's ``key.json`` holds (``key_inputs``); None when it is not whole:
    unreadable, not JSON, or not a mapping of the source with its files' stamps (path, size,
    modification time) and a plugin's code (module, digest)."""
    try:
        inputs = json.loads(file.read_text())
    except (OSError, ValueError):  # a folder, cut short, or not UTF-8 text
        return None
    source = inputs.get("source") if isinstance(inputs, dict) else None
    if not isinstance(source, dict):
        return None
    files, code = source.get("files", []), source.get("code", ["", ""])
    stamps = isinstance(files, list) and all(_is_stamp(item) for item in files)
    return inputs if stamps and isinstance(code, list) and len(code) == 2 else None


def _is_stamp(item: Any) -> bool:  # noqa: ANN401 (a value read from JSON)
    """Whether ``item`` is a file's stamp as ``key.json`` keeps it: [path, size, mtime]."""
    return (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
            and all(isinstance(value, int) for value in item[1:]))


def _rekeyed(name: str, inputs: dict[str, Any]) -> str | None:
    """Where the recipe whose ``inputs`` (``key_inputs``) keyed entry ``name`` keys another
    entry now, or none (``_refused``): an input file new in its folder (``input_change``), or an
    older ctr keyed it (by a key its rows do not depend on, say); None when it keys this one, or its recipe
    cannot be built again (a plugin no longer installed)."""
    dataset, _, key = name.rpartition("-")
    if dataset not in DATASETS:
        return None
    registered = DATASETS.get(dataset)
    try:  # the split as the key held it: the options hold the source's split keys only
        options = {**inputs["source"]["options"], "split": inputs["split"]}
        config = parse(registered.config or DataConfig, options, "data")
        features = [parse(FeatureSpec, spec, "data.features") for spec in inputs["features"]]
        current = key_inputs(registered.target(config), features, inputs["label"], inputs["group"], config.split)
    except Exception:  # a source (a plugin's) that no longer builds from its saved options cannot tell
        return None
    refused = _refused(features)
    if refused:
        return f"keyed by an older ctr: {refused}"
    now = cache_key(current)[:16]
    if now == key:
        return None
    rekeyed = f"keyed by an older ctr: its recipe keys {dataset}-{now} now"
    return input_change(inputs["source"], current["source"]) or rekeyed


def _refused(features: list[FeatureSpec]) -> str | None:
    """What of ``features``, as an older ctr's key holds them, no recipe takes now (an entry no
    recipe keys, though it rebuilds to its own key): ``share_with`` on a numeric feature, which
    that ctr ignored (``tables_of`` refuses it); None where a recipe takes them all."""
    for i, spec in enumerate(features):
        if not spec.is_sparse and spec.share_with:
            return f"data.features[{i}].share_with on numeric feature {spec.name!r}, which no recipe takes now"
    return None


def _generator_change(name: str, source: dict[str, Any]) -> str | None:
    """How the generator of a generated dataset's entry ``name`` (``<dataset>-<key>``) differs
    from the registered one's now (its ``generator_version``, in ``source``, its saved
    fingerprint); None when it is the same, or for data read from files."""
    if "generator" not in source:
        return None
    dataset = name.rsplit("-", 1)[0]
    if dataset not in DATASETS:  # a plugin no longer installed: its files' stamps say the rest
        return None
    now = getattr(DATASETS.get(dataset).target, "generator_version", None)
    if source["generator"] == now:
        return None
    return f"{dataset} generator version {source['generator']} (now {now})"


def _folder_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return folder.lstat().st_size
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
