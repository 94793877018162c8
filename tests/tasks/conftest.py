"""Fixtures shared by the task tests that opt in to them."""

from __future__ import annotations

import pytest
import torch

from tarot_select.tasks import get_task


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for the module (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): small models train fastest that way and do
    not stall on a busy machine (two threads on a loaded two-core machine made one training
    10x slower). The previous count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small(request, tmp_path_factory):
    """The test module's ``SMALL`` task block (``kind`` included) prepared once with seed 0:
    ``(task, data, folder)``."""
    block = request.module.SMALL
    task = get_task(block["kind"], block, seed=0)
    folder = tmp_path_factory.mktemp(block["kind"])
    task.prepare(folder)
    return task, task.load(folder), folder
