"""Shared fixtures: the Schaefer-100 atlas, one tiny synthetic task world per test session, a dead pid."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tiny_configs import tiny_config

from fmrilm.brain.atlas import Atlas


@pytest.fixture(scope="session")
def atlas() -> Atlas:
    return Atlas.schaefer(100)


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has exited (what a killed writer's leftovers are named after)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="session")
def tiny_task_world(tmp_path_factory):
    """Path of a task dataset generated once from the shipped ``task_world_tiny`` config."""
    from fmrilm.brain.task_world import TaskWorldConfig, generate_task_world
    from fmrilm.config import load_config

    cfg = load_config(TaskWorldConfig, tiny_config("task_world_tiny"))
    return generate_task_world(cfg, tmp_path_factory.mktemp("task_world") / "tiny")
