"""The training stages, one recipe each named by its role (:mod:`fmrilm.stages.recipe`: setup → train →
save → cleanup, one driver), each launchable by the ``deepspeed`` launcher.

``python -m fmrilm.stages.<stage> --config …`` (one process) or
``deepspeed --num_gpus N --module fmrilm.stages.<stage> --config …``; each module's docstring
gives the exact commands.
"""
