"""Embeddings and kNN re-ranking: files, norms, galleries without the held-out rows, fusion."""

import json

import numpy as np
import pandas as pd
import pytest

from common import schema
from common.errors import PipelineError
from pipeline.config_stages import PredictConfig
from pipeline.infer.embed import read_embeddings, run_embed, tune_fusion
from pipeline.runs.predfile import load_predictions
from pipeline.train.stage import fit
from tests.test_train import tiny_train_config


@pytest.fixture(scope="module")
def embedded(tiny_data, tmp_path_factory):
    """simple_cnn (plain head) on fold 0 and a GeM + ArcFace resnet18 on fold 1, then embed."""
    root = tmp_path_factory.mktemp("embed_runs")
    base = dict(epochs=1, limit_train_batches=2)
    fit(tiny_train_config(tiny_data, root, **base), "simple_cnn", 0)
    fit(tiny_train_config(tiny_data, root, pool="gem", neck="linear", embedding_size=32, head="arcface", **base),
        "resnet18", 1)  # fmt: skip
    cfg = PredictConfig(dataset="tiny", data_root=str(tiny_data["data_root"]), runs_root=str(root), experiment="t",
                        batch_size=8, progress=False, knn_k=3)  # fmt: skip
    written = run_embed(cfg)
    return {"root": root, "cfg": cfg, "written": written, "data": tiny_data["data_root"] / "tiny",
            "folds_file": tiny_data["folds_file"]}  # fmt: skip


def test_embeddings_are_normalised_in_manifest_order(embedded):
    for model, fold, dim in (("simple_cnn", 0, 84), ("resnet18", 1, 32)):
        run = schema.run_dir(embedded["root"], "t", model, fold)
        for manifest in ("train", "test", schema.NONLANDMARK):
            ids, emb = read_embeddings(run, manifest)
            assert list(ids) == list(schema.read_manifest(embedded["data"], manifest)["id"])
            assert emb.dtype == np.float16 and emb.shape == (len(ids), dim)
            np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
            assert json.loads((run / f"emb_{manifest}.json").read_text())["fold"] == fold


def test_knn_files_cover_the_same_rows_and_exclude_the_held_out_fold(embedded):
    run = schema.run_dir(embedded["root"], "t", "simple_cnn", 0)
    for manifest in ("oof", "test", schema.NONLANDMARK):
        plain = load_predictions(run / schema.pred_file(manifest))
        fused = load_predictions(run / schema.pred_file(manifest, source="knn"))
        assert list(fused["ids"]) == list(plain["ids"]) and np.array_equal(fused["labels"], plain["labels"])
        assert np.isfinite(fused["probs"]).all() and (fused["probs"] >= 0).all() and (fused["probs"] <= 1).all()
        meta = fused["meta"]["knn"]
        assert meta["k"] == 3 and meta["tuned"]["on"] == ["oof", schema.NONLANDMARK]
    folds = pd.read_csv(embedded["folds_file"], dtype=str)
    n_train_fold = int((folds["fold"] != "0").sum())
    assert meta["gallery"] == n_train_fold  # the fold's own rows are not in its gallery


def test_fusion_with_beta_zero_is_the_classifier(embedded, tmp_path):
    import dataclasses

    cfg = dataclasses.replace(embedded["cfg"], knn_tune=False, knn_alpha=1.0, knn_beta=0.0)
    from pipeline.infer.embed import knn_run
    from pipeline.runs.load import read_run

    run = schema.run_dir(embedded["root"], "t", "simple_cnn", 0)
    knn_run(read_run(run, embedded["data"]), cfg, embedded["data"], 6)
    fused = load_predictions(run / schema.pred_file("test", source="knn"))
    plain = load_predictions(run / schema.pred_file("test"))
    np.testing.assert_allclose(fused["probs"], plain["probs"], atol=2e-3)  # float16 storage
    with pytest.raises(PipelineError, match="knn_k=500 is larger than the gallery"):
        knn_run(read_run(run, embedded["data"]), dataclasses.replace(cfg, knn_k=500), embedded["data"], 6)


def test_tune_fusion_prefers_the_source_that_ranks_non_landmarks_low():
    # classifier: confident on everything; kNN: low scores on the two non-landmark rows
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.95, 0.05], [0.05, 0.95]])
    scores = np.array([[0.8, 0.0], [0.0, 0.7], [0.1, 0.0], [0.0, 0.1]])
    labels = np.array([0, 1, -1, -1])
    alpha, beta, gap = tune_fusion([(probs, scores, labels)])
    assert beta > 0 and gap == pytest.approx(1.0)  # both landmarks ranked above both non-landmarks
    alpha, beta, _ = tune_fusion([(probs, probs, labels)])  # kNN adds nothing: the classifier alone wins
    assert beta == 0.0


def test_ensemble_reads_the_knn_source(embedded):
    from common.errors import DataError
    from pipeline.config_stages import EnsembleConfig
    from pipeline.ensemble.stage import run_ensemble

    root = embedded["root"]
    cfg = EnsembleConfig(dataset="tiny", data_root=str(embedded["data"].parent), runs_root=str(root),
                         experiment="t", submissions_dir=str(root / "subs"), knn=True, name="k")  # fmt: skip
    out = run_ensemble(cfg)
    assert all(p.name == "test_knn.npz" for paths in out["plan"].paths("test").values() for p in paths)
    assert {"simple_cnn", "resnet18"} <= set(out["rows"]["model"])
    knn_file = schema.run_dir(embedded["root"], "t", "resnet18", 1) / "test_knn.npz"
    knn_file.rename(knn_file.with_suffix(".bak"))
    try:
        with pytest.raises(DataError, match="kNN prediction file not found: .*test_knn.npz; run 'make embed' first"):
            run_ensemble(cfg)
    finally:
        knn_file.with_suffix(".bak").rename(knn_file)
