"""Model directories: written atomically, identified by a fingerprint of their base checkpoint.

A model artifact (bootstrapped backbone, adapter, merged model) is a directory. It is built under
``DIR.partial-<pid>`` and renamed into place only when complete, like the dataset store does, so an
interrupted save never leaves a half model under the final name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fmrilm.errors import InputError

# Bytes hashed at each end of a weight file: enough to tell checkpoints apart, cheap for 16 GB ones.
_SAMPLE_BYTES = 1 << 20
# Config keys that describe how a checkpoint was loaded or saved, not what it is.
_VOLATILE_KEYS = {
    "_name_or_path",
    "transformers_version",
    "quantization_config",
    "torch_dtype",
    "dtype",
    "architectures",
    "use_cache",
    "_attn_implementation_autoset",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "pad_token_id",
}


def checkpoint_identity(model_dir: str | Path) -> dict:
    """Name and fingerprint of a Hugging Face checkpoint directory.

    The fingerprint hashes the architecture part of ``config.json`` plus, for every weight file, its
    name, size and first/last MiB. Full hashes of an 8B checkpoint would add a minute to every load;
    sampled content still separates different trainings of the same architecture.

    Returns
    -------
    dict
        ``{"name": <directory name>, "path": <absolute path>, "fingerprint": <sha256 hex>}``
    """
    model_dir = Path(model_dir).resolve()
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise InputError(model_dir, "config.json", "missing: not a Hugging Face model directory")
    config = {k: v for k, v in json.loads(config_path.read_text()).items() if k not in _VOLATILE_KEYS}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    weights = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights:
        raise InputError(model_dir, "weights", "no *.safetensors or *.bin weight files")
    for path in weights:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(_SAMPLE_BYTES))
            fh.seek(max(0, size - _SAMPLE_BYTES))
            digest.update(fh.read(_SAMPLE_BYTES))
    return {"name": model_dir.name, "path": str(model_dir), "fingerprint": digest.hexdigest()}
