"""Thin stage entry points, one per training stage, each launchable by the ``deepspeed`` launcher.

``python -m fmrilm.stages.<stage> --config …`` (one process) or
``deepspeed --num_gpus N --module fmrilm.stages.<stage> --config …``; each module's docstring
gives the exact commands.
"""
