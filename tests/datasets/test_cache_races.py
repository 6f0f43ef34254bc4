"""The encoded-data cache against processes racing it: a clean and a preparation publishing an
entry at the name of the one clean removes."""

import fcntl
import os
import shutil
import threading

from ctr.cli import main
from ctr.datasets import cache, prepare, preprocess
from ctr.recipe import recipe_from_dict
from tests.conftest import tiny_recipe


def unfinished_with_a_fresh_copy(tmp_path):
    """An entry made unfinished (its DONE deleted: stale) and a finished copy of it in a
    preparation's temporary folder, ready to be published at its name."""
    entry = prepare(recipe_from_dict(tiny_recipe(tmp_path)).data, progress=False).root
    cache.release(entry)
    fresh = entry.with_name(cache.temporary_name(entry.name))
    shutil.copytree(entry, fresh)
    (entry / cache.DONE).unlink()
    return entry, fresh


def cleaned(tmp_path, capsys) -> str:
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    return capsys.readouterr().out


def test_clean_leaves_a_fresh_entry_published_at_a_stale_ones_name_after_it_looked(tmp_path, capsys, monkeypatch):
    """Clean removed what was at the path of an entry it had found stale: a fresh entry that a
    preparation published there in between (in place of the unfinished one) was removed."""
    entry, fresh = unfinished_with_a_fresh_copy(tmp_path)
    remove_stale = cache.remove_stale
    monkeypatch.setattr(cache, "remove_stale", lambda stale: (preprocess._publish(fresh, entry), remove_stale(stale)))
    out = cleaned(tmp_path, capsys)
    assert (entry / cache.DONE).exists() and not fresh.exists()
    assert f"left {entry.name} (" in out and "unfinished (no DONE); stale no more since clean looked" in out
    assert "0 stale entries" in out and "1 more stale no more" in out
    assert "0 stale entries" in cleaned(tmp_path, capsys) and (entry / cache.DONE).exists()


def test_clean_leaves_a_fresh_entry_published_while_it_waited_for_the_lock(tmp_path, capsys, monkeypatch):
    """Clean opened the stale folder, then waited for its lock: a fresh entry published at its
    name meanwhile was the folder clean renamed away and deleted (the lock held the old one)."""
    entry, fresh = unfinished_with_a_fresh_copy(tmp_path)
    flock, published = fcntl.flock, []

    def published_first(handle, kind):
        if kind == fcntl.LOCK_EX and not published:
            published.append(entry)  # first: the preparation locks the folder it replaces too
            preprocess._publish(fresh, entry)
        flock(handle, kind)

    monkeypatch.setattr(cache.fcntl, "flock", published_first)
    out = cleaned(tmp_path, capsys)
    assert published and (entry / cache.DONE).exists()
    assert f"left {entry.name} (" in out


def test_a_preparation_replaces_an_unfinished_entry_only_once_a_clean_removing_it_is_done(tmp_path):
    """A preparation deleted the unfinished folder at its entry's name without its lock: a clean
    that had checked it under the lock then renamed away the fresh entry put in its place."""
    entry, fresh = unfinished_with_a_fresh_copy(tmp_path)
    with cache.locked(entry, fcntl.LOCK_EX):  # a clean, between its look and its rename
        publish = threading.Thread(target=preprocess._publish, args=(fresh, entry))
        publish.start()
        publish.join(0.5)
        assert publish.is_alive() and not (entry / cache.DONE).exists()
        os.rename(entry, entry.with_name(cache.temporary_name(entry.name)))
    publish.join()
    assert (entry / cache.DONE).exists() and not fresh.exists()


