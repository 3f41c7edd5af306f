"""Where DeepSpeed runs: the accelerator, the process group, and the directory its compiled ops live in.

DeepSpeed compiles some ops (on CPU ranks its shared-memory collective) with
``torch.utils.cpp_extension``, under ``$TORCH_EXTENSIONS_DIR`` or else a per-user cache shared by
every checkout and environment. :func:`init_distributed` points ``TORCH_EXTENSIONS_DIR`` at
``<sys.prefix>/torch_extensions`` when it is unset, so each virtual environment owns its build
(``make install`` builds it there once, with :func:`build_deepspeed_ops`)::

    python -c "from fmrilm.device import build_deepspeed_ops; build_deepspeed_ops()"

A build holds ``<dir>/<op>/lock`` and every other process waits, with no output and no time-out,
until that file is gone; a build killed half-way leaves it forever. So before DeepSpeed starts,
:func:`wait_for_op_builds` says what it is waiting for and refuses a lock no live process holds,
naming the command that clears it.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from pathlib import Path

import torch

from fmrilm.errors import InputError

# When no process table can be read (not Linux), a lock this old is taken to be left by a dead build:
# the CPU op builds in 45-80 s here.
STALE_LOCK_AGE_S = 300
RELEASE_S = 0.2


def extensions_dir() -> Path:
    """``$TORCH_EXTENSIONS_DIR``, set to ``<sys.prefix>/torch_extensions`` first if it is unset and the
    environment is writable (a system Python keeps torch's per-user default)."""
    own = Path(sys.prefix) / "torch_extensions"
    if "TORCH_EXTENSIONS_DIR" not in os.environ and os.access(sys.prefix, os.W_OK):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(own)
    if "TORCH_EXTENSIONS_DIR" in os.environ:
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def lock_holders(lock: Path) -> list[int] | None:
    """Ids of this user's processes that hold `lock` open (a build keeps it open until it ends), or
    None where there is no ``/proc`` to ask."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = os.path.realpath(lock)
    holders = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:  # another user's process, or one that just ended
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    holders.append(int(pid_dir.name))
                    break
            except OSError:
                continue
    return holders


def live_op_build_locks(root: Path) -> dict[Path, list[int] | None]:
    """Build locks under `root` held by a running build (lock → its holders, None if unknown).

    Raises InputError naming a lock no live process holds (or, without ``/proc``, one older than
    ``STALE_LOCK_AGE_S``), with the command that clears it, instead of letting DeepSpeed wait on it
    forever.
    """
    live = {}
    # <dir>/<op>/lock under an explicit TORCH_EXTENSIONS_DIR; torch's own default adds a
    # <python>_<accelerator>/ level
    for lock in sorted({*Path(root).glob("*/lock"), *Path(root).glob("*/*/lock")}):
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:  # the build finished meanwhile
            continue
        holders = lock_holders(lock)
        if holders or (holders is None and age < STALE_LOCK_AGE_S):
            live[lock] = holders
            continue
        # A finishing build closes the lock before deleting it: look again after that instant.
        time.sleep(RELEASE_S)
        if not lock.exists() or lock_holders(lock):
            continue
        owner = "no running process holds it" if holders == [] else f"{age:.0f} s old"
        raise InputError(lock, "lock", f"left by a DeepSpeed op build that no longer runs ({owner}); DeepSpeed "
                                       f"would wait for it forever. Clear it with: rm {shlex.quote(str(lock))}")
    return live


def wait_for_op_builds(root: Path, poll_s: float = 1.0) -> None:
    """Return once no op build holds a lock under `root`, saying what it waits for; raise InputError
    as soon as a lock turns out stale (its build died while we waited)."""
    announced = set()
    while live := live_op_build_locks(root):
        for lock, holders in live.items():
            if lock not in announced:
                by = f", held by pid {', '.join(map(str, holders))}" if holders else ""
                print(f"waiting for the DeepSpeed op build (lock {lock}{by})", file=sys.stderr, flush=True)
                announced.add(lock)
        time.sleep(poll_s)


def prepare_op_builds() -> None:
    """Before DeepSpeed is imported: its accelerator (chosen once, at first use) and its op directory."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    wait_for_op_builds(extensions_dir())


def build_deepspeed_ops() -> None:
    """Compile the CPU shared-memory collective now (what ``make install`` runs), not in a first stage."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    prepare_op_builds()
    from deepspeed.accelerator import get_accelerator

    get_accelerator().create_op_builder("ShareMemCommBuilder").load()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain_process() -> bool:
    """True unless a launcher set up this rank. A child process inherits the 1-rank variables its
    parent set for itself (marked by FMRILM_OWN_GROUP_PORT); those must not be mistaken for a launch."""
    return "RANK" not in os.environ or os.environ.get("FMRILM_OWN_GROUP_PORT") == os.environ.get("MASTER_PORT")


def share_cpu_threads() -> None:
    """CPU ranks of one node split its cores: each takes cores ÷ local ranks threads unless
    ``OMP_NUM_THREADS`` says otherwise. torch gives every process all cores, and two 2-thread ranks on
    2 cores thrash (measured here: 2 ranks × 1 thread move 1.23× the tokens of 1 rank × 2 threads)."""
    # deepspeed's launcher exports LOCAL_SIZE (and OMP_NUM_THREADS only with --bind_cores_to_rank),
    # torchrun LOCAL_WORLD_SIZE
    env = os.environ
    local = int(env.get("LOCAL_SIZE") or env.get("LOCAL_WORLD_SIZE") or 1)
    if env["DS_ACCELERATOR"] == "cpu" and local > 1 and "OMP_NUM_THREADS" not in env:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))  # the cores this process may use


def init_distributed() -> None:
    """Join the launcher's process group, or make a 1-rank group when run as a plain process."""
    prepare_op_builds()
    import deepspeed

    if torch.distributed.is_initialized():
        return
    if _plain_process():  # plain `python -m ...`: a world of one, kept for the process's life
        port = str(free_port())
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                          FMRILM_OWN_GROUP_PORT=port)
    backend = "nccl" if torch.cuda.is_available() and os.environ["DS_ACCELERATOR"] == "cuda" else "gloo"
    share_cpu_threads()
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
