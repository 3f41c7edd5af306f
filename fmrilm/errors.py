"""One exception type for bad input, so every stage reports problems the same way.

Messages always name the file (or object), the field and the problem, e.g.::

    InputError: runs/x/betas.npy: field 'shape': 20000 vertices, atlas schaefer100_fsaverage5 has 20484

Entry points run their work through :func:`run_reported`: bad input prints that line and exits 2;
any other exception prints one line ``error: <Type>: <message>`` and exits 1, with the traceback
only when asked for (``FMRILM_DEBUG=1`` or ``--debug``).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

DEBUG_HINT = "rerun with FMRILM_DEBUG=1 for the traceback"


class InputError(ValueError):
    """Input that cannot be used: raised before anything is written."""

    def __init__(self, source: str | Path, field: str, problem: str):
        self.source, self.field, self.problem = str(source), field, problem
        super().__init__(f"{source}: field '{field}': {problem}")


def check_finite(array, source: str | Path, field: str = "values") -> None:
    """Raise InputError if `array` holds NaN or inf, saying how many and where the first is."""
    import numpy as np

    arr = np.asarray(array)
    finite = np.isfinite(arr)
    if not finite.all():
        first = tuple(int(i) for i in np.unravel_index(np.argmin(finite), arr.shape))
        raise InputError(source, field, f"{(~finite).sum()} non-finite values (NaN/inf), first at index {first}")


def run_reported(work: Callable[[], int | None], debug: bool = False) -> int:
    """Exit code of ``work()``: its own (0 for None), 2 after bad input, 1 after any other exception.

    Errors are printed to stderr as one line; the traceback too when `debug` or ``FMRILM_DEBUG`` is set.
    """
    debug = debug or os.environ.get("FMRILM_DEBUG", "") not in ("", "0")
    try:
        return int(work() or 0)
    except InputError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the last resort: a user sees one line, a developer asks for the traceback
        if debug:
            traceback.print_exc()
            return 1
        lines = str(err).strip().splitlines()
        print(f"error: {type(err).__name__}: {lines[0] if lines else ''} ({DEBUG_HINT})", file=sys.stderr)
        return 1
