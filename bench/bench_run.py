"""A whole ``pipeline train`` run against a plain PyTorch script doing the same job (issue 22).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_run.py [--pairs 2] [--epochs 15]

Data: the CIFAR-10 subset prepared by ``make prep DATASET=cifar10 CIFAR_ROOT=../shared/data/cifar10_subset``
and ``make folds DATASET=cifar10`` (data/cifar10, folds/cifar10_k5_s42.csv; fold 0 = 7200 train,
1800 val, 2000 test images).

* **A, the pipeline**: ``python -m pipeline train --config configs/cifar10.yaml models=simple_cnn
  epochs=E`` into a fresh runs folder (val every epoch, last + best checkpoints, metrics.csv,
  curves, OOF and test predictions, per-class analysis, summary, DONE).
* **B, a plain script** (``--plain``, this file): only torch and numpy; the same images, fold,
  LeNet, Adam 5e-4, halve-on-drop schedule, pad-4 random crop + flip, batch 64, the same
  precision and memory format; val loss + top-1 every epoch, last.pt (model + optimizer) every
  epoch and best.pt when top-1 improves (atomic), then the best weights' test probabilities
  saved to test.npz.

Each is a fresh process, paired A B, B A, A B ...; reported per run: wall seconds, seconds to the first
log line (start-up), seconds from the first epoch line to the last one, and after it (end), plus
the ratio B/A per pair (the goal: >= 0.9) and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "cifar10"
FOLDS = ROOT / "folds" / "cifar10_k5_s42.csv"


def timed(cmd: list[str], epochs: int) -> dict:
    """Wall time of ``cmd`` and when its first line / first and last epoch line reached stderr."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    epoch_lines: list[float] = []
    tail: list[str] = []
    for line in proc.stderr:
        now = time.perf_counter() - t0
        first = now if first is None else first
        if f"epoch {len(epoch_lines) + 1}/{epochs}:" in line:
            epoch_lines.append(now)
        tail = [*tail[-5:], line]
    if proc.wait() != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{''.join(tail)}")
    wall = time.perf_counter() - t0
    if len(epoch_lines) != epochs:
        sys.exit(f"error: {' '.join(cmd)} logged {len(epoch_lines)} of {epochs} epoch lines")
    return {"wall": wall, "start": first, "epochs": epoch_lines[-1] - epoch_lines[0], "first_epoch": epoch_lines[0],
            "end": wall - epoch_lines[-1]}  # fmt: skip


