"""DeepSpeed's op directory: owned by the environment, and a stale build lock is reported, not waited on."""

import os
import re
import subprocess
import sys
import threading
import time

import pytest

from fmrilm.device import extensions_dir, live_op_build_locks, wait_for_op_builds
from fmrilm.errors import InputError


def hold_lock_in_child(lock):
    """A process that holds `lock` open the way torch's FileBaton does while it builds."""
    code = ("import os, sys, time; os.open(sys.argv[1], os.O_CREAT | os.O_EXCL); print('held', flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_each_environment_gets_its_own_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert extensions_dir() == tmp_path / "torch_extensions"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "chosen"))  # an explicit choice is kept
    assert extensions_dir() == tmp_path / "chosen"


def test_a_lock_left_by_a_killed_build_is_reported_with_the_command_to_clear_it(tmp_path):
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    child = hold_lock_in_child(lock)
    try:
        assert live_op_build_locks(tmp_path) == {lock: [child.pid]}  # a running build: wait for it
    finally:
        child.kill()
        child.wait()
    assert lock.exists()  # what a kill during the build leaves behind
    with pytest.raises(InputError, match=f"no running process holds it.*Clear it with: rm {re.escape(str(lock))}$"):
        live_op_build_locks(tmp_path)
    with pytest.raises(InputError, match="lock"):  # and the wait gives up at once instead of hanging
        wait_for_op_builds(tmp_path, poll_s=0.01)


def test_waiting_on_a_live_build_says_what_it_waits_for(tmp_path, capsys):
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    fd = os.open(lock, os.O_CREAT | os.O_EXCL)

    def finish_build():
        time.sleep(0.3)
        os.close(fd)
        lock.unlink()

    builder = threading.Thread(target=finish_build)
    builder.start()
    wait_for_op_builds(tmp_path, poll_s=0.02)
    builder.join()
    err = capsys.readouterr().err
    assert f"waiting for the DeepSpeed op build (lock {lock}, held by pid {os.getpid()})" in err
    assert live_op_build_locks(tmp_path) == {}
