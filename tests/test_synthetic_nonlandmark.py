"""The offline default looks like the competition: non-landmark scenes, a non-landmark pool and a
GLR 2020-style competition folder with its solution, all deterministic from the seed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common import schema
from data_prep import synthetic, synthetic_render
from data_prep.competition import read_competition_images, read_solution

SPEC = synthetic.SynthSpec(
    num_classes=6, max_per_class=10, min_per_class=3, tail=1.0, image_size=32, nonlandmark=10, competition=12
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    df = synthetic.generate(root, SPEC, workers=1)
    return root, df


def files_under(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_scenes_are_deterministic_and_varied():
    a = np.asarray(synthetic.render_scene(0, 1, 5, 48))
    assert np.array_equal(a, np.asarray(synthetic.render_scene(0, 1, 5, 48)))
    others = [np.asarray(synthetic.render_scene(0, 1, j, 48)) for j in range(6, 12)]
    assert all(o.shape != a.shape or not np.array_equal(o, a) for o in others)
    other_stream = np.asarray(synthetic.render_scene(0, 2, 5, 48))
    assert other_stream.shape != a.shape or not np.array_equal(other_stream, a)
    assert np.asarray(synthetic.render_scene(0, 1, 7, 48)).std() > 5  # a scene, not a flat colour


def test_scenes_never_draw_a_landmark(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a non-landmark scene drew a landmark design")

    monkeypatch.setattr(synthetic_render, "_draw_landmark", refuse)
    for j in range(40):  # 40 scenes: each of the five kinds many times over
        synthetic.render_scene(3, 1, j, 32)
    with pytest.raises(AssertionError, match="drew a landmark"):  # the guard is live for landmark photos
        synthetic.render_photo(synthetic._landmark_design(3, 0), 3, 0, 0, 32)


def test_generated_layout_and_counts(generated):
    root, df = generated
    pool = pd.read_csv(root / synthetic.NONLANDMARK_CSV, dtype=str)
    assert len(pool) == 10 and pool["id"].is_unique
    assert all(synthetic.nonlandmark_path(root, i).is_file() for i in pool["id"])
    comp = read_competition_images(root / synthetic.COMPETITION_DIR)  # GLR 2020 layout, auto-detected
    assert len(comp) == 12 and all(os.path.isfile(src) for src in comp["src"])
    sol = read_solution(root / synthetic.COMPETITION_DIR / synthetic.SOLUTION_FILE)
    assert sol["id"].tolist() == comp["id"].tolist()
    n_lm = int(sol["landmarks"].map(len).gt(0).sum())
    assert n_lm == round(12 * SPEC.competition_landmarks)
    assert set(sol["usage"]) <= {"public", "private"}
    train_lids = set(df["landmark_id"])
    assert all(lids[0] in train_lids for lids in sol["landmarks"] if lids)  # real landmarks of the set
    ids = set(df["id"]) | set(pool["id"]) | set(comp["id"])
    assert len(ids) == len(df) + len(pool) + len(comp)  # no id names two images


def test_competition_photos_are_fresh_renderings(generated):
    root, df = generated
    train_bytes = {synthetic.image_path(root, i).read_bytes() for i in df["id"]}
    comp = read_competition_images(root / synthetic.COMPETITION_DIR)
    assert not any(Path(src).read_bytes() in train_bytes for src in comp["src"])


def test_generation_is_deterministic(generated, tmp_path):
    root, _ = generated
    synthetic.generate(tmp_path, SPEC, workers=2)
    for folder in ("train", synthetic.NONLANDMARK_DIR, synthetic.COMPETITION_DIR):
        assert files_under(tmp_path / folder) == files_under(root / folder), folder
    assert (tmp_path / synthetic.NONLANDMARK_CSV).read_bytes() == (root / synthetic.NONLANDMARK_CSV).read_bytes()


def test_old_generator_version_is_regenerated(tmp_path):
    spec = synthetic.SynthSpec(num_classes=2, max_per_class=3, min_per_class=2, image_size=24, nonlandmark=3)
    synthetic.generate(tmp_path, spec, workers=1)
    stale = synthetic.nonlandmark_path(tmp_path, pd.read_csv(tmp_path / synthetic.NONLANDMARK_CSV, dtype=str)["id"][0])
    stale.write_bytes(b"stale")
    record = json.loads((tmp_path / synthetic.SPEC_FILE).read_text())
    record["generator_version"] = synthetic.GENERATOR_VERSION - 1
    (tmp_path / synthetic.SPEC_FILE).write_text(json.dumps(record))
    assert not synthetic.is_complete(tmp_path, spec)
    synthetic.generate(tmp_path, spec, workers=1)
    assert synthetic.is_complete(tmp_path, spec) and stale.read_bytes()[:3] == b"\xff\xd8\xff"  # re-rendered


def test_auto_sizes_follow_the_landmark_photos():
    spec = synthetic.SynthSpec(num_classes=60, max_per_class=500, tail=0.8)  # the shipped default's shape
    photos = sum(synthetic.class_sizes(spec))
    assert synthetic.nonlandmark_count(spec) == round(0.17 * photos)
    assert 300 <= synthetic.competition_count(spec) <= 500  # "a few hundred"
    tiny = synthetic.SynthSpec(num_classes=3, max_per_class=4)
    assert synthetic.nonlandmark_count(tiny) == synthetic.competition_count(tiny) == 24
    assert synthetic.nonlandmark_count(synthetic.SynthSpec(nonlandmark=0)) == 0


# ---- the default-like tiny prep (tests/conftest.py TINY_PREP, source synthetic) ------------------


def test_default_like_prep_has_half_nonlandmark_test_and_a_pool(tiny_data):
    data_dir = tiny_data["data_root"] / "tiny"
    r = tiny_data["report"]
    test = schema.read_manifest(data_dir, "test")
    assert (test["label"] == schema.NON_LANDMARK).mean() >= 0.5
    pool = pd.read_csv(data_dir / "nonlandmark.csv")
    assert len(pool) > 0 and (pool["label"] == schema.NON_LANDMARK).all()
    assert r["nonlandmark"]["pool"] == len(pool)
    comp = schema.read_manifest(data_dir, schema.COMPETITION)
    order = pd.read_csv(data_dir / schema.COMPETITION_ORDER, dtype=str)
    raw_comp = tiny_data["data_root"] / "raw" / "tiny" / synthetic.COMPETITION_DIR
    assert order["id"].tolist() == pd.read_csv(raw_comp / "sample_submission.csv", dtype=str)["id"].tolist()
    assert (order["status"] == "ok").all() and comp["id"].tolist() == order["id"].tolist()
    assert r["competition"]["labelled"] and (comp["label"] == schema.NON_LANDMARK).mean() > 0.5
    assert (comp["label"] >= 0).any()  # landmarks of kept classes are recognisable test rows
    assert set(comp["label"]) <= set(range(r["classes_kept"])) | {schema.NON_LANDMARK, schema.OTHER_LANDMARK}


def test_synthetic_extras_can_be_switched_off(tmp_path):
    from data_prep.prep import run_prep
    from tests.conftest import tiny_prep_config

    cfg = tiny_prep_config(
        tmp_path / "data", synth_classes=3, synth_max_per_class=16, synth_nonlandmark=0, synth_competition=0
    )
    r = run_prep(cfg, progress=False)
    out = tmp_path / "data" / "tiny"
    assert r["competition"] is None and r["nonlandmark"] is None
    assert not (out / "competition.csv").exists() and not (out / "nonlandmark.csv").exists()
    assert (schema.read_manifest(out, "test")["label"] >= 0).all()
