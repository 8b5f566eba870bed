"""Export stage: an experiment's finished runs -> ONE offline bundle folder (Kaggle code competitions).

``<out_dir>/<experiment>/``::

    bundle.json        what is inside: dataset, experiment, runs, prep identity, library versions
    README.md          how to use it in a Kaggle notebook (no internet)
    label_map.csv      class index -> original landmark id (and name)
    prep.json          the prep identity: fingerprint, label map sha, image_size, resize_mode, cache format
    runs/<experiment>/<model>/fold<k>/
        best.pt        {"model": state_dict, "fused": bool}: fused (re-parameterised) where the model can
        config.yaml    the run's recipe, plus ``fused`` and ``prep``
        summary.json   the run's CV scores (when present)
        DONE
    wheels/landmark_pipeline-<version>-py3-none-any.whl   the project, built offline

A bundle is a run folder tree: ``python -m pipeline predict bundle=DIR test_root=...`` predicts
with it exactly as with ``runs/`` (see :func:`pipeline.infer.predict.predict_competition`). The bundle
is written to a temporary sibling folder and renamed into place: there is never a half bundle.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import schema
from common.errors import PipelineError
from common.io import atomic_write, write_csv, write_json, write_text, write_yaml
from common.lock import LOCK_NAME, folder_lock
from pipeline.config_stages import ExportConfig
from pipeline.runs.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_JSON,
    BUNDLE_RUNS,
    BUNDLE_WHEELS,
    PREP_JSON,
    library_versions,
)
from pipeline.runs.load import check_run, load_run, read_run
from pipeline.runs.predfile import output_errors
from pipeline.runs.prep import read_json, read_prep_identity
from pipeline.runs.scan import finished_runs, mark_done

log = logging.getLogger(__name__)

PROJECT_PACKAGES = ("common", "data_prep", "pipeline")


@torch.no_grad()
def fuse_model(model: torch.nn.Module, img_size: int, where: str | Path = "") -> bool:
    """Re-parameterise ``model`` in place (eval mode) when it can; True if its weights changed form.

    The fused network must give the same logits as the unfused one on a random batch (a wrong
    fold of a BN would otherwise ship silently); models whose ``reparameterize()`` has nothing
    to fuse (e.g. VAN variants without RepLK blocks) stay as they are and return False.
    """
    if not callable(getattr(model, "reparameterize", None)):
        return False
    keys = set(model.state_dict())
    model.eval()
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    before = model(x).float()
    model.reparameterize()
    if set(model.state_dict()) == keys:
        return False
    after = model(x).float()
    tol = 1e-4 * max(1.0, before.abs().max().item())
    err = (after - before).abs().max().item()
    if not err <= tol:
        raise PipelineError(f"{where}: fused network differs from the trained one (max logit error {err:.2e})")
    return True


def build_wheel(dest: str | Path) -> Path:
    """Build the project's wheel into ``dest`` without network (``pip wheel --no-index``).

    The sources are copied to a temporary folder first, so the build leaves no ``build/`` or
    egg-info behind in the checkout and two exports never share a build folder.
    """
    project = Path(__file__).resolve().parents[2]
    if not (project / "pyproject.toml").is_file():
        raise PipelineError(f"export: no pyproject.toml in {project} (an installed copy?); use wheel=false")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export_wheel_") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copy2(project / "pyproject.toml", src / "pyproject.toml")
        for pkg in PROJECT_PACKAGES:
            shutil.copytree(project / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        p = subprocess.run([*cmd, "-w", str(dest), str(src)], capture_output=True, text=True, env=env, timeout=600)
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PipelineError(f"export: building the wheel failed offline ({tail[0]})")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise PipelineError(f"export: expected one wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def bundle_readme(meta: dict) -> str:
    """The bundle's README: what is inside and the Kaggle notebook cells that use it."""
    v = meta["versions"]
    name = meta["experiment"]
    runs = "\n".join(
        f"| {r['model']} | {r['fold']} | {'yes' if r['fused'] else 'no'} | {r.get('val_gap', '')} |"
        for r in meta["runs"]
    )
    wheel = meta.get("wheel") or "(none: exported with wheel=false)"
    return f"""# Offline bundle: experiment `{name}` of data set `{meta["dataset"]}`

Made {meta["created"]} with Python {v["python"]}, torch {v["torch"]}, torchvision {v["torchvision"]},
timm {v["timm"]}, accelerate {v["accelerate"]}, numpy {v["numpy"]}, pandas {v["pandas"]}.
Kaggle images come with torch, torchvision, timm and accelerate preinstalled: the weights are plain
state dicts and load across nearby versions (predict checks every key and shape, and warns when
the torch/timm versions differ from these).

| model | fold | fused | CV GAP |
|---|---|---|---|
{runs}

Images are decoded like prep `{meta["prep"]["fingerprint"]}`: {meta["prep"]["image_size"]} px,
resize `{meta["prep"]["resize_mode"]}`, then the eval crop of each run's recipe. Wheel: `{wheel}`.

## In a Kaggle notebook (internet off)

1. Upload this folder as a Kaggle dataset (e.g. `{name}-bundle`) and add it to the notebook,
   next to the competition's data.
2. Install the project from the bundle (no dependencies: they are preinstalled):

       !pip install --no-index --no-deps /kaggle/input/{name}-bundle/wheels/*.whl

3. Predict the competition's test set straight from its folder (no prep; unreadable images get
   an empty answer):

       !python -m pipeline predict bundle=/kaggle/input/{name}-bundle \\
           test_root=/kaggle/input/landmark-recognition-2021 work_dir=/kaggle/working/work

   (another year: its folder, e.g. `landmark-recognition-2020`; add `tta_flip=true` for
   flip TTA.) This writes the standard layout under `/kaggle/working/work/`:
   `data/{meta["dataset"]}/` (label map, competition order, image cache) and
   `runs/{name}/<model>/fold<k>/competition.npz`.
4. Write the submission:

       !python -m pipeline submit dataset={meta["dataset"]} experiment={name} \\
           data_root=/kaggle/working/work/data runs_root=/kaggle/working/work/runs \\
           submissions_dir=/kaggle/working name=submission

   Kaggle scores `/kaggle/working/submission.csv`.
"""


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished bundle over ``final``: old bundle, then no bundle for an instant, then the new one."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _project_root() -> Path | None:
    """The checkout this code runs from (None when installed from the wheel)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def _export_owned(entry: Path) -> bool:
    """What export itself leaves in ``out_dir``: bundles (``bundle.json``), its lock, its temporaries."""
    temporary = entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name)
    return entry.name == LOCK_NAME or temporary or (entry.is_dir() and (entry / BUNDLE_JSON).is_file())


def check_out_dir(cfg: ExportConfig) -> Path:
    """The bundle's final folder, refused in one line (before anything is written) where a bundle
    would land in or replace what export did not write: inside runs_root or data_root, the
    checkout itself or one of its folders holding anything but bundles, an existing folder that
    is not a bundle (no ``bundle.json``)."""
    if cfg.experiment in ("", ".", "..") or Path(cfg.experiment).name != cfg.experiment:
        raise PipelineError(f"export: experiment '{cfg.experiment}' must be one plain folder name")
    out = Path(cfg.out_dir).resolve()
    final = out / cfg.experiment
    for key, root in (("runs_root", cfg.runs_root), ("data_root", cfg.data_root)):
        if out.is_relative_to(Path(root).resolve()):
            raise PipelineError(f"export: out_dir={cfg.out_dir} is inside {key} {root}: give a folder of its own")
    project = _project_root()
    if project is not None and out.is_relative_to(project):
        top = project / out.relative_to(project).parts[0] if out != project else project
        if top == project or (top.is_dir() and not all(_export_owned(e) for e in top.iterdir())):
            raise PipelineError(
                f"export: out_dir={cfg.out_dir} is {'the checkout' if top == project else f'the project folder {top}'}"
                " (it holds more than bundles): give a folder of its own, e.g. out_dir=export"
            )
    if final.exists() and not (final / BUNDLE_JSON).is_file():
        raise PipelineError(
            f"export: {final} exists and is not a bundle (no {BUNDLE_JSON} written by export): "
            "not replaced; remove it or choose another out_dir"
        )
    return final


def run_export(cfg: ExportConfig) -> Path:
    """Write the bundle of ``cfg.experiment``; returns its folder. Every run is checked first."""
    check_out_dir(cfg)
    data_dir = cfg.data_dir
    label_map = schema.read_label_map(data_dir)
    current = read_prep_identity(data_dir)
    runs = finished_runs(cfg.runs_root, cfg.experiment, cfg.models or None, cfg.folds or None)
    infos = [read_run(r, data_dir) for r in runs]
    for info in infos:
        check_run(info, label_map, data_dir / schema.LABEL_MAP, current)
    out_dir = Path(cfg.out_dir)
    final = out_dir / cfg.experiment
    with output_errors("export"), folder_lock(out_dir, "export"):
        tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.experiment}.tmp-", dir=out_dir))
        try:
            entries = []
            for info in infos:
                run = load_run(info)
                fused = fuse_model(run.model, info.cfg.img_size, info.run_dir) if cfg.fuse else False
                dst = schema.run_dir(tmp / BUNDLE_RUNS, cfg.experiment, info.model_name, info.fold)
                with atomic_write(dst / schema.RUN_BEST, "wb") as f:
                    torch.save({"model": run.model.state_dict(), "fused": fused}, f)
                # check_run made sure the run's recorded prep is this one (current also knows the cache format)
                write_yaml(dst / schema.RUN_CONFIG, {**info.saved, "fused": fused, "prep": current.as_dict()})
                summary = read_json(info.run_dir / schema.RUN_SUMMARY)
                if summary:
                    write_json(dst / schema.RUN_SUMMARY, summary)
                mark_done(dst)
                entries.append(
                    {
                        "model": info.model_name,
                        "fold": info.fold,
                        "path": str(dst.relative_to(tmp)),
                        "fused": fused,
                        "val_gap": round(summary["val_gap"], 4) if "val_gap" in summary else "",
                    }
                )
                log.info("%s: exported%s", info.tag, " (fused)" if fused else "")
                del run
            write_csv(tmp / schema.LABEL_MAP, label_map)
            write_json(tmp / PREP_JSON, current.as_dict())
            wheel = build_wheel(tmp / BUNDLE_WHEELS).name if cfg.wheel else None
            meta = {
                "format": BUNDLE_FORMAT,
                "dataset": cfg.dataset,
                "experiment": cfg.experiment,
                "created": _dt.datetime.now().isoformat(timespec="seconds"),
                "num_classes": len(label_map),
                "prep": current.as_dict(),
                "runs": entries,
                "versions": library_versions(),
                "wheel": wheel,
            }
            write_text(tmp / "README.md", bundle_readme(meta))
            write_json(tmp / BUNDLE_JSON, meta)  # last: a folder with bundle.json is complete
            _move_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def main(cfg: ExportConfig) -> int:
    """CLI face: export, then say where the bundle is and how to use it."""
    path = run_export(cfg)
    meta = read_json(path / BUNDLE_JSON)
    fused = sum(r["fused"] for r in meta["runs"])
    print(f"bundle {path}: {len(meta['runs'])} runs ({fused} fused), wheel {meta['wheel'] or 'none'}")
    print(f"use it: see {path / 'README.md'}")
    return 0
