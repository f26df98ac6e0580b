"""open_clip ``local-dir:`` export: round trip through open_clip itself, atomic writes, clear load errors."""
from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch

import tinyclip  # noqa: F401  (registers the project's configs)
from tinyclip import export
from tinyclip.errors import TinyCLIPError
from tinyclip.export import CONFIG_NAME, WEIGHTS_NAME, load_open_clip_dir, save_open_clip_dir

NAME = "TinyCLIP-smoke-S50"


@pytest.fixture(scope="module")
def model_and_cfg():
    torch.manual_seed(0)
    cfg = open_clip.get_model_config(NAME)
    model = open_clip.CLIP(**cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.logit_scale.fill_(math.log(30.0))
    return model, cfg


@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, 32, 32), open_clip.get_tokenizer(NAME)(["a cat", "a dog on grass"])


def _same_outputs(a, b, batch):
    images, texts = batch
    with torch.no_grad():
        assert torch.equal(a.encode_image(images), b.encode_image(images))
        assert torch.equal(a.encode_text(texts), b.encode_text(texts))
    assert torch.equal(a.logit_scale, b.logit_scale)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_round_trip_through_open_clip(tmp_path, model_and_cfg, batch):
    model, cfg = model_and_cfg
    out = save_open_clip_dir(model, cfg, tmp_path / "export", extra={"note": "hello", "sizes": (1, 2)})
    assert out == tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["model_cfg"] == cfg
    assert config["preprocess_cfg"]["size"] == [32, 32]
    assert config["preprocess_cfg"]["mean"] == list(open_clip.OPENAI_DATASET_MEAN)
    assert config["tinyclip"] == {"note": "hello", "sizes": [1, 2]}
    assert _leftovers(tmp_path) == []

    loaded = open_clip.create_model(f"local-dir:{out}").eval()  # open_clip alone, no tinyclip involved
    _same_outputs(loaded, model, batch)
    via_helper, helper_cfg = load_open_clip_dir(f"local-dir:{out}")
    assert helper_cfg == cfg
    _same_outputs(via_helper.eval(), model, batch)
    assert open_clip.get_tokenizer(f"local-dir:{out}").context_length == cfg["text_cfg"]["context_length"]


def test_preprocess_override_and_replacing_an_export(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    out = tmp_path / "export"
    save_open_clip_dir(model, cfg, out)
    (out / "stale.txt").write_text("from the previous export")
    save_open_clip_dir(model, cfg, out, preprocess_cfg={"mean": [0.5, 0.5, 0.5], "interpolation": "bilinear"})
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5]
    assert config["preprocess_cfg"]["interpolation"] == "bilinear"
    assert not (out / "stale.txt").exists()  # replaced as a whole
    assert _leftovers(tmp_path) == []


def test_refuses_to_overwrite_foreign_paths(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(TinyCLIPError, match="not an open_clip export"):
        save_open_clip_dir(model, cfg, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(TinyCLIPError, match="not a folder"):
        save_open_clip_dir(model, cfg, a_file)
    with pytest.raises(TinyCLIPError, match="model config"):
        save_open_clip_dir(model, {"embed_dim": 64}, tmp_path / "x")
    with pytest.raises(TinyCLIPError, match="JSON"):
        save_open_clip_dir(model, cfg, tmp_path / "x", extra={"bad": object()})
    with torch.device("meta"):
        meta_model = open_clip.CLIP(**cfg)
    with pytest.raises(TinyCLIPError, match="meta"):
        save_open_clip_dir(meta_model, cfg, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_failed_write_leaves_nothing_behind(tmp_path, model_and_cfg, monkeypatch, batch):
    model, cfg = model_and_cfg
    previous = tmp_path / "previous"
    save_open_clip_dir(model, cfg, previous)
    import safetensors.torch

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_open_clip_dir(model, cfg, tmp_path / "new")
    with pytest.raises(OSError, match="disk full"):
        save_open_clip_dir(model, cfg, previous)
    assert not (tmp_path / "new").exists()
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    restored, _ = load_open_clip_dir(previous)  # the earlier export is intact
    _same_outputs(restored.eval(), model, batch)


@pytest.mark.parametrize("damage,match", [
    ("no_folder", "not a folder"),
    ("no_config", "missing"),
    ("bad_json", "unreadable"),
    ("no_model_cfg", "no valid model_cfg"),
    ("no_weights", "missing"),
    ("bad_weights", "cannot load"),
    ("wrong_weights", "cannot load"),
])
def test_load_errors(tmp_path, model_and_cfg, damage, match):
    model, cfg = model_and_cfg
    out = save_open_clip_dir(model, cfg, tmp_path / "export")
    if damage == "no_folder":
        out = tmp_path / "absent"
    elif damage == "no_config":
        (out / CONFIG_NAME).unlink()
    elif damage == "bad_json":
        (out / CONFIG_NAME).write_text("{not json")
    elif damage == "no_model_cfg":
        (out / CONFIG_NAME).write_text(json.dumps({"preprocess_cfg": {}}))
    elif damage == "no_weights":
        (out / WEIGHTS_NAME).unlink()
    elif damage == "bad_weights":
        (out / WEIGHTS_NAME).write_bytes(b"\x00" * 64)
    elif damage == "wrong_weights":  # a valid file for another architecture
        config = json.loads((out / CONFIG_NAME).read_text())
        config["model_cfg"] = open_clip.get_model_config("TinyCLIP-smoke-S75")
        (out / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(TinyCLIPError, match=match) as info:
        load_open_clip_dir(out)
    assert "\n" not in str(info.value)


def test_read_config_accepts_prefix(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    out = save_open_clip_dir(model, cfg, tmp_path / "export")
    assert export.read_open_clip_config(f"local-dir:{out}")["model_cfg"] == cfg