def run_pair(tmp: Path, i: int, epochs: int) -> tuple[dict, dict]:
    """A then B in even pairs, B then A in odd ones (A B B A ...): a load that rises or falls
    during the benchmark favours neither side."""
    py = sys.executable
    pipeline = [py, "-m", "pipeline", "train", "--config", "configs/cifar10.yaml", "models=simple_cnn",
                f"epochs={epochs}", f"runs_root={tmp / f'a{i}'}", "progress=false"]  # fmt: skip
    plain = [py, str(Path(__file__).resolve()), "--plain", "--epochs", str(epochs), "--out", str(tmp / f"b{i}")]
    if i % 2:
        b = timed(plain, epochs)
        return timed(pipeline, epochs), b
    a = timed(pipeline, epochs)
    return a, timed(plain, epochs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--plain", action="store_true", help="run B (the plain script) once")
    p.add_argument("--out", help="B's output folder")
    args = p.parse_args()
    if not (DATA / "packed_32.u8").is_file() or not FOLDS.is_file():
        sys.exit("error: no CIFAR-10 prep: make prep DATASET=cifar10 CIFAR_ROOT=../shared/data/cifar10_subset "
                 "&& make folds DATASET=cifar10")  # fmt: skip
    if args.plain:
        plain_run(Path(args.out), args.epochs)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_run_") as tmp:
        for i in range(args.pairs):
            load = round(os.getloadavg()[0], 2)
            a, b = run_pair(Path(tmp), i, args.epochs)
            rows.append({"pair": i + 1, "load": load, "pipeline": a, "plain": b, "ratio": b["wall"] / a["wall"]})
    print(f"| pair | load | run | wall s | first line s | epoch 1 s | epochs 2-{args.epochs} s | end s | B/A |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name in ("pipeline", "plain"):
            t = r[name]
            ratio = f"{r['ratio']:.2f}x" if name == "plain" else ""
            print(f"| {r['pair']} | {r['load']} | {name} | {t['wall']:.1f} | {t['start']:.1f} | "
                  f"{t['first_epoch'] - t['start']:.1f} | {t['epochs']:.1f} | {t['end']:.1f} | {ratio} |")  # fmt: skip
    ratios = [r["ratio"] for r in rows]
    total = sum(r["plain"]["wall"] for r in rows) / sum(r["pipeline"]["wall"] for r in rows)
    median = statistics.median(ratios)
    print(f"plain needs {min(ratios):.2f}-{max(ratios):.2f}x the pipeline's time (median {median:.2f}, "
          f"all pairs' seconds {total:.2f})")  # fmt: skip
    print("RESULT " + json.dumps({"epochs": args.epochs, "pairs": rows}))


# ---- B: the plain script (torch + numpy only, nothing of the pipeline) ----


def read_split(epochs_dir: Path) -> dict:
    """uint8 NCHW images and labels of fold 0's train/val rows and of the test rows."""
    import csv

    import numpy as np

    meta = json.loads((DATA / "packed_32.json").read_text())
    pos = {k: i for i, k in enumerate(meta["ids"])}
    images = np.memmap(DATA / "packed_32.u8", dtype=np.uint8, mode="r", shape=tuple(meta["shape"]))
    labels = {}
    for name in ("train", "test"):
        with open(DATA / f"{name}.csv", newline="") as f:
            labels[name] = {r["id"]: int(r["label"]) for r in csv.DictReader(f)}
    with open(FOLDS, newline="") as f:
        fold = {r["id"]: int(r["fold"]) for r in csv.DictReader(f)}
    ids = {"train": [k for k in labels["train"] if fold[k] != 0], "val": [k for k in labels["train"] if fold[k] == 0],
           "test": list(labels["test"])}  # fmt: skip
    out = {}
    for split, keys in ids.items():
        src = labels["test" if split == "test" else "train"]
        x = np.ascontiguousarray(images[[pos[k] for k in keys]].transpose(0, 3, 1, 2))
        out[split] = (x, np.array([src[k] for k in keys]))
    return out


def plain_run(out: Path, epochs: int) -> None:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    t0 = time.perf_counter()
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # the pipeline's mixed_precision=auto
    out.mkdir(parents=True, exist_ok=True)
    data = {k: (torch.from_numpy(x), torch.from_numpy(y)) for k, (x, y) in read_split(out).items()}
    print(f"plain: data read in {time.perf_counter() - t0:.1f}s, bf16={bf16}", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(inplace=True), nn.Linear(120, 84),
        nn.ReLU(inplace=True), nn.Linear(84, 10),
    ).to(memory_format=torch.channels_last if bf16 else torch.contiguous_format)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255

    def prep(x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if bf16 else x

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(prep(x)).float()

    def save(obj: dict, name: str) -> None:
        torch.save(obj, out / f".{name}.tmp")
        os.replace(out / f".{name}.tmp", out / name)

    best, prev, lr = -1.0, None, 5e-4
    for epoch in range(epochs):
        te = time.perf_counter()
        loss_sum = train_epoch(model, opt, forward, *data["train"], seed=epoch)
        model.eval()
        with torch.no_grad():
            x, y = data["val"]
            logits = torch.cat([forward(x[i : i + 64]) for i in range(0, len(x), 64)])
            val_loss = F.cross_entropy(logits, y).item()
            top1 = (logits.argmax(1) == y).float().mean().item()
        if prev is not None and top1 < prev:  # halve_on_drop
            lr /= 2
            for g in opt.param_groups:
                g["lr"] = lr
        prev = top1
        save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1}, "last.pt")
        if top1 > best:
            best = top1
            save({"model": model.state_dict(), "epoch": epoch + 1}, "best.pt")
        print(f"plain epoch {epoch + 1}/{epochs}: train_loss {loss_sum:.3f} val_loss {val_loss:.3f} top1 {top1:.3f} "
              f"({time.perf_counter() - te:.1f}s)", file=sys.stderr, flush=True)  # fmt: skip
    model.load_state_dict(torch.load(out / "best.pt")["model"])
    model.eval()
    with torch.no_grad():
        x, y = data["test"]
        probs = torch.cat([forward(x[i : i + 64]).softmax(1) for i in range(0, len(x), 64)])
    np.savez(out / "test.npz", probs=probs.numpy(), labels=y.numpy())


def train_epoch(model, opt, forward, images, targets, seed: int, batch: int = 64, pad: int = 4) -> float:
    """One epoch: shuffle, pad-4 random crop + flip by indexing, cross-entropy, Adam; the mean loss."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    model.train()
    n, _, h, w = images.shape
    perm = torch.randperm(n, generator=g)
    total = torch.zeros(())
    for b in range(0, n, batch):
        idx = perm[b : b + batch]
        x = F.pad(images[idx], (pad,) * 4)
        top = torch.randint(0, 2 * pad + 1, (len(idx),), generator=g)
        left = torch.randint(0, 2 * pad + 1, (len(idx),), generator=g)
        x = torch.stack([x[i, :, t : t + h, s : s + w] for i, (t, s) in enumerate(zip(top.tolist(), left.tolist()))])
        flip = torch.rand(len(idx), generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        loss = F.cross_entropy(forward(x), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * len(idx)
    return total.item() / n


if __name__ == "__main__":
    main()
