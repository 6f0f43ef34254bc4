"""A distributed checkpoint whose save a kill stopped between its two renames (``last``
moved aside to ``.last.old``, the whole new ``.last.tmp`` not yet in its place) is still the
run's checkpoint: ``--resume`` finds something to resume and reads the new one's state. A
checkpoint folder that lacks a file is refused naming it."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from ctr.errors import UserError
from ctr.train.checkpoints import (
    OPTIMIZERS_FILE, STATE_FILE, check_resumable, check_whole, holds_distributed_checkpoints, optimizers_misfit,
    read_state,
)
from ctr.train.rundir import RunDir
from ctr.train.saved import best_checkpoint


def checkpoint(path, step):
    """A distributed checkpoint folder at ``path`` whose ctr.json says ``step``."""
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(b"dcp")
    (path / STATE_FILE).write_text(json.dumps({"step": step, "world_size": 2, "sharded": True}))


def test_a_save_stopped_between_its_renames_leaves_a_run_to_resume_from_the_new_checkpoint(tmp_path):
    run = RunDir(tmp_path / "run")
    checkpoint(run.checkpoints / ".last.old", 10)
    checkpoint(run.checkpoints / ".last.tmp", 20)
    assert run.started
    assert holds_distributed_checkpoints(run.root)
    assert read_state(run.checkpoints / "last")["step"] == 20


def test_a_first_save_killed_before_its_rename_leaves_nothing_to_resume(tmp_path):
    run = RunDir(tmp_path / "run")
    checkpoint(run.checkpoints / ".last.tmp", 10)  # its ranks' files may be half written
    assert not run.started and not holds_distributed_checkpoints(run.root)


def saved_checkpoint(path):
    """A distributed checkpoint folder at ``path`` as 2 processes write it: DCP's index and
    data file of a small state, ctr.json, optimizers.pt and each rank's random-<rank>.pt."""
    dcp.save({"model": {"w": torch.ones(2, 3)}}, checkpoint_id=str(path), no_dist=True)
    (path / STATE_FILE).write_text(json.dumps({"step": 4, "world_size": 2, "sharded": True}))
    torch.save({}, path / OPTIMIZERS_FILE)
    for rank in range(2):
        torch.save({}, path / f"random-{rank}.pt")
    return sorted(p.name for p in path.glob("*.distcp"))


def test_a_checkpoint_lacking_a_file_is_refused_naming_it(tmp_path):
    """A checkpoint folder missing a rank's shards (a file .metadata lists) or optimizers.pt
    was "does not fit this run's model ([Errno 2] ...)" or a bare missing file; one without
    .metadata or ctr.json was no distributed checkpoint at all: --resume on 1 process looked
    for checkpoints/last.ckpt, and on 2 began training again from step 0."""
    path = tmp_path / "run" / "checkpoints" / "last"
    shards = saved_checkpoint(path)
    check_whole(path, optimizers=True)
    (path / OPTIMIZERS_FILE).unlink()
    check_whole(path, optimizers=False)  # an evaluation reads no optimizers
    with pytest.raises(UserError, match=r"last: not a whole distributed checkpoint \(no optimizers.pt\); ctr writes"):
        check_whole(path, optimizers=True)
    (path / shards[0]).unlink()
    with pytest.raises(UserError, match=rf"not a whole distributed checkpoint \(no {shards[0]}\)"):
        check_whole(path, optimizers=False)
    for name in (".metadata", STATE_FILE):
        (path / name).unlink()
        assert holds_distributed_checkpoints(tmp_path / "run")  # --resume takes the distributed loop, which refuses it
        with pytest.raises(UserError, match=rf"last: not a whole distributed checkpoint \(no [^)]*{name}"):
            read_state(path)


def test_a_shard_cut_short_is_refused_naming_it(tmp_path):
    """A .distcp file cut short was "does not fit this run's model (PytorchStreamReader failed
    ...)", as if the recipe had changed."""
    path = tmp_path / "run" / "checkpoints" / "last"
    shard = path / saved_checkpoint(path)[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match=rf"^{path}: not a whole distributed checkpoint \({shard.name} is cut short: "
                                        r"100 of \d+ bytes\); ctr writes"):
        check_whole(path, optimizers=False)


def test_a_stage_checkpoint_makes_a_run_distributed(tmp_path):
    run = tmp_path / "run"
    assert not holds_distributed_checkpoints(run)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")  # a one-process run's
    assert not holds_distributed_checkpoints(run)
    (run / "stages" / "0-search" / "checkpoints" / "last").mkdir(parents=True)
    assert holds_distributed_checkpoints(run)



def test_optimizers_of_another_plan_say_how_to_resume():
    """The advice was to fix distributed.sharding / tables, which --resume does not take."""
    moved = optimizers_misfit(Path("run/checkpoints/last"), saved_world_size=2, world_size=4)
    assert "written on 2 processes, this run has 4: resume it on 2 (trainer.devices × trainer.num_nodes)" in moved
    same = optimizers_misfit(Path("run/checkpoints/last"), saved_world_size=2, world_size=2)
    assert "resume it on" not in same and "distributed.sharding / distributed.tables" in same


def test_a_best_folder_whose_swap_was_stopped_is_read_from_its_whole_copy(tmp_path):
    """Saving a new best folder stopped between its renames (``best`` aside, the new one staged)
    left ``ctr eval`` of the run saying "no checkpoint at .../best"."""
    run = RunDir(tmp_path / "run")
    saved_checkpoint(run.checkpoints / ".best.old")
    saved_checkpoint(run.checkpoints / ".best.tmp")
    assert best_checkpoint(run) == run.checkpoints / ".best.tmp"


