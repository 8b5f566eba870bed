"""``python -m data_prep {prep,verify,folds,convert-folder} [--config FILE] [key=value ...]``.

prep            read, select, split, cache; write manifests (train/val/test, and with
                test_root / nonlandmark_root: competition, competition_order, nonlandmark)
verify          decode every cached image of every manifest, re-encode damaged ones from the
                source, patch the packed cache; exit 1 when something could not be fixed
folds           write the fold file over train.csv
convert-folder  image folder (<class>/<file>) -> GLD v2 layout
"""

from __future__ import annotations

import argparse
import sys

from common.cli import run_main
from common.config import config_help, load_stage_config


def _other_stage_configs() -> tuple[type, ...]:
    """Every stage's config class: a key of another stage on the command line is left to it
    (the list lives in :mod:`common.stages`: data_prep is below pipeline and never imports it)."""
    from common.stages import stage_configs

    return stage_configs()


def main(argv: list[str] | None = None) -> int:
    from data_prep.config import FoldsConfig, PrepConfig

    p = argparse.ArgumentParser(
        prog="python -m data_prep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, section, help_, cls in (
        ("prep", "prep", "read, select, split, cache, write manifests", PrepConfig),
        ("verify", "prep", "decode every cached image, re-encode damaged ones from the source", PrepConfig),
        ("folds", "folds", "write the fold file", FoldsConfig),
    ):
        s = sub.add_parser(
            name,
            help=help_,
            description=f"{help_} (YAML section '{section}:')",
            epilog=config_help(cls),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        s.add_argument("--config", action="append", help="experiment YAML (configs/*.yaml); repeat to layer files")
        s.add_argument("overrides", nargs="*", help="key=value overrides of the stage config")
        if name == "verify":
            s.add_argument(
                "--shallow", action="store_true", help="only existence, size, header and end marker (seconds at 80k)"
            )
    c = sub.add_parser("convert-folder", help="image folder (<class>/<file>) -> GLD v2 layout")
    c.add_argument("src")
    c.add_argument("dst")
    args = p.parse_args(argv)
    if args.cmd == "prep":
        from data_prep.prep import run_prep

        cfg = load_stage_config(PrepConfig, "prep", args.config, args.overrides, _other_stage_configs())
        run_prep(cfg, progress=sys.stderr.isatty())
    elif args.cmd == "verify":
        from data_prep.verify import run_verify

        cfg = load_stage_config(PrepConfig, "prep", args.config, args.overrides, _other_stage_configs())
        return 0 if run_verify(cfg, deep=not args.shallow, progress=sys.stderr.isatty())["ok"] else 1
    elif args.cmd == "folds":
        from data_prep.folds import run_folds
        from data_prep.stage import stage_os_errors

        cfg = load_stage_config(FoldsConfig, "folds", args.config, args.overrides, _other_stage_configs())
        with stage_os_errors("folds"):
            print(run_folds(cfg))
    else:
        from data_prep.readers import image_folder_to_gld

        df = image_folder_to_gld(args.src, args.dst)
        print(f"wrote {len(df)} images in {df['landmark_id'].nunique()} classes to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
