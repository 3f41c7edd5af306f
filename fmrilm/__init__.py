"""fmrilm: brain-language foundation model."""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft and, through transformers, by sentence-transformers) tries on import,
# on CPUs with AVX512-BF16, to fetch a 4-bit CPU kernel from the Hugging Face hub with the optional
# `kernels` package, and logs a warning on every process start when that package is absent. Its own
# bundled kernel is used instead, and nothing is to be fetched at run time: the warning says nothing
# a user can act on. Set before any import of bitsandbytes, and for that logger only.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
