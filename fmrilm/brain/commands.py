"""`fmrilm atlas` and `fmrilm world task|rest` sub-commands (registered by fmrilm/cli.py)."""

from __future__ import annotations


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
        k.add_argument("--config", default=f"{kind}_world_demo",
                       help="YAML path or shipped config name (default: %(default)s)")
        k.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
        k.add_argument("--out", required=True, help="output dataset directory")
        k.add_argument("--force", action="store_true", help="replace an existing dataset")
        k.set_defaults(handler=_world)


def _atlas(args) -> int:
    from fmrilm.brain.atlas import Atlas

    atlas = Atlas.schaefer(args.parcels)
    print(atlas, atlas.describe())
    for i, p in enumerate(atlas.parcels):
        print(f"{p.label:4d}  {p.name:36s} {p.hemisphere}  {p.network:12s} {atlas.parcel_vertices[i].size:4d} vertices")
    return 0


def _world(args) -> int:
    from fmrilm.brain.store import Dataset
    from fmrilm.config import load_config

    if args.kind == "task":
        from fmrilm.brain.task_world import TaskWorldConfig as Config
        from fmrilm.brain.task_world import generate_task_world as generate
    else:
        from fmrilm.brain.rest_world import RestWorldConfig as Config
        from fmrilm.brain.rest_world import generate_rest_population as generate
    cfg = load_config(Config, args.config, args.set)
    out = generate(cfg, args.out, overwrite=args.force)
    print(Dataset(out))
    return 0
