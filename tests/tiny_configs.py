"""The test-size configs: ``tests/configs/<name>.yaml`` (not shipped in the package).

``tiny_config("eval_tiny")`` is the path to pass wherever a config name or path is taken
(``load_config``, ``--config``, ``load_pipeline_config``); ``pipeline_tiny.yaml`` names its stage
configs relative to itself.
"""

from __future__ import annotations

from pathlib import Path

TINY_CONFIGS = Path(__file__).resolve().parent / "configs"


def tiny_config(name: str) -> str:
    """Path (as a string) of test config `name` (``eval_tiny`` → ``tests/configs/eval_tiny.yaml``)."""
    path = TINY_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no test config {path} (have: {sorted(p.stem for p in TINY_CONFIGS.glob('*.yaml'))})")
    return str(path)
