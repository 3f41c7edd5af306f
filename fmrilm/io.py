"""Atomic, pickle-free file writing and reading shared by every stage.

Every artifact is written to a temporary name in the same directory and renamed into place,
so a crash never leaves a truncated file under a final name.

Paths recorded inside a run directory (:func:`portable_path`) are relative to the recording file's
directory when they point into the same run, so a moved or copied run uses its own artifacts;
:func:`recorded_path` reads them back (and the absolute paths older versions wrote).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Move a finished directory onto `dst`, replacing any old one with two renames (never half of each)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a scratch directory that replaces `out_dir` only if the block succeeds.

    Raises InputError before anything is written when `out_dir` exists and `overwrite` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputError(out_dir, "out", "already exists (pass overwrite=True / --force to replace it)")
    tmp = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, "json", f"unreadable JSON ({err})") from None


def write_jsonl(path: str | Path, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=_json_default) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "missing")
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise InputError(path, f"line {lineno}", f"unreadable JSON ({err})") from None
    return rows


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def load_npy(path: str | Path, mmap: bool = True) -> np.ndarray:
    """Load a .npy file without pickle; memory-mapped by default.

    Raises InputError for a missing, empty, truncated or pickled file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "missing")
    if path.stat().st_size == 0:  # numpy would say only "EOFError: No data left in file"
        raise InputError(path, "npy", "empty file (0 bytes): not a .npy array")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        raise InputError(path, "npy", f"unreadable array ({err})") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


RUN_MARKER = "pipeline_config.yaml"  # written by `fmrilm pipeline` at the root of every run directory


def run_root(path: str | Path) -> Path | None:
    """The run directory holding `path` (its nearest ancestor with :data:`RUN_MARKER`), or None."""
    for parent in Path(path).resolve().parents:
        if (parent / RUN_MARKER).is_file():
            return parent
    return None


def portable_path(target: str | Path, directory: str | Path) -> str:
    """`target` as a file in `directory` records it.

    Relative to `directory` when both lie in one run directory (a moved run then finds its own
    artifact, a copied run never reaches back into the original); absolute otherwise (an external
    input such as a user's ``/models/Llama-3.1-8B``, or an export made outside any run).
    """
    target, directory = Path(target).resolve(), Path(directory).resolve()
    root = run_root(directory / RUN_MARKER)
    if root is not None and target.is_relative_to(root):
        return os.path.relpath(target, directory)
    return str(target)


def recorded_path(recorded: str | Path, directory: str | Path) -> str:
    """A path that a file in `directory` recorded (:func:`portable_path`, or absolute as older versions
    wrote it), as a usable path."""
    if Path(recorded).is_absolute():
        return str(recorded)
    # portable_path measured from the resolved directory, so "../" steps apply to it lexically
    resolved = os.path.normpath(Path(directory).resolve() / recorded)
    # Older versions also wrote paths as given on the command line, relative to the working directory
    # (``runs/demo/task_world``); such a path is taken as written when nothing is at the portable reading.
    if not os.path.exists(resolved) and os.path.exists(recorded):
        return str(Path(recorded).resolve())
    return resolved


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
