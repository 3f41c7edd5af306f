"""In-silico microstimulation of a trained BrainLM (CorText-style): see :mod:`fmrilm.stimulation.experiment`.

    fmrilm stimulate --config stimulation_demo
"""
