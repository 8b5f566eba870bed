"""The training loop's own cost: the pipeline's epoch vs a plain PyTorch loop on the same tensors.

    .venv/bin/python bench/bench_loop.py [--quick] [--pairs 2]

For each case (model x data), one process alternates A B A B ...:

* **A, the pipeline**: ``build_train_input`` (the input path ``auto`` picks: batched for the packed
  CIFAR cache, per-item for the default's JPEG cache), ``accelerator.prepare``, the prefetch
  thread when ``prefetch`` resolves on (``auto``: on a GPU only) and
  :func:`pipeline.train.engine.train_one_epoch` (accumulate context, NaN guard, schedule, loss factory);
* **B, a plain loop**: the same images already decoded in one uint8 tensor in memory, a random
  permutation, per-sample random crop + flip by indexing, normalise, forward, cross-entropy,
  backward, Adam step, in the same precision and memory format.

Colour jitter is off in every case (B has none; its cost is in bench_input.py). Same model, batch 64,
same precision (``auto``: bf16 on CPUs with native bf16, else fp32).
Reported: images/s of each pass and the ratio A/B per pair (the goal is >= 0.95x), with the
1-minute load average. Data: the real CIFAR-10 subset of ../shared/data (skipped when absent)
and a generated landmark set in the default's layout (72 px, crop 64), packed (batched path) and as
the default's JPEG cache (per-item path: A decodes each JPEG once into its RAM cache,
``ram_cache_mb``, during its first timed pass, as a run does in its first epoch; B never decodes;
the "no RAM cache" rows decode every image every time and so price the JPEG decode, not the loop).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import schema  # noqa: E402
from pipeline.config import TrainConfig  # noqa: E402
from pipeline.data.datasets import IMAGENET_MEAN, IMAGENET_STD, build_dataset
from pipeline.data.loaders import build_train_input
from pipeline.models import create_model  # noqa: E402
from pipeline.optim.factories import build_loss, build_optimizer, build_schedule  # noqa: E402
from pipeline.runtime import new_accelerator, resolve_channels_last
from pipeline.train.engine import StepParts, train_one_epoch
from pipeline.train.loop import training_feed

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def prep_cifar(root: Path) -> Path | None:
    from data_prep.config import PrepConfig
    from data_prep.prep import run_prep

    if not CIFAR.is_dir():
        return None
    cfg = PrepConfig(dataset="cifar", source="cifar10", source_root=str(CIFAR), data_root=str(root), top_k=1000,
                     sample_ratio=1.0, image_size=32, packed=True, val_frac=0.1, test_frac=0.1)  # fmt: skip
    run_prep(cfg, progress=False)
    return root / "cifar"


def prep_default(root: Path, packed: bool = False) -> Path:
    from data_prep.config import PrepConfig
    from data_prep.prep import run_prep

    name = "synth_packed" if packed else "synth"
    cfg = PrepConfig(dataset=name, source="synthetic", packed=packed, data_root=str(root), synth_classes=20,
                     synth_max_per_class=120, synth_min_per_class=40, synth_image_size=96, top_k=20,
                     sample_ratio=1.0, image_size=72, synth_nonlandmark=0, synth_competition=0)  # fmt: skip
    run_prep(cfg, progress=False)
    return root / name


def resident(data_dir: Path, rows, cache: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training image decoded once into one uint8 (N, 3, H, W) tensor, and the targets."""
    ds = build_dataset(data_dir, rows, None, cache)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    return images, torch.as_tensor(rows["label"].to_numpy())


def pipeline_pass(model, opt, cfg: TrainConfig, ti, acc, batches: int, epoch: int) -> float:
    """``ti``: the training input, built once per case as the trainer builds it once per run (so
    the JPEG cache's RAM cache fills in the first pass, as in a run's first epoch)."""
    loader = ti.loader
    ti.set_epoch(epoch)
    parts = StepParts(opt, build_loss(cfg), build_schedule(opt, cfg, batches), None, ti.device_transform)
    done, t0 = 0, time.perf_counter()
    while done < batches:  # as many passes over the loader as the measurement needs
        train_one_epoch(
            model, training_feed(loader, cfg, acc), parts, acc, resolve_channels_last(cfg.channels_last), batches - done
        )
        done += min(len(loader), batches - done)
    return batches * cfg.batch_size / (time.perf_counter() - t0)


