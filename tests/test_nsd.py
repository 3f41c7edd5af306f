"""NSD-style import: per-session MGH betas (float and int16 × 300), trial table, COCO captions."""

from __future__ import annotations

import numpy as np
import pytest
from data_writers import write_captions, write_mgh, write_nsd_session, write_trials

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.nsd import average_repeats, import_nsd, plan_sessions, read_session_betas, read_trials
from fmrilm.brain.store import Dataset
from fmrilm.errors import InputError

HEMI = 10242
# Session 1 has 7 trials, session 2 has 9 (unequal on purpose); COCO-like stimulus ids with repeats
# inside and across sessions. Stimulus 512 is shown 3 times, 101 and 333 twice.
STIMULI = {1: [333, 101, 512, 478, 101, 205, 512], 2: [999, 512, 333, 640, 777, 888, 123, 456, 321]}
SHOWN = {x for v in STIMULI.values() for x in v}
CAPTIONS = {s: [f"a photo of thing {s}", f"thing {s} in a scene"] for s in SHOWN}


@pytest.fixture(scope="module")
def atlas():
    return Atlas.schaefer(100)


def raw_session(session: int) -> np.ndarray:
    """[V, n_trials] betas with a session-specific offset and scale (so per-session z-scoring matters)."""
    rng = np.random.default_rng(session)
    betas = rng.standard_normal((2 * HEMI, len(STIMULI[session]))) * (1 + session) + 4 * session
    betas[:30] = 2.5  # constant vertices: z-score to 0, not NaN
    return betas.astype(np.float32)


def write_inputs(root, trial_rows=None, captions=CAPTIONS):
    """Session 1 stored as float32, session 2 as NSD int16 (× 300); the trial table rows shuffled."""
    betas_dir = root / "betas"
    write_nsd_session(betas_dir, 1, raw_session(1))
    write_nsd_session(betas_dir, 2, raw_session(2), int16=True)
    rows = trial_rows or [(s, t + 1, stim) for s, stims in STIMULI.items() for t, stim in enumerate(stims)]
    order = np.random.default_rng(0).permutation(len(rows))
    trials = write_trials(root / "trials.tsv", *zip(*[rows[i] for i in order], strict=True))
    return betas_dir, trials, write_captions(root / "captions.json", captions)


def zscore(x):
    return (x - x.mean(0)) / np.where(x.std(0, ddof=1) > 0, x.std(0, ddof=1), 1)


def test_import_round_trip(tmp_path, atlas):
    betas_dir, trials, captions = write_inputs(tmp_path)
    out = import_nsd(betas_dir, trials, captions, tmp_path / "nsd", subject="subj07", atlas=atlas)
    ds = Dataset(out, "task")
    atlas.check_same(ds.atlas_info, ds.path)
    betas = ds.array("betas")
    assert betas.shape == (16, atlas.n_vertices) and betas.dtype == np.float32
    np.testing.assert_array_equal(ds.array("trial_session"), [1] * 7 + [2] * 9)
    assert ds.array("trial_subject").dtype == np.int16 and not ds.array("trial_subject").any()
    stimuli = ds.table("stimuli")
    shown = [stimuli[m]["image_id"] for m in ds.array("trial_stimulus")]
    assert shown == STIMULI[1] + STIMULI[2]
    assert all(row["captions"] == CAPTIONS[row["image_id"]] for row in stimuli)
    assert stimuli[0]["file_name"] == f"{stimuli[0]['image_id']:012d}.jpg"
    assert stimuli[0]["key"].startswith("stim-")
    assert [row["stimulus"] for row in stimuli] == list(range(len(CAPTIONS)))
    np.testing.assert_array_equal(ds.array("trial_repeat"), [0, 0, 0, 0, 1, 0, 1, 0, 2, 1, 0, 0, 0, 0, 0, 0])
    assert ds.table("subjects") == [{"subject": "subj07"}]
    assert ds.manifest["source"] == "nsd" and ds.manifest["n_stimuli"] == len(CAPTIONS)
    assert ds.manifest["n_subjects"] == 1 and ds.manifest["novel_categories"] == []


def test_betas_are_z_scored_per_session_per_vertex(tmp_path, atlas):
    betas_dir, trials, captions = write_inputs(tmp_path)
    betas = Dataset(import_nsd(betas_dir, trials, captions, tmp_path / "nsd", atlas=atlas)).array("betas")
    int16_session = np.round(raw_session(2) * 300).astype(np.int16) / 300.0  # what NSD's storage keeps
    np.testing.assert_allclose(betas[:7], zscore(raw_session(1).T), atol=1e-4)
    np.testing.assert_allclose(betas[7:], zscore(int16_session.T), atol=1e-4)
    assert np.all(betas[:, :30] == 0)
    np.testing.assert_allclose(betas[7:, 30:].std(0, ddof=1), 1, rtol=1e-3)