def test_a_clean_on_another_host_never_finds_a_preparations_folder_without_its_lease(tmp_path, capsys, monkeypatch):
    """A preparation made its temporary folder, then wrote its lease in it: a clean on another
    host in that moment, which cannot see the preparing process run, took the folder for a
    stopped preparation's and removed it under the encoding."""
    survived, write_lease = [], cache.write_lease

    def cleaned_elsewhere_first(folder):
        if not survived:
            with monkeypatch.context() as elsewhere:
                elsewhere.setattr(cache, "lease_host", lambda: "otherhost")
                elsewhere.setattr(cache, "process_alive", lambda pid: False)
                assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
            survived.append(folder.is_dir())
        write_lease(folder)

    monkeypatch.setattr(cache, "write_lease", cleaned_elsewhere_first)
    prepared = prepare(recipe_from_dict(tiny_recipe(tmp_path)).data, progress=False)
    assert survived == [True] and (prepared.root / cache.DONE).exists()
    assert "\n0 stale entries" in "\n" + capsys.readouterr().out


def test_clean_counts_an_entry_it_found_read_then_stale_no_more_as_left_not_kept(tmp_path, capsys, monkeypatch):
    """An entry a running process held when clean looked, and that was stale no more once clean
    held its lock, printed ``left`` but was counted as kept for its readers in the summary."""
    entry, fresh = unfinished_with_a_fresh_copy(tmp_path)
    cache.write_lease(entry)  # this process reads it as clean looks
    remove_stale = cache.remove_stale
    monkeypatch.setattr(cache, "remove_stale", lambda stale: (preprocess._publish(fresh, entry), remove_stale(stale)))
    out = cleaned(tmp_path, capsys)
    assert f"left {entry.name} (" in out and "kept" not in out
    summary = f"0 stale entries (0.0 MB) in {entry.parent}; 1 more stale no more or gone since clean looked\n"
    assert out.endswith(summary)


def test_a_preparation_whose_unfinished_folder_a_clean_took_keeps_an_entry_published_meanwhile(tmp_path, monkeypatch):
    """A clean renamed the unfinished folder away while a preparation waited for its lock (so it
    went on with none); another preparation published in the instant after its look at DONE, and
    it removed that finished entry, which the other one reads, to put its own in place."""
    entry, fresh = unfinished_with_a_fresh_copy(tmp_path)
    mine = entry.with_name(cache.temporary_name(entry.name))
    shutil.copytree(fresh, mine)
    (fresh / "theirs").write_text("")
    flock, raced = fcntl.flock, []

    def cleaned_while_waiting(handle, kind):
        if kind == fcntl.LOCK_EX and not raced:  # the clean holding the lock renames the folder away
            os.rename(entry, entry.with_name(cache.temporary_name(entry.name)))
        flock(handle, kind)

    class Racing(type(entry)):
        def exists(self, *args, **kwargs):
            there = super().exists(*args, **kwargs)
            if self.name == cache.DONE and not raced:  # the other preparation publishes right after the look
                raced.append(self)
                preprocess._publish(fresh, entry)
            return there

    monkeypatch.setattr(cache.fcntl, "flock", cleaned_while_waiting)
    preprocess._publish(mine, Racing(entry))
    assert raced and (entry / cache.DONE).exists() and (entry / "theirs").exists()


def test_a_preparation_whose_rename_failed_on_a_folder_a_clean_then_took_publishes(tmp_path, monkeypatch):
    """The rename onto an unfinished folder failed (not empty), and a clean renamed that folder
    away before the look at the name: the preparation raised ``directory not empty`` and failed."""
    entry, fresh = unfinished_with_a_fresh_copy(tmp_path)
    shutil.rmtree(fresh)
    rename, taken = os.rename, []

    def cleaned_after_the_failure(src, dst):
        try:
            rename(src, dst)
        except OSError:
            if not taken:
                taken.append(dst)
                rename(dst, entry.with_name(cache.temporary_name(entry.name)))
            raise

    monkeypatch.setattr(os, "rename", cleaned_after_the_failure)
    prepared = prepare(recipe_from_dict(tiny_recipe(tmp_path)).data, progress=False)
    assert taken == [entry] and prepared.root == entry and (entry / cache.DONE).exists()