def plain_pass(model, opt, images, targets, cfg: TrainConfig, precision: str, batches: int, seed: int) -> float:
    channels_last = resolve_channels_last(cfg.channels_last)
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    n, _, h, w = images.shape
    size, pad = cfg.img_size, cfg.crop_padding
    perm = torch.randperm(n, generator=g)
    model.train()
    t0 = time.perf_counter()
    for b in range(batches):
        idx = perm[(b * cfg.batch_size) % (n - cfg.batch_size) :][: cfg.batch_size]
        x = images[idx]
        if pad:
            x = F.pad(x, (pad,) * 4)
        top = torch.randint(0, x.shape[2] - size + 1, (len(idx),), generator=g)
        left = torch.randint(0, x.shape[3] - size + 1, (len(idx),), generator=g)
        x = torch.stack([x[i, :, t : t + size, s : s + size] for i, (t, s) in enumerate(zip(top, left))])
        flip = torch.rand(len(idx), generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        x = (x.float() - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x).float(), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batches * cfg.batch_size / (time.perf_counter() - t0)


def run_case(name: str, model_name: str, data_dir: Path, cfg: TrainConfig, batches: int, pairs: int) -> dict:
    acc = new_accelerator(cfg.mixed_precision)
    rows = schema.read_manifest(data_dir, "train")
    images, targets = resident(data_dir, rows, cfg.cache)
    n_cls = len(schema.read_label_map(data_dir))
    channels_last = resolve_channels_last(cfg.channels_last)
    results = {"pipeline": [], "plain": []}
    torch.manual_seed(0)
    model_a = create_model(model_name, n_cls, small_input=cfg.small_input)
    model_b = create_model(model_name, n_cls, small_input=cfg.small_input)
    model_b.load_state_dict(model_a.state_dict())
    if channels_last:
        model_a, model_b = (m.to(memory_format=torch.channels_last) for m in (model_a, model_b))
    opt_a, opt_b = build_optimizer(model_a, cfg), build_optimizer(model_b, cfg)
    model_a, opt_a = acc.prepare(model_a, opt_a)
    ti = build_train_input(data_dir, rows, cfg)
    ti.loader = acc.prepare_data_loader(ti.loader)
    # warm-up (allocator, oneDNN primitives) for both, not timed
    pipeline_pass(model_a, opt_a, cfg, ti, acc, 3, 99)
    plain_pass(model_b, opt_b, images, targets, cfg, acc.mixed_precision, 3, 99)
    for p in range(pairs):
        results["pipeline"].append(pipeline_pass(model_a, opt_a, cfg, ti, acc, batches, p))
        results["plain"].append(plain_pass(model_b, opt_b, images, targets, cfg, acc.mixed_precision, batches, p))
    ratios = [a / b for a, b in zip(results["pipeline"], results["plain"])]
    row = {
        "case": name,
        "precision": acc.mixed_precision,
        "channels_last": channels_last,
        "input_path": ti.path,
        "pipeline_img_s": [round(v, 1) for v in results["pipeline"]],
        "plain_img_s": [round(v, 1) for v in results["plain"]],
        "ratio_per_pair": [round(r, 3) for r in ratios],
        "ratio_median": round(float(np.median(ratios)), 3),
        "load": load(),
    }
    print(
        f"| {name} | {row['input_path']} | {row['precision']} | "
        f"{' / '.join(f'{v:.0f}' for v in results['pipeline'])} | {' / '.join(f'{v:.0f}' for v in results['plain'])} | "
        f"{' / '.join(f'{r:.2f}' for r in ratios)} | **{row['ratio_median']:.2f}x** | {row['load']} |",
        flush=True,
    )
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer batches (a smoke run)")
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    rows = []
    print(f"# threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| case | input path | precision | pipeline img/s (A) | plain img/s (B) | A/B per pair | median | load |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cifar = prep_cifar(root)
        synth = prep_default(root)
        scale = 4 if args.quick else 1
        cases = []
        if cifar is not None:
            base = dict(dataset="cifar", img_size=32, small_input=True, cache="packed", crop_padding=4,
                        color_jitter=0.0, batch_size=64)  # fmt: skip
            cases += [
                ("CIFAR simple_cnn", "simple_cnn", cifar, TrainConfig(**{**base, "small_input": False}), 120),
                ("CIFAR resnet18 (3x3 stem)", "resnet18", cifar, TrainConfig(**base), 12),
            ]
        # the default's images both ways: packed (the batched path) and its JPEG cache (per-item
        # path; A's RAM cache fills in its first pass; without it, the row prices the JPEG decode)
        packed = prep_default(root, packed=True)
        base = dict(dataset="synth_packed", img_size=64, cache="packed", batch_size=64, color_jitter=0.0)
        jpeg = {**base, "dataset": "synth", "cache": "jpeg"}
        cases += [
            ("default simple_cnn, packed", "simple_cnn", packed, TrainConfig(**base), 40),
            ("default resnet18, packed", "resnet18", packed, TrainConfig(**base), 12),
            ("default simple_cnn, JPEG cache", "simple_cnn", synth, TrainConfig(**jpeg), 40),
            ("default resnet18, JPEG cache", "resnet18", synth, TrainConfig(**jpeg), 12),
            (
                "default simple_cnn, JPEG cache, no RAM cache",
                "simple_cnn",
                synth,
                TrainConfig(**jpeg, ram_cache_mb=0),
                40,
            ),
        ]
        for name, model, data_dir, cfg, batches in cases:
            rows.append(run_case(name, model, data_dir, cfg, max(2, batches // scale), args.pairs))
    print("RESULT " + json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
