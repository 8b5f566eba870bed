"""Helpers for the thin CLI faces: one ``error: ...`` line and exit code 2 for user errors, and
``--key value`` accepted wherever ``key=value`` is."""

from __future__ import annotations

import sys
from collections.abc import Callable

from common.errors import PipelineError
from common.log import setup_logging

# the commands whose trailing arguments are config overrides (python -m pipeline / -m data_prep)
OVERRIDE_COMMANDS = ("prep", "verify", "folds", "train", "predict", "embed", "ensemble", "submit", "export", "settings")
# the real options of those commands, with how many values each takes (tests/test_config.py
# checks this against each command's --help); every other --key is a config key
OWN_FLAGS = {"--config": 1, "--shallow": 0, "--help": 0, "-h": 0}


def dashed_overrides(argv: list[str]) -> list[str]:
    """``train --epochs 3 --config c.yaml --model-kwargs.drop_rate=0.2 --cpu`` -> ``train --config
    c.yaml epochs=3 model_kwargs.drop_rate=0.2 cpu=true``.

    People type ``--key value`` out of habit and argparse would refuse it as an unknown option.
    The overrides go last, after the command's own options: argparse takes one run of positionals
    only, so ``epochs=3 --config c.yaml lr=1`` would be refused too. Other commands are untouched.
    """
    if not argv or argv[0] not in OVERRIDE_COMMANDS:
        return list(argv)
    own: list[str] = []
    overrides: list[str] = []
    rest = list(argv[1:])
    while rest:
        token = rest.pop(0)
        name = token.split("=", 1)[0]
        if name in OWN_FLAGS:
            own += [token, *(rest.pop(0) for _ in range(OWN_FLAGS[name] if "=" not in token and rest else 0))]
        elif token.startswith("--") and len(token) > 2:
            key = name[2:].replace("-", "_")
            if "=" in token:
                value = token.split("=", 1)[1]
            else:
                value = rest.pop(0) if rest and not rest[0].startswith("--") else "true"
            overrides.append(f"{key}={value}")
        else:
            overrides.append(token)
    return [argv[0], *own, *overrides]


def run_main(fn: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``fn(argv)``; a :class:`PipelineError` becomes one stderr line and exit code 2."""
    setup_logging()
    try:
        return int(fn(dashed_overrides(sys.argv[1:] if argv is None else argv)) or 0)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (finished outputs are kept; rerun to resume)", file=sys.stderr)
        return 130
