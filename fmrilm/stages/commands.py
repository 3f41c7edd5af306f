"""`fmrilm train <stage>`: run a training stage under the ``deepspeed`` launcher.

The wrapper builds and runs exactly the launch line in each stage module's docstring::

    fmrilm train joint --config joint_demo --nproc 2 --set corpus=... tokenizer=... llm.backbone=...
    # runs: DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --master_port P --module fmrilm.stages.joint \
    #           --config joint_demo --set corpus=... tokenizer=... llm.backbone=...
    fmrilm train instruct --hostfile hostfile --num-nodes 4 --nproc 8 --config instruct_demo --set ...

Without a GPU it sets ``DS_ACCELERATOR=cpu`` (and each of ``--nproc`` ranks is a CPU process);
``--dry-run`` prints the command instead of running it.

It also adds ``fmrilm tokenizer train`` (stage 1 in this process) to the ``fmrilm tokenizer`` command
of :mod:`fmrilm.tokenizer.commands`: the stage sits above the tokenizer package, which must not import it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from fmrilm.config import add_config_args, config_from_args
from fmrilm.errors import InputError

STAGE_MODULES = {
    "backbone": "fmrilm.stages.backbone",
    "tokenizer": "fmrilm.stages.tokenizer",
    "joint": "fmrilm.stages.joint",
    "instruct": "fmrilm.stages.instruct",
}
STAGE_NUMBERS = {"0": "backbone", "1": "tokenizer", "2": "joint", "3": "instruct"}


def stage_module(stage: str) -> str:
    """Module of a stage given by name or number (``joint`` or ``2``)."""
    name = STAGE_NUMBERS.get(stage, stage)
    if name not in STAGE_MODULES:
        raise InputError("fmrilm train", "stage", f"{stage!r} is not one of {sorted(STAGE_MODULES)} or 0-3")
    return STAGE_MODULES[name]


def deepspeed_launcher() -> str:
    """The ``deepspeed`` launcher of this environment (beside the interpreter), else the one on PATH."""
    local = Path(sys.executable).parent / "deepspeed"
    found = str(local) if local.is_file() else shutil.which("deepspeed")
    if not found:
        raise InputError("deepspeed", "launcher", "not installed in this environment (pip install deepspeed)")
    return found


def launch_command(stage: str, config: str | None = None, overrides: list[str] | None = None, nproc: int = 1,
                   hostfile: str | None = None, num_nodes: int | None = None,
                   master_port: int | None = None) -> list[str]:
    """The launcher command line of `stage` on `nproc` ranks per node (× `num_nodes` with a hostfile)."""
    if nproc < 1:
        raise InputError("fmrilm train", "--nproc", f"must be >= 1, got {nproc}")
    if num_nodes is not None and hostfile is None:
        raise InputError("fmrilm train", "--num-nodes", "several nodes need a --hostfile (lines: 'node1 slots=N')")
    if hostfile is not None and not Path(hostfile).is_file():
        raise InputError(hostfile, "hostfile", "no such file")
    cmd = [deepspeed_launcher()]
    if hostfile is not None:
        cmd += ["--hostfile", str(hostfile)]
        if num_nodes is not None:
            cmd += ["--num_nodes", str(num_nodes)]
    cmd += ["--num_gpus", str(nproc)]
    if master_port is not None:
        cmd += ["--master_port", str(master_port)]
    cmd += ["--module", stage_module(stage)]
    if config is not None:
        cmd += ["--config", str(config)]
    if overrides:
        cmd += ["--set", *overrides]
    return cmd


def launch_env(base: dict | None = None) -> dict:
    """Environment for the launcher: ``DS_ACCELERATOR=cpu`` unless a GPU is visible (or it is set)."""
    import torch

    env = dict(os.environ if base is None else base)
    env.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.setdefault(var, "1")  # no hub access at run time, in every rank
    return env


def run_stage(stage: str, config: str | None = None, overrides: list[str] | None = None, nproc: int = 1,
              hostfile: str | None = None, num_nodes: int | None = None, master_port: int | None = None,
              dry_run: bool = False) -> int:
    """Run (or with `dry_run` print) the launcher for `stage`; returns its exit status."""
    cmd = launch_command(stage, config, overrides, nproc, hostfile, num_nodes, master_port)
    env = launch_env()
    line = f"DS_ACCELERATOR={env['DS_ACCELERATOR']} {shlex.join(cmd)}"
    print(line, flush=True)
    if dry_run:
        return 0
    return subprocess.run(cmd, env=env, check=False).returncode


def register(sub) -> None:
    p = sub.add_parser("train", help="run a training stage (0 backbone, 1 tokenizer, 2 joint, 3 instruct) "
                                     "under the deepspeed launcher",
                       description=__doc__.splitlines()[0] + " Extra details: python -m <stage module> --help.")
    p.add_argument("stage", help="backbone | tokenizer | joint | instruct (or 0 | 1 | 2 | 3)")
    # the launched stage module reads --config/--set (None: its own <stage>_demo)
    add_config_args(p, None, config_help="YAML path or shipped config name (default: the stage's <stage>_demo)")
    p.add_argument("--nproc", type=int, default=1, help="ranks per node: GPUs, or CPU processes (default: 1)")
    p.add_argument("--hostfile", help="deepspeed hostfile for several nodes (lines: 'node1 slots=N')")
    p.add_argument("--num-nodes", type=int, help="nodes to use from the hostfile")
    p.add_argument("--master-port", type=int, help="rendezvous port (default: the launcher's)")
    p.add_argument("--dry-run", action="store_true", help="print the launch command without running it")
    p.set_defaults(handler=_train)
    if "tokenizer" in sub.choices:  # fmrilm/tokenizer/commands.py registered `fmrilm tokenizer` first
        _register_tokenizer_train(sub.choices["tokenizer"].verbs)


def _register_tokenizer_train(verbs) -> None:
    """`fmrilm tokenizer train`: stage 1 in this process (``fmrilm train tokenizer`` launches ranks)."""
    t = verbs.add_parser("train", help="train a tokenizer (one process; use the deepspeed launcher for more)",
                         description="Train a tokenizer in this process. For several ranks: "
                                     "DS_ACCELERATOR=cpu deepspeed --num_gpus 2 "
                                     "--module fmrilm.stages.tokenizer --config ...")
    add_config_args(t, "tokenizer_demo", "config overrides, e.g. data.dataset=DIR")
    t.set_defaults(handler=_train_tokenizer)


def _train(args) -> int:
    return run_stage(args.stage, args.config, args.set, args.nproc, args.hostfile, args.num_nodes,
                     args.master_port, args.dry_run)


def _train_tokenizer(args) -> int:
    from fmrilm.stages.tokenizer import TokenizerStageConfig, run

    run(config_from_args(TokenizerStageConfig, args))
    return 0
