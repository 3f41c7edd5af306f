"""Write small test files in the real neuroimaging formats (MGH/MGZ, GIFTI, NIfTI, NSD layout).

Tests use these to build inputs in ``tmp_path`` exactly as real tools would have written them, so
the readers are exercised through nibabel and nilearn rather than through in-memory shortcuts.
Arrays are passed vertex-major ``[V, T]`` (the on-disk layout of surface files).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

NSD_INT16_SCALE = 300.0


def write_mgh(path: str | Path, data: np.ndarray, tr_seconds: float | None = None, dtype=np.float32) -> Path:
    """Write ``[V, T]`` data as an MGH/MGZ surface file of shape ``(V, 1, 1, T)`` (compressed if .mgz)."""
    data = np.asarray(data)
    img = nib.MGHImage(data.reshape(data.shape[0], 1, 1, -1).astype(dtype), np.eye(4))
    if tr_seconds is not None:
        img.header.set_zooms((1.0, 1.0, 1.0, tr_seconds * 1000.0))  # MGH stores the TR in ms
    nib.save(img, str(path))
    return Path(path)


def write_gifti(path: str | Path, data: np.ndarray, per_timepoint: bool = True) -> Path:
    """Write ``[V, T]`` data as GIFTI: one darray per time point (fMRIPrep style) or one 2-D darray."""
    data = np.asarray(data, np.float32)
    arrays = [np.ascontiguousarray(col) for col in data.T] if per_timepoint else [data]
    darrays = [nib.gifti.GiftiDataArray(a, intent="NIFTI_INTENT_TIME_SERIES", datatype="NIFTI_TYPE_FLOAT32")
               for a in arrays]
    nib.save(nib.gifti.GiftiImage(darrays=darrays), str(path))
    return Path(path)


def write_nifti(path: str | Path, data: np.ndarray, tr_seconds: float | None = None,
                voxel_mm: float = 3.0) -> Path:
    """Write a 3-D label image or a 4-D run as NIfTI-1 with an isotropic affine (TR in seconds)."""
    data = np.asarray(data)
    img = nib.Nifti1Image(data, np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0]))
    if data.ndim == 4 and tr_seconds is not None:
        img.header.set_zooms((voxel_mm,) * 3 + (tr_seconds,))
        img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return Path(path)


def write_confounds(path: str | Path, values: np.ndarray, names: list[str] | None = None) -> Path:
    """Write a confound table: tab-separated with a header (fMRIPrep), headerless (brainspace) if no names."""
    lines = ["\t".join(names)] if names is not None else []
    lines += ["\t".join(f"{v:.10f}" for v in row) for row in np.asarray(values, np.float64)]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def write_nsd_session(betas_dir: str | Path, session: int, betas: np.ndarray, hemi_sizes=(10242, 10242),
                      int16: bool = False) -> tuple[Path, Path]:
    """Write one session's ``[V, n_trials]`` betas as NSD's ``{lh,rh}.betas_sessionNN.mgh``.

    With `int16` the betas are stored as NSD does in some releases: ``round(beta * 300)`` as int16.
    """
    betas_dir = Path(betas_dir)
    betas_dir.mkdir(parents=True, exist_ok=True)
    stored = np.round(betas * NSD_INT16_SCALE).astype(np.int16) if int16 else betas.astype(np.float32)
    parts = stored[: hemi_sizes[0]], stored[hemi_sizes[0]:]
    return tuple(write_mgh(betas_dir / f"{h}.betas_session{session:02d}.mgh", part, dtype=part.dtype)
                 for h, part in zip(("lh", "rh"), parts, strict=True))


def write_trials(path: str | Path, sessions, trials, stimuli, sep: str = "\t") -> Path:
    """Write an NSD trial table with columns ``session``, ``trial`` and ``stimulus`` (one row per trial)."""
    rows = ["session", "trial", "stimulus"], *zip(sessions, trials, stimuli, strict=True)
    Path(path).write_text("\n".join(sep.join(str(v) for v in row) for row in rows) + "\n")
    return Path(path)


def write_captions(path: str | Path, captions: dict[int, list[str]], with_images: bool = True) -> Path:
    """Write a COCO-style captions JSON: ``annotations`` (image_id, caption) and optionally ``images``."""
    pairs = [(image, text) for image, texts in captions.items() for text in texts]
    doc = {"annotations": [{"id": i, "image_id": int(image), "caption": text}
                           for i, (image, text) in enumerate(pairs)]}
    if with_images:
        doc["images"] = [{"id": int(image), "file_name": f"{int(image):012d}.jpg"} for image in captions]
    Path(path).write_text(json.dumps(doc))
    return Path(path)


OBJECTS = ("dog", "cat", "horse", "bus", "pizza", "boat", "train", "bird", "kite", "clock")
PLACES = ("on a beach", "in a kitchen", "on a street", "in a field", "near a river", "in a room")


def write_nsd_dataset(root: str | Path, n_stimuli: int = 48, trials_per_session=(50, 46, 44), seed: int = 0):
    """A small NSD-format subject: per-session fsaverage5 MGH betas (the last session int16 × 300), a trial
    table with repeats, and COCO captions for every stimulus (ids like COCO's, not 0..n-1).

    Each stimulus's betas are its object's and place's vertex patterns plus noise, so a tokenizer has
    something to learn. Returns ``(betas_dir, trials_tsv, captions_json, stimulus_ids)``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(100, 600_000), n_stimuli, replace=False))
    obj, place = rng.integers(0, len(OBJECTS), n_stimuli), rng.integers(0, len(PLACES), n_stimuli)
    captions = {int(s): [f"a {OBJECTS[o]} {PLACES[p]}", f"there is a {OBJECTS[o]} {PLACES[p]}"]
                for s, o, p in zip(ids, obj, place, strict=True)}
    patterns = rng.standard_normal((len(OBJECTS) + len(PLACES), 2 * 10242)).astype(np.float32)
    rows = []
    for session, n in enumerate(trials_per_session, start=1):
        shown = rng.integers(0, n_stimuli, n)
        signal = patterns[obj[shown]] + patterns[len(OBJECTS) + place[shown]]
        betas = (signal + rng.standard_normal(signal.shape).astype(np.float32)).T * 2.0 + 0.5 * session
        write_nsd_session(root / "betas", session, betas, int16=session == len(trials_per_session))
        rows += [(session, t + 1, int(ids[m])) for t, m in enumerate(shown)]
    trials = write_trials(root / "trials.tsv", *zip(*rows, strict=True))
    return root / "betas", trials, write_captions(root / "captions.json", captions), ids