def test_int16_betas_are_scaled_back(tmp_path, atlas):
    betas_dir, trials, _ = write_inputs(tmp_path)
    session1, session2 = plan_sessions(betas_dir, read_trials(trials), trials, atlas)
    assert (session1.n_trials, session2.offset, session2.n_trials) == (7, 7, 9)
    assert session2.headers[0].dtype == np.int16 and session1.headers[0].dtype == np.float32
    np.testing.assert_allclose(read_session_betas(session2, atlas), raw_session(2).T, atol=0.5 / 300 + 1e-6)
    np.testing.assert_array_equal(read_session_betas(session1, atlas), raw_session(1).T)


def test_average_repeats(tmp_path, atlas):
    betas_dir, trials, captions = write_inputs(tmp_path)
    ds = Dataset(import_nsd(betas_dir, trials, captions, tmp_path / "nsd", atlas=atlas))
    betas, stim = np.asarray(ds.array("betas")), ds.array("trial_stimulus")
    avg = average_repeats(ds.array("betas"), stim, ds.array("trial_subject"), chunk=5)
    assert avg.betas.shape == (len(CAPTIONS), atlas.n_vertices)
    for row, m in enumerate(avg.stimulus):
        np.testing.assert_allclose(avg.betas[row], betas[stim == m].mean(0), atol=1e-5)
        assert avg.n_repeats[row] == (stim == m).sum()
    test = average_repeats(betas, stim, min_repeats=2)
    assert sorted(ds.table("stimuli")[m]["image_id"] for m in test.stimulus) == [101, 333, 512]
    with pytest.raises(InputError, match="trials"):
        average_repeats(betas[:4], stim)


def test_session_subset(tmp_path, atlas):
    betas_dir, trials, captions = write_inputs(tmp_path)
    ds = Dataset(import_nsd(betas_dir, trials, captions, tmp_path / "s2", atlas=atlas, sessions=[2]))
    assert ds.array("betas").shape == (9, atlas.n_vertices) and ds.manifest["sessions"] == [2]
    assert [ds.table("stimuli")[m]["image_id"] for m in ds.array("trial_stimulus")] == STIMULI[2]
    with pytest.raises(InputError, match="trials.tsv.*session"):
        import_nsd(betas_dir, trials, captions, tmp_path / "s3", atlas=atlas, sessions=[3])


def assert_fails_cleanly(tmp_path, atlas, match, *inputs):
    with pytest.raises(InputError, match=match):
        import_nsd(*inputs, tmp_path / "out", atlas=atlas)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("out")]


def test_missing_session_file(tmp_path, atlas):
    betas_dir, trials, captions = write_inputs(tmp_path)
    (betas_dir / "rh.betas_session02.mgh").unlink()
    assert_fails_cleanly(tmp_path, atlas, "rh.betas_session02.mgh.*missing", betas_dir, trials, captions)


def test_trial_table_disagrees_with_betas(tmp_path, atlas):
    rows = [(s, t + 1, stim) for s, stims in STIMULI.items() for t, stim in enumerate(stims)][1:]
    betas_dir, trials, captions = write_inputs(tmp_path, trial_rows=rows)
    match = "trials.tsv.*session 1.*6 trials.*betas_session01.mgh holds trials 1..7"
    assert_fails_cleanly(tmp_path, atlas, match, betas_dir, trials, captions)


def test_stimulus_without_caption(tmp_path, atlas):
    captions = {k: v for k, v in CAPTIONS.items() if k != 640}
    betas_dir, trials, captions_path = write_inputs(tmp_path, captions=captions)
    match = r"captions.json.*no caption.*\[640\]"
    assert_fails_cleanly(tmp_path, atlas, match, betas_dir, trials, captions_path)


def test_wrong_vertex_count(tmp_path, atlas):
    betas_dir, trials, captions = write_inputs(tmp_path)
    write_mgh(betas_dir / "lh.betas_session02.mgh", np.zeros((10000, 9), np.float32))
    match = "lh.betas_session02.mgh.*10000 vertices"
    assert_fails_cleanly(tmp_path, atlas, match, betas_dir, trials, captions)


def test_non_finite_betas(tmp_path, atlas):
    betas_dir, trials, captions = write_inputs(tmp_path)
    bad = raw_session(2)[HEMI:]
    bad[7, 2] = np.nan
    write_mgh(betas_dir / "rh.betas_session02.mgh", bad)
    assert_fails_cleanly(tmp_path, atlas, "rh.betas_session02.mgh.*non-finite", betas_dir, trials, captions)


def test_unreadable_trial_table(tmp_path, atlas):
    betas_dir, _, captions = write_inputs(tmp_path)
    table = tmp_path / "bad.csv"
    table.write_text("session,trial,image\n1,1,333\n")
    assert_fails_cleanly(tmp_path, atlas, r"bad.csv.*missing \['stimulus'\]", betas_dir, table, captions)
    table.write_text("session,trial,stimulus\n1,first,333\n")
    assert_fails_cleanly(tmp_path, atlas, "bad.csv.*line 2.*non-integer", betas_dir, table, captions)
