"""One codebook for both kinds of data: a rest dataset through a vertex-pattern (task) tokenizer."""

import numpy as np
import pytest
from test_tokenizer_fixtures import tiny_config

from fmrilm.brain.store import Dataset, DatasetWriter
from fmrilm.tokenizer.model import BrainTokenizer
from fmrilm.tokenizer.tokens import write_tokens_dataset


def initialised_tokenizer(atlas):
    """A tiny tokenizer whose k-means codebook init has run on one batch of random maps."""
    import torch

    tok = BrainTokenizer.for_atlas(tiny_config(K=64), atlas)
    maps = np.random.default_rng(1).standard_normal((96, atlas.n_vertices)).astype(np.float32)
    with torch.no_grad():
        tok.train()(tok.group_vertices(maps))
    return tok.eval()


def write_real_style_rest(path, atlas, vertex_series):
    s, t, _ = vertex_series.shape
    with DatasetWriter(path, "rest", atlas.describe(), {"source": "test"}, seed=3) as w:
        w.write_array("timeseries", atlas.parcellate(vertex_series).astype(np.float32))
        w.write_array("vertex_timeseries", vertex_series)
        w.write_table("subjects", [{"subject": f"sub-{i}", "age": None, "sex": None, "diagnosis": None,
                                    "site": None} for i in range(s)])
        w.finish(tr=1.4, n_subjects=s, n_timepoints=t, source="test")


def test_rest_vertex_runs_become_one_scan_per_tr(tmp_path, atlas):
    tok = initialised_tokenizer(atlas)
    rng = np.random.default_rng(0)
    vertex_series = rng.standard_normal((2, 9, atlas.n_vertices)).astype(np.float32)  # S=2, T=9
    write_real_style_rest(tmp_path / "rest", atlas, vertex_series)
    out = write_tokens_dataset(tok, tmp_path / "rest", tmp_path / "tokens")
    ds = Dataset(out, kind="tokens")
    tokens = ds.array("tokens")
    assert tokens.shape == (2, 9, tok.tokens_per_scan) and tokens.dtype == np.int16
    assert ds.manifest["window"] == 1 and ds.manifest["rest_input"] == "vertex"
    # Each TR is tokenized exactly as a task scan with the same (per-vertex z-scored) pattern.
    z = vertex_series[1] - vertex_series[1].mean(0)
    z = z / np.where(z.std(0) > 0, z.std(0), 1)
    expected = tok.encode(tok.group_vertices(z)).numpy()
    np.testing.assert_array_equal(tokens[1], expected)


def test_rest_tokens_refuse_another_atlas(tmp_path, atlas):
    from fmrilm.errors import InputError

    tok = initialised_tokenizer(atlas)
    vertex_series = np.zeros((1, 4, atlas.n_vertices), np.float32)
    write_real_style_rest(tmp_path / "rest", atlas, vertex_series)
    manifest = Dataset(tmp_path / "rest").manifest
    manifest["atlas"]["fingerprint"] = "0" * 16
    from fmrilm.io import write_json

    write_json(tmp_path / "rest" / "manifest.json", manifest)
    with pytest.raises(InputError, match="fingerprint"):
        write_tokens_dataset(tok, tmp_path / "rest", tmp_path / "tokens")
    assert not (tmp_path / "tokens").exists()
