"""``trainer.num_threads``: ``auto`` uses the cores the process may run on; a warning when
the machine's load average is above the machine's cores."""

import logging
import os

import pytest
import torch

from ctr.recipe import recipe_from_dict
from ctr.train import placement


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_auto_is_the_default_and_uses_the_affinity(monkeypatch):
    assert recipe_from_dict({}).trainer.num_threads == "auto"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    placement.use_threads("auto")
    assert torch.get_num_threads() == 3
    placement.use_threads(1)
    assert torch.get_num_threads() == 1


def test_an_oversubscribed_machine_is_reported(monkeypatch, caplog):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    with caplog.at_level(logging.WARNING, logger="ctr.train"):
        placement.use_threads("auto")
    assert "oversubscribed: load average 5.0 over the machine's 2 cores" in caplog.text
    caplog.clear()
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.5, 1.5))
    with caplog.at_level(logging.WARNING, logger="ctr.train"):
        placement.use_threads("auto")
    assert "oversubscribed" not in caplog.text
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    with caplog.at_level(logging.WARNING, logger="ctr.train"):
        placement.use_threads(1)  # one thread is already the advice
    assert "oversubscribed" not in caplog.text


def test_num_threads_takes_a_number_auto_or_null():
    assert recipe_from_dict({"trainer": {"num_threads": 2}}).trainer.num_threads == 2
    assert recipe_from_dict({"trainer": {"num_threads": None}}).trainer.num_threads is None


def test_more_threads_than_cores_use_the_cores_with_a_warning(monkeypatch, caplog):
    """trainer.num_threads: 1000000000 aborted the process in libgomp ("Out of memory
    allocating 216000001344 bytes"); a saved run's count stays usable on a smaller machine."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="ctr.train"):
        placement.use_threads(1_000_000_000)
    assert torch.get_num_threads() == 2
    assert "trainer.num_threads: 1000000000 is more than the 2 cores this process may run on; using 2" in caplog.text


def test_the_load_is_compared_with_the_machines_cores_not_this_process_share(monkeypatch, caplog):
    """A bench cell pinned to 2 of 4 cores (``--jobs 2``) warned "oversubscribed" at a load of
    4.0 (its sibling's and its own threads): the load average is the whole machine's."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0, 4.0, 4.0))
    with caplog.at_level(logging.WARNING, logger="ctr.train"):
        placement.use_threads("auto")
    assert torch.get_num_threads() == 2 and "oversubscribed" not in caplog.text
    monkeypatch.setattr(os, "getloadavg", lambda: (4.5, 4.5, 4.5))
    with caplog.at_level(logging.WARNING, logger="ctr.train"):
        placement.use_threads("auto")
    assert "oversubscribed: load average 4.5 over the machine's 4 cores" in caplog.text
