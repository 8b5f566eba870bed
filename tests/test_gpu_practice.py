"""GPU practice rehearsed on a CPU: fp16's GradScaler state in last.pt (an exact resume keeps the
loss scale), torch.compile in place (checkpoints keep plain keys) and gradient checkpointing."""

import dataclasses

import pytest
import torch

from common import schema
from common.errors import ConfigError
from pipeline.runtime import new_accelerator
from pipeline.train.stage import fit
from tests.test_train import tiny_train_config


def _scaled_accelerator():
    """An Accelerator with a GradScaler, as fp16 on a GPU has. Accelerate gives none on a CPU, so the
    scaler is attached before prepare (its optimizer wrapper steps through it); growth every step
    makes the scale a counter of optimizer steps."""
    acc = new_accelerator("no", cpu=True)
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1)
    return acc


def _scale(path) -> float:
    return torch.load(path, weights_only=False)["scaler"]["scale"]


def test_grad_scaler_state_is_saved_and_resumed(tiny_data, tmp_path, one_thread):
    cfg = tiny_train_config(tiny_data, tmp_path, epochs=1)
    fit(cfg, "simple_cnn", 0, accelerator=_scaled_accelerator())
    out = schema.run_dir(tmp_path, "t", "simple_cnn", 0)
    first = _scale(out / schema.RUN_LAST)
    assert first > 2.0**4  # it grew once per step of epoch 1
    fit(dataclasses.replace(cfg, epochs=2), "simple_cnn", 0, accelerator=_scaled_accelerator())
    # resumed from the saved scale: epoch 2 grows it by the same factor again (a fresh scaler
    # would have started over at 2**4 and ended where epoch 1 ended)
    assert _scale(out / schema.RUN_LAST) == pytest.approx(first * first / 2.0**4)


def test_compile_keeps_plain_checkpoint_keys(tiny_data, tmp_path, one_thread, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(type(self).__name__))
    fit(tiny_train_config(tiny_data, tmp_path, epochs=1, compile=True), "simple_cnn", 0)
    assert calls, "compile=true did not compile the model"
    keys = torch.load(schema.run_dir(tmp_path, "t", "simple_cnn", 0) / schema.RUN_BEST, weights_only=False)["model"]
    assert not any(k.startswith("_orig_mod.") for k in keys)


def test_grad_checkpointing_needs_a_model_that_has_it(tiny_data, tmp_path, one_thread):
    with pytest.raises(ConfigError, match="grad_checkpointing=true: 'simple_cnn' has no set_grad_checkpointing"):
        fit(tiny_train_config(tiny_data, tmp_path, epochs=1, grad_checkpointing=True), "simple_cnn", 0)
    fit(tiny_train_config(tiny_data, tmp_path, epochs=1, grad_checkpointing=True, img_size=32), "resnet18", 0)
    assert (schema.run_dir(tmp_path, "t", "resnet18", 0) / schema.RUN_DONE).is_file()


def test_keep_last_false_drops_last_pt_and_more_epochs_say_retrain(tiny_data, tmp_path, one_thread):
    """keep_last=false: a finished fold keeps best.pt (it predicts) but not last.pt (134 MB for a
    ResNet-18 fold); asking it for more epochs is one line, not a resume from nothing."""
    from common.errors import PipelineError

    cfg = tiny_train_config(tiny_data, tmp_path, epochs=1, keep_last=False)
    fit(cfg, "simple_cnn", 0)
    out = schema.run_dir(tmp_path, "t", "simple_cnn", 0)
    assert (out / schema.RUN_BEST).is_file() and not (out / schema.RUN_LAST).exists()
    assert (out / schema.RUN_DONE).is_file()
    with pytest.raises(PipelineError, match="finished without last.pt .* retrain from scratch"):
        fit(dataclasses.replace(cfg, epochs=2), "simple_cnn", 0)
