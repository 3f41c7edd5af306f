"""One exception type for bad input, so every stage reports problems the same way.

Messages always name the file (or object), the field and the problem, e.g.::

    InputError: runs/x/betas.npy: field 'shape': 20000 vertices, atlas schaefer100_fsaverage5 has 20484
"""

from __future__ import annotations

from pathlib import Path


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