def stage_run(tmp_path, finished=("supernet",)):
    """A three-stage distributed run killed in its second stage (``finished``: the stages
    progress.json lists): the first two stages' checkpoint folders whole (the last stage's
    would be the run's ``checkpoints``)."""
    run = RunDir(tmp_path / "run")
    for folder in ("0-supernet", "1-search"):
        for name in ("best", "last"):
            saved_checkpoint(run.stages / folder / "checkpoints" / name)
    run.stage_progress.write_text(json.dumps({"finished": list(finished), "seconds": {}}))
    return run


def one_stage_run(tmp_path):
    """A distributed run of one training killed in it: its last and best folders whole."""
    run = RunDir(tmp_path / "run")
    for name in ("best", "last"):
        saved_checkpoint(run.checkpoints / name)
    return run


@pytest.mark.parametrize("made, lacking, said", [
    (one_stage_run, "checkpoints/best/optimizers.pt", "checkpoints/best: not a whole distributed checkpoint (no "
                                                      "optimizers.pt); ctr writes"),
    (one_stage_run, "checkpoints/best/.metadata",
     "checkpoints/best: not a whole distributed checkpoint (no .metadata)"),
    (one_stage_run, "checkpoints/best", "checkpoints/best: no such checkpoint folder"),
    (stage_run, "stages/1-search/checkpoints/last/.metadata",
     "stages/1-search/checkpoints/last: not a whole distributed checkpoint (no .metadata)"),
    (stage_run, "stages/1-search/checkpoints/best/optimizers.pt",
     "stages/1-search/checkpoints/best: not a whole distributed checkpoint (no optimizers.pt)"),
], ids=["best-optimizers", "best-metadata", "best", "stage-last", "stage-best"])
def test_every_checkpoint_folder_a_resume_reads_is_checked_before_any_work(tmp_path, made, lacking, said):
    """Only checkpoints/last was checked up front: an unfinished stage's last, and the best
    folder the training loads at its end, were refused inside the ranks, or after training."""
    run = made(tmp_path)
    check_resumable(run.root)
    gone = run.root / lacking
    shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    with pytest.raises(UserError, match=rf"^{re.escape(str(run.root / said))}"):
        check_resumable(run.root)


def test_a_finished_stages_checkpoints_are_not_read_by_a_resume(tmp_path):
    """A finished stage is restored from its state.pt: its checkpoint folders are not read."""
    run = stage_run(tmp_path)
    (run.stages / "0-supernet" / "checkpoints" / "last" / ".metadata").unlink()
    check_resumable(run.root)
    run.stage_progress.write_text(json.dumps({"finished": [], "seconds": {}}))
    with pytest.raises(UserError, match=r"0-supernet/checkpoints/last: not a whole distributed checkpoint"):
        check_resumable(run.root)


def test_a_checkpoint_lacking_a_ranks_generators_is_not_resumed(tmp_path):
    """A rank's random-<rank>.pt missing (written on a disk the resuming machine does not see)
    was skipped without a word: the resumed run drew other dropout masks and shuffles."""
    run = one_stage_run(tmp_path)
    (run.checkpoints / "last" / "random-1.pt").unlink()
    with pytest.raises(UserError, match=r"last: not a whole distributed checkpoint \(no random-1.pt\); ctr writes"):
        check_resumable(run.root)
    for rank in range(2):  # an earlier ctr kept torch's generator only, as rng-<rank>.pt
        (run.checkpoints / "last" / f"random-{rank}.pt").unlink(missing_ok=True)
        torch.save(torch.get_rng_state(), run.checkpoints / "last" / f"rng-{rank}.pt")
    check_resumable(run.root)


def test_a_run_set_aside_keeps_what_it_wrote_beside_an_earlier_one_of_its_name(tmp_path):
    """tune and bench compression move a run they train again into ``OUT/stale-runs``: a
    second one of the same name goes beside the first, which stays as it was."""
    from ctr.train.rundir import RunDir

    kept = []
    for text in ("first", "second"):
        run = RunDir(tmp_path / "runs" / "p00-s0")
        run.root.mkdir(parents=True)
        (run.root / "metrics.json").write_text(text)
        kept.append(run.set_aside(tmp_path / "stale-runs"))
    assert kept == [tmp_path / "stale-runs" / "p00-s0", tmp_path / "stale-runs" / "p00-s0-2"]
    assert [(k / "metrics.json").read_text() for k in kept] == ["first", "second"]
    assert not (tmp_path / "runs" / "p00-s0").exists()


@pytest.mark.parametrize("edit, said", [
    ({"sharded": None}, "no 'sharded'"),
    ({"world_size": None}, "no 'world_size'"),
    ({"world_size": "2"}, "'world_size' is '2', not int"),
    ({"sharded": 1}, "'sharded' is 1, not bool"),
    ({"world_size": 0}, "'world_size' is 0, not a count of processes (>= 1)"),
])
def test_a_ctr_json_without_the_placement_every_reader_takes_is_not_ctrs(tmp_path, edit, said):
    """A ctr.json (an object) lacking ``sharded`` or ``world_size`` was a KeyError traceback
    from ``ctr eval``, ``predict`` and ``export`` (and a resume); one holding them as another
    type was read as they are."""
    run = RunDir(tmp_path / "run")
    saved_checkpoint(run.checkpoints / "best")
    state = run.checkpoints / "best" / STATE_FILE
    info = {**json.loads(state.read_text()), **edit}
    state.write_text(json.dumps({key: value for key, value in info.items() if value is not None}))
    with pytest.raises(UserError) as refused:
        best_checkpoint(run)
    assert str(refused.value) == f"{state}: cut short or not ctr's (ValueError: {said}); restore it, or train a new run"
