"""User-facing errors: one clear line naming what went wrong and where.

Library code raises :class:`PipelineError` (or a subclass) for anything a user can fix
(bad config key, missing manifest, unknown model). The CLI faces catch it and print a single
``error: ...`` line with a non-zero exit code instead of a traceback from deep inside.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PipelineError(Exception):
    """An error caused by user input (config, data, names). Printed as one line by the CLIs."""


class ConfigError(PipelineError):
    """Unknown/missing/ill-typed configuration key."""


class DataError(PipelineError):
    """Bad or missing input data (manifest, CSV row, image file)."""


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> str:
    """Return a ``did you mean: a, b`` hint (or a listing when nothing is close)."""
    choices = sorted(set(choices))
    hits = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if hits:
        return "did you mean: " + ", ".join(hits) + "?"
    shown = ", ".join(choices[:20]) + (" ..." if len(choices) > 20 else "")
    return f"valid: {shown}"
