"""Dataset directories: memory-mappable arrays, JSON/JSONL tables and a manifest.

Every generated or imported dataset (task world, rest population, imported NSD) is one directory::

    DIR/manifest.json   kind, format version, atlas identity, seed, arrays (shape, dtype), versions
    DIR/config.yaml     the resolved config that produced it
    DIR/<name>.npy      arrays (np.load(..., mmap_mode="r"), never pickled)
    DIR/<name>.jsonl    tables, one JSON object per line
    DIR/<name>.json     small JSON documents

A writer builds the dataset in ``DIR.partial-<pid>`` and renames it onto ``DIR`` only when
``finish()`` succeeds, so an interrupted run never leaves a half dataset under the final name.
A killed writer does leave its ``DIR.partial-<pid>`` (or ``DIR.old-<pid>`` of ``fmrilm.io.replace_dir``)
behind; :func:`sweep_dead_partials` removes those whose process is gone.
Large arrays are created as memmaps and filled in chunks, so NSD-scale worlds stream to disk.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from pathlib import Path

import numpy as np

from fmrilm.config import save_config
from fmrilm.errors import InputError
from fmrilm.io import load_npy, read_json, read_jsonl, replace_dir, write_json, write_jsonl

FORMAT_VERSION = 1
# Scratch names of the atomic writers (DatasetWriter, fmrilm.io.atomic_dir / replace_dir, model saves).
SCRATCH_RE = re.compile(r"\.(partial|old)-(\d+)$")


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("fmrilm", "numpy", "torch", "nilearn", "brainspace", "nibabel"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (on this machine; one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_partials(root) -> list[Path]:
    """Delete the ``*.partial-<pid>`` / ``*.old-<pid>`` leftovers under `root` whose writer process is
    gone (a killed world build leaves gigabytes); returns what was removed. Live writers' are kept."""
    removed = []
    for parent, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            match = SCRATCH_RE.search(name)
            if match is None or pid_alive(int(match.group(2))):
                continue
            path = Path(parent) / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                dirs.remove(name)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class DatasetWriter:
    """Write a dataset directory atomically.

    Parameters
    ----------
    out_dir : path
        Final directory. If it exists, `overwrite` must be True (it is replaced only at finish()).
    kind : str
        What the dataset is ("task", "rest", "nsd", ...); readers check it.
    atlas : dict
        ``Atlas.describe()`` of the atlas the vertex/parcel axes refer to.
    config : dataclass or dict
        Resolved config, saved as config.yaml.
    seed : int
    """

    def __init__(self, out_dir, kind: str, atlas: dict, config, seed: int, overwrite: bool = False):
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite:
            raise InputError(self.out_dir, "out", "already exists (pass --force / overwrite=True to replace it)")
        self.tmp_dir = self.out_dir.with_name(f"{self.out_dir.name}.partial-{os.getpid()}")
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)
        self.manifest = {"kind": kind, "format_version": FORMAT_VERSION, "atlas": atlas, "seed": int(seed),
                         "arrays": {}, "tables": {}, "versions": package_versions(),
                         "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        save_config(config, self.tmp_dir / "config.yaml")
        self._memmaps: dict[str, np.memmap] = {}

    def create_array(self, name: str, shape, dtype="float32") -> np.memmap:
        """A writable memmap to fill in chunks (streamed to disk, never all in memory)."""
        arr = np.lib.format.open_memmap(self.tmp_dir / f"{name}.npy", mode="w+", dtype=np.dtype(dtype),
                                        shape=tuple(int(s) for s in shape))
        self._memmaps[name] = arr
        self.manifest["arrays"][name] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
        return arr

    def write_array(self, name: str, array) -> None:
        array = np.asarray(array)
        self.create_array(name, array.shape, array.dtype)[...] = array

    def write_table(self, name: str, rows: list[dict]) -> None:
        write_jsonl(self.tmp_dir / f"{name}.jsonl", rows)
        self.manifest["tables"][name] = len(rows)

    def write_json(self, name: str, obj) -> None:
        write_json(self.tmp_dir / f"{name}.json", obj)

    def finish(self, **extra) -> Path:
        """Flush arrays, write the manifest and move the directory into place."""
        for arr in self._memmaps.values():
            arr.flush()
        self._memmaps.clear()
        self.manifest.update(extra)
        write_json(self.tmp_dir / "manifest.json", self.manifest)
        replace_dir(self.tmp_dir, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        self._memmaps.clear()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


class Dataset:
    """Read a dataset directory written by :class:`DatasetWriter` (arrays are memory-mapped)."""

    def __init__(self, path, kind: str | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputError(self.path, "dataset", "directory missing")
        self.manifest = read_json(self.path / "manifest.json")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise InputError(self.path / "manifest.json", "format_version",
                             f"{self.manifest.get('format_version')} is not {FORMAT_VERSION}")
        if kind is not None and self.manifest.get("kind") != kind:
            raise InputError(self.path / "manifest.json", "kind", f"{self.manifest.get('kind')!r}, expected {kind!r}")

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def atlas_info(self) -> dict:
        return self.manifest["atlas"]

    @property
    def config(self) -> dict:
        import yaml

        return yaml.safe_load((self.path / "config.yaml").read_text())

    def array(self, name: str, mmap: bool = True) -> np.ndarray:
        spec = self.manifest["arrays"].get(name)
        if spec is None:
            raise InputError(self.path, "arrays", f"no array {name!r}; has {sorted(self.manifest['arrays'])}")
        arr = load_npy(self.path / f"{name}.npy", mmap=mmap)
        if list(arr.shape) != spec["shape"] or str(arr.dtype) != spec["dtype"]:
            raise InputError(self.path / f"{name}.npy", "shape/dtype",
                             f"{arr.shape} {arr.dtype} disagrees with manifest {spec}")
        return arr

    def table(self, name: str) -> list[dict]:
        return read_jsonl(self.path / f"{name}.jsonl")

    def json(self, name: str):
        return read_json(self.path / f"{name}.json")

    def __repr__(self) -> str:
        shapes = {k: tuple(v["shape"]) for k, v in self.manifest["arrays"].items()}
        return f"Dataset({str(self.path)!r}, kind={self.kind!r}, arrays={json.dumps(shapes)})"
