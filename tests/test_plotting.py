"""Figures follow nilearn's convention: ``plot_*`` returns the Figure and writes a file only when given
``output_file``; library code never switches matplotlib's backend."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import fmrilm
from fmrilm.brain.atlas import Atlas

PACKAGE = Path(fmrilm.__file__).parent


@pytest.fixture(scope="module")
def atlas():
    return Atlas.schaefer(100)


def _reader(rate: float) -> dict:
    doses = [{"alpha": a, "concept_rate": rate * a, "concept_rate_ci": [0.0, rate * a + 0.1],
              "probe_semscore": 0.1 * a, "probe_semscore_ci": [0.0, 0.1 * a + 0.05]} for a in (0.0, 1.0)]
    conditions = {"target": {"doses": doses},
                  "control_patches": {"doses": doses, "per_patch": [[0.0, 0.1], [0.0, 0.2]]},
                  "other_category": {"doses": doses}}
    return {"conditions": conditions, "specificity": {"value": 2.0},
            "rise_difference_vs_controls": {"value": 0.3, "ci": [0.1, 0.5]}}


def _summary() -> dict:
    return {"target": "dogs", "probe": "a dog", "subject": 0, "interval": 0.95, "n_scans": 4,
            "n_control_patches": 2, "n_control_scans": 4, "lm": _reader(0.5), "ideal_observer": _reader(0.8)}


def _patches(atlas) -> dict:
    return {"target": atlas.vertices_of([0]), "other_category": atlas.vertices_of([60]),
            "control_patches": [atlas.vertices_of([10]), atlas.vertices_of([70])]}


def _calls(atlas):
    """Every plot function of the package, as (name, call taking output_file)."""
    from fmrilm.stimulation.plotting import plot_dose_response, plot_vertices
    from fmrilm.tokenizer.plotting import plot_parcel_map

    values = np.linspace(-1, 1, atlas.n_parcels)
    return [("plot_parcel_map", lambda out: plot_parcel_map(values, atlas, title="t", output_file=out)),
            ("plot_dose_response", lambda out: plot_dose_response(_summary(), output_file=out)),
            ("plot_vertices", lambda out: plot_vertices(_patches(atlas), atlas, "dogs", "cars", output_file=out))]


def test_plot_without_output_file_returns_figure_and_writes_nothing(atlas, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)  # a stray relative savefig would land here
    for name, call in _calls(atlas):
        fig = call(None)
        assert isinstance(fig, Figure), name
        assert fig.axes, name
    assert list(tmp_path.iterdir()) == []
    # Built without pyplot: no figure left open in its global registry for the caller to close.
    assert plt.get_fignums() == []


def test_plot_with_output_file_writes_png(atlas, tmp_path):
    from matplotlib.figure import Figure

    for name, call in _calls(atlas):
        out = tmp_path / "sub" / f"{name}.png"
        assert isinstance(call(out), Figure), name
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # Atomic writes leave no temporary file behind.
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(f"{n}.png" for n, _ in _calls(atlas))


def test_old_positional_output_path_is_refused(atlas, tmp_path):
    from fmrilm.tokenizer.plotting import plot_parcel_map

    with pytest.raises(TypeError):
        plot_parcel_map(np.zeros(atlas.n_parcels), atlas, tmp_path / "x.png")  # type: ignore[misc]
    assert not (tmp_path / "x.png").exists()


def _r2_eval(atlas) -> dict:
    r2 = np.linspace(0.0, 0.9, atlas.n_parcels)
    return {"n_scans": 8, "usage": 0.5, "perplexity": 30.0, "perplexity_ratio": 0.5, "r2": float(r2.mean()),
            "r2_per_parcel": r2.tolist()}


def test_tokenizer_inspect_still_writes_its_surface_map(atlas, tmp_path, capsys):
    import torch
    from test_tokenizer_fixtures import tiny_config

    from fmrilm.cli import main
    from fmrilm.io import write_json
    from fmrilm.tokenizer.model import BrainTokenizer

    torch.manual_seed(0)
    directory = BrainTokenizer.for_atlas(tiny_config(), atlas).save_pretrained(tmp_path / "tok")
    write_json(directory / "eval.json", _r2_eval(atlas))
    assert main(["tokenizer", "inspect", "--tokenizer", str(directory)]) == 0
    out = directory / "r2_surface.png"
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert f"surface map: {out}" in capsys.readouterr().out


def test_evaluation_still_writes_brain_map(atlas, tmp_path):
    from fmrilm.evaluation.runner import _brain_map
    from fmrilm.io import write_json

    write_json(tmp_path / "tok" / "eval.json", _r2_eval(atlas))
    info = _brain_map(tmp_path / "tok", None, atlas, tmp_path)  # data is only read without eval.json
    assert info["what"] == "tokenizer R² per parcel"
    assert (tmp_path / "brain_map.png").read_bytes()[:4] == b"\x89PNG"


def _backend_switches(tree: ast.AST) -> list[int]:
    """Lines that call ``matplotlib.use`` / ``pyplot.switch_backend`` under any alias, or import them."""
    aliases = {"matplotlib": "matplotlib", "matplotlib.pyplot": "matplotlib.pyplot"}
    forbidden = {"matplotlib.use", "matplotlib.pyplot.switch_backend"}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in aliases:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module in aliases:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in forbidden:
                    lines.append(node.lineno)
                elif f"{node.module}.{alias.name}" in aliases:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id in aliases:
            if f"{aliases[node.func.value.id]}.{node.func.attr}" in forbidden:
                lines.append(node.lineno)
    return sorted(lines)


def test_backend_switch_detector():
    code = ("import matplotlib as mpl\nmpl.use('Agg')\nfrom matplotlib import pyplot as p\n"
            "p.switch_backend('agg')\nfrom matplotlib import use\nimport matplotlib\nmatplotlib.get_backend()\n")
    assert _backend_switches(ast.parse(code)) == [2, 4, 5]


def test_no_backend_switching_in_library_code():
    offenders = {str(path.relative_to(PACKAGE)): lines for path in sorted(PACKAGE.rglob("*.py"))
                 if (lines := _backend_switches(ast.parse(path.read_text(), str(path))))}
    assert offenders == {}
