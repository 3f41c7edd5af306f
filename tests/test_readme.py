"""The README's Python examples are run as doctests, so the documentation cannot drift from the code."""

import doctest
from pathlib import Path


def test_readme_examples_run():
    result = doctest.testfile(str(Path(__file__).parents[1] / "README.md"), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0
