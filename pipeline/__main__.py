"""``python -m pipeline COMMAND [--config FILE] [key=value ...]``.

Stage commands read one section of an experiment YAML plus ``key=value`` overrides:

    train     fit every (model, fold) of the config                        [train:]
    predict   finished runs -> predictions on any manifest, with TTA        [predict:]
    embed     finished runs -> L2-normalised embeddings (for kNN retrieval)  [predict:]
    ensemble  OOF/test predictions -> leaderboard (+ internal-split CSV)     [ensemble:]
    submit    competition predictions -> submissions/<name>.csv + validate   [ensemble:]
    export    finished runs -> an offline bundle (weights, recipes, wheel)   [export:]

Other commands: ``validate FILE [--sample sample_submission.csv]`` checks a submission the way
Kaggle would; ``compare EXP [EXP ...]`` puts several experiments side by side.

Multi-process: ``accelerate launch --multi_gpu --num_processes N -m pipeline train ...``
(on CPU add ``ACCELERATE_USE_CPU=true``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from common.cli import run_main
from common.config import config_help, load_stage_config

# command -> (config class, YAML section, runner "module:function", one-line help)
STAGE_COMMANDS = {
    "train": ("pipeline.config:TrainConfig", "train", "pipeline.train.stage:main", "fit every (model, fold)"),
    "predict": (
        "pipeline.config_stages:PredictConfig",
        "predict",
        "pipeline.infer.predict:main",
        "predict a manifest from runs",
    ),
    "embed": (
        "pipeline.config_stages:PredictConfig",
        "predict",
        "pipeline.infer.embed:main",
        "embeddings for kNN retrieval",
    ),
    "ensemble": (
        "pipeline.config_stages:EnsembleConfig",
        "ensemble",
        "pipeline.ensemble.stage:main",
        "leaderboard + internal CSV",
    ),
    "submit": (
        "pipeline.config_stages:EnsembleConfig",
        "ensemble",
        "pipeline.submit.stage:main",
        "the competition submission",
    ),
    "export": (
        "pipeline.config_stages:ExportConfig",
        "export",
        "pipeline.submit.export:main",
        "offline inference bundle",
    ),
}


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _end_process_group() -> None:
    """Shut a multi-process group down before exit (a gloo group left to the interpreter's exit
    sometimes aborts with 'terminate called without an active exception')."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_stage_configs() -> tuple[type, ...]:
    """Every stage's config class: a command-line key of another stage is left to that stage."""
    from data_prep.config import FoldsConfig, PrepConfig

    return (PrepConfig, FoldsConfig, *{_load(ref) for ref, *_ in STAGE_COMMANDS.values()})


def settings(config: list[str] | None, overrides: list[str]) -> int:
    """One line of what a make target is about to run, so a misspelt make variable shows."""
    from pipeline.config import TrainConfig

    cfg = load_stage_config(TrainConfig, "train", config, overrides, all_stage_configs())
    epochs = {m: cfg.for_model(m).epochs for m in cfg.models}
    shown = str(cfg.epochs) + "".join(f", {m} {e}" for m, e in epochs.items() if e != cfg.epochs)
    print(
        f"dataset={cfg.dataset} config={' + '.join(config or ['(none)'])} experiment={cfg.experiment} "
        f"models={','.join(cfg.models)} folds={','.join(map(str, cfg.folds))} epochs={shown} "
        f"recipe={cfg.optimizer} lr={cfg.lr:g} {cfg.schedule} batch={cfg.batch_size} img={cfg.img_size} "
        f"head={cfg.pool}/{cfg.head}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    p = argparse.ArgumentParser(
        prog="python -m pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, (cls_ref, section, _, help_) in STAGE_COMMANDS.items():
        s = sub.add_parser(
            name,
            help=help_,
            description=f"{help_} (YAML section '{section}:')",
            epilog=config_help(_load(cls_ref)),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        s.add_argument(
            "--config", action="append", help="experiment YAML (configs/*.yaml); repeat to layer a recipe on top"
        )
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3 models=resnet18,simple_cnn")
        s.set_defaults(cls_ref=cls_ref, section=section)
    v = sub.add_parser("validate", help="check a submission CSV the way Kaggle would")
    v.add_argument("file")
    v.add_argument("--sample", help="sample_submission.csv: every one of its ids exactly once, nothing else")
    st = sub.add_parser("settings", help="print the resolved dataset, experiment, models, folds and recipe")
    st.add_argument("--config", action="append")
    st.add_argument("overrides", nargs="*")
    c = sub.add_parser("compare", help="model x experiment table and figure across experiments")
    c.add_argument("experiments", nargs="+")
    c.add_argument("--runs-root", default="runs")
    c.add_argument("--out", default=None, help="output folder (default: runs/compare/<a>_vs_<b>...)")
    c.add_argument("--metric", default="gap", help="sort by this CV metric (gap, top1, top5)")
    args = p.parse_args(argv)
    if args.cmd in STAGE_COMMANDS:
        cfg = load_stage_config(_load(args.cls_ref), args.section, args.config, args.overrides, all_stage_configs())
        from pipeline.runtime import configure_threads

        configure_threads()  # torch / OpenCV threads = the CPUs this process may use (affinity, cgroup quota)
        try:
            return int(_load(STAGE_COMMANDS[args.cmd][2])(cfg) or 0)
        finally:
            _end_process_group()
    if args.cmd == "settings":
        return settings(args.config, args.overrides)
    if args.cmd == "validate":
        return int(_load("pipeline.submit.validate:main")(args.file, args.sample) or 0)
    return int(_load("pipeline.report.compare:main")(args.experiments, args.runs_root, args.out, args.metric) or 0)


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown: freeing every module of torch, its
    compiler stack, pandas and matplotlib one object at a time takes 1-2 s after the work is done
    (bench/bench_run.py). Everything a normal exit runs for us still runs first: the logging
    handlers' flush, the ``atexit`` functions (trackers, temporary files), stdout/stderr. With a
    non-daemon thread still alive, or without ``atexit._run_exitfuncs``, it exits normally."""
    import atexit
    import contextlib
    import logging
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others or not hasattr(atexit, "_run_exitfuncs"):
        sys.exit(code)
    logging.shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(run_main(main))