def write_rest_dir(root: str | Path, parcel_names: list[str], lengths=(90, 84, 96, 88, 90, 92, 86, 94),
                   seed: int = 0, participants: bool = True) -> Path:
    """A directory of parcel-series rest runs (``sub-NN.tsv``, header = parcel names, deliberately unequal
    lengths) with a BIDS ``participants.tsv`` (sex, age; one subject's age ``n/a``). Each run is an AR(1)
    process mixed by a subject-specific matrix, so FC differs between subjects."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    p = len(parcel_names)
    rows = ["participant_id\tsex\tage"]
    for i, n in enumerate(lengths, start=1):
        mix = np.eye(p) + 0.3 * rng.standard_normal((p, p)) / np.sqrt(p)
        x = np.zeros((n, p))
        for t in range(1, n):
            x[t] = 0.6 * x[t - 1] + rng.standard_normal(p)
        series = x @ mix.T
        lines = ["\t".join(parcel_names)] + ["\t".join(f"{v:.5f}" for v in row) for row in series]
        (root / f"sub-{i:02d}.tsv").write_text("\n".join(lines) + "\n")
        rows.append(f"sub-{i:02d}\t{'F' if i % 2 else 'M'}\t{'n/a' if i == 3 else 20 + 3 * i}")
    if participants:
        (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


# A chat template in SmolLM2's turn format, short enough for a tiny context.
TINY_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tiny_gguf(path: str | Path, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    ffn: int = 128, seed: int = 0) -> Path:
    """Write a tiny Llama as llama.cpp does (GGUF v3, f32 tensors, a byte-level BPE "gpt2" tokenizer
    with SmolLM2's specials and chat template), so the GGUF → HF path runs on a real file.

    Hidden 64 is one bitsandbytes 4-bit block, the smallest width QLoRA quantizes cleanly.
    """
    import gguf
    from tokenizers.pre_tokenizers import ByteLevel

    merges = ["Ġ t", "h e", "Ġt he", "a n", "Ġ a", "Ġ s", "i n", "o n"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + sorted(ByteLevel.alphabet()) + [m.replace(" ", "") for m in merges]
    rng = np.random.default_rng(seed)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))  # 3: control
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)
    kv = kv_heads * hidden // heads
    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    writer.add_tensor("output_norm.weight", 1.0 + weight(hidden))
    for i in range(layers):
        for name, shape in (("attn_norm", (hidden,)), ("ffn_norm", (hidden,))):
            writer.add_tensor(f"blk.{i}.{name}.weight", 1.0 + weight(*shape))
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)),
                            ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
