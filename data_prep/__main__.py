"""``python -m data_prep {prep,folds,convert-folder} [--config FILE] [key=value ...]``."""

from __future__ import annotations

import argparse
import sys

from common.cli import run_main
from common.config import load_stage_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("prep", "read, select, split, cache, write manifests"), ("folds", "write the fold file")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", help="experiment YAML (configs/*.yaml)")
        s.add_argument("overrides", nargs="*", help="key=value overrides of the stage config")
    c = sub.add_parser("convert-folder", help="image folder (<class>/<file>) -> GLD v2 layout")
    c.add_argument("src")
    c.add_argument("dst")
    args = p.parse_args(argv)
    if args.cmd == "prep":
        from data_prep.config import PrepConfig
        from data_prep.prep import run_prep

        run_prep(load_stage_config(PrepConfig, "prep", args.config, args.overrides), progress=sys.stderr.isatty())
    elif args.cmd == "folds":
        from data_prep.config import FoldsConfig
        from data_prep.folds import run_folds

        print(run_folds(load_stage_config(FoldsConfig, "folds", args.config, args.overrides)))
    else:
        from data_prep.readers import image_folder_to_gld

        df = image_folder_to_gld(args.src, args.dst)
        print(f"wrote {len(df)} images in {df['landmark_id'].nunique()} classes to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
