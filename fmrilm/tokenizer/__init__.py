"""Stage 1: the region-wise VQ brain tokenizer (scans → discrete brain tokens and back).

>>> from fmrilm.tokenizer import BrainTokenizer
>>> name = "tokenizer_schaefer100_fsaverage5_vq_K1024_L1_task_synthetic"
>>> tok = BrainTokenizer.from_pretrained(f"runs/demo/tokenizer/{name}")  # doctest: +SKIP
>>> tokens = tok.encode(tok.group_vertices(betas))  # [B, P·L] int, parcel-major  # doctest: +SKIP
"""

from fmrilm.tokenizer.config import QuantizerConfig, TokenizerConfig, artifact_name
from fmrilm.tokenizer.model import BrainTokenizer

__all__ = ["BrainTokenizer", "QuantizerConfig", "TokenizerConfig", "artifact_name"]
