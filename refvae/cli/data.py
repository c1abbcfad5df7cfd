"""``refvae data download NAME``: fetch MNIST or Fashion-MNIST once into the download cache, each
file checked against its published checksum (the same download as ``refvae train --download``)."""
from __future__ import annotations

import sys


def _cmd_download(args) -> int:
    from ..data.load import download  # noqa: PLC0415 - keep `refvae --help` light

    target = download(args.name, cache_dir=args.cache_dir, progress=not args.quiet)
    print(target)
    if not args.quiet:
        where = "" if args.cache_dir is None else f" --data-dir {args.cache_dir}"
        print(f"refvae: {args.name} is in {target}; train with --data {args.name}{where}",
              file=sys.stderr)
    return 0


def register(sub) -> None:
    from ..data.load import CHECKSUMS  # noqa: PLC0415

    p = sub.add_parser("data", help="data sets: download MNIST or Fashion-MNIST into the cache")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = data_sub.add_parser("download", help="download a data set into the cache (checksummed)",
                            description="Download a data set once into the cache "
                                        "($REFVAE_CACHE_DIR, else "
                                        "$XDG_CACHE_HOME/refvae, else ~/.cache/refvae); files "
                                        "already there "
                                        "with a valid checksum are kept. Prints the folder.")
    d.add_argument("name", choices=sorted(CHECKSUMS), help="the data set")
    d.add_argument("--cache-dir", default=None, metavar="DIR", help="download here instead of the "
                                                                    "cache")
    d.add_argument("--quiet", action="store_true", help="print nothing but the folder and errors")
    d.set_defaults(func=_cmd_download)
