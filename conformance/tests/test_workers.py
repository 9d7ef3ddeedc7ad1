"""xdist workers share the cores: torch's threads per worker (``wna16_conformance.plugin.share_cores``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from wna16_conformance.plugin import share_cores, worker_threads


@pytest.mark.parametrize(("workers", "cores", "threads"), [(2, 2, 1), (2, 16, 8), (4, 2, 1), (3, 8, 2), (1, 2, 2)])
def test_each_worker_gets_an_equal_share_of_the_cores(workers: int, cores: int, threads: int) -> None:
    assert worker_threads(workers, cores) == threads


@pytest.fixture
def torch_threads() -> Any:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _worker(count: int) -> Any:
    return SimpleNamespace(workerinput={"workercount": count})


def test_a_worker_sets_its_share(monkeypatch: pytest.MonkeyPatch, torch_threads: None) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    torch.set_num_threads(1)
    share_cores(_worker(2))
    assert torch.get_num_threads() == 4


def test_omp_num_threads_and_the_controller_keep_their_threads(
    monkeypatch: pytest.MonkeyPatch, torch_threads: None
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    torch.set_num_threads(3)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    share_cores(_worker(2))
    assert torch.get_num_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    share_cores(SimpleNamespace())  # no workerinput: the controller, or a run without xdist
    assert torch.get_num_threads() == 3
