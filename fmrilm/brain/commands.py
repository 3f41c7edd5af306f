"""`fmrilm world ...` and `fmrilm atlas` sub-commands (registered by fmrilm/cli.py)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("atlas", help="print the parcels of an atlas", description="Print an atlas's parcels.")
    p.add_argument("--parcels", type=int, default=100, help="Schaefer scale (100, 200, 300, 400, 1000)")
    p.set_defaults(handler=_atlas)


def _atlas(args) -> int:
    from fmrilm.brain.atlas import Atlas

    atlas = Atlas.schaefer(args.parcels)
    print(atlas, atlas.describe())
    for i, p in enumerate(atlas.parcels):
        print(f"{p.label:4d}  {p.name:36s} {p.hemisphere}  {p.network:12s} {atlas.parcel_vertices[i].size:4d} vertices")
    return 0
