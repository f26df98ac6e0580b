"""Model zoo: config registration, paper-convention parameter counts and MACs (issue 2 §2)."""
import json
import subprocess
import sys

import open_clip
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tinyclip
from tinyclip import zoo

# docs/sources.md §5 (vision, text without token embedding), in millions; must hold within 0.2 M.
EXPECTED_PARAMS_M = {
    "ViT-B-32": (87.85, 38.13), "ViT-B-16": (86.19, 38.13), "RN50": (38.32, 38.39),
    "TinyCLIP-ViT-8M-16-Text-3M": (8.28, 2.52), "TinyCLIP-ViT-39M-16-Text-19M": (38.59, 19.22),
    "TinyCLIP-ViT-40M-32-Text-19M": (39.69, 19.22), "TinyCLIP-ViT-61M-32-Text-29M": (61.41, 28.67),
    "TinyCLIP-ResNet-19M-Text-19M": (18.60, 19.48), "TinyCLIP-ResNet-30M-Text-29M": (29.58, 28.94),
}
# Official model zoo MACs (G); must hold within 5 %.
PUBLISHED_MACS_G = {
    "TinyCLIP-ViT-61M-32-Text-29M": 5.3, "TinyCLIP-ViT-40M-32-Text-19M": 3.5, "TinyCLIP-ViT-39M-16-Text-19M": 9.5,
    "TinyCLIP-ViT-8M-16-Text-3M": 2.0, "TinyCLIP-ResNet-30M-Text-29M": 6.9, "TinyCLIP-ResNet-19M-Text-19M": 4.4,
}


def test_import_registers_every_project_config():
    registered = set(open_clip.list_models())
    for name in zoo.PAPER_MODELS + zoo.MINI_MODELS + zoo.SMOKE_MODELS:
        assert name in registered
        cfg = open_clip.get_model_config(name)
        assert {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg)
    assert sorted(p.stem for p in tinyclip.CONFIG_DIR.glob("*.json")) == sorted(
        zoo.PAPER_MODELS + zoo.MINI_MODELS + zoo.SMOKE_MODELS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS_M))
def test_paper_convention_params(name):
    counts = zoo.count_params(zoo.build_shape_model(name))
    vision, text = EXPECTED_PARAMS_M[name]
    assert abs(counts["vision"] / 1e6 - vision) < 0.2
    assert abs(counts["text"] / 1e6 - text) < 0.2
    width = open_clip.get_model_config(name)["text_cfg"]["width"]
    assert counts["token_embedding"] == 49408 * width


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS_G))
def test_macs_match_official_zoo(name):
    macs = zoo.count_macs(zoo.build_shape_model(name))["total"] / 1e9
    assert abs(macs - PUBLISHED_MACS_G[name]) / PUBLISHED_MACS_G[name] < 0.05


def test_meta_and_real_models_agree_on_params_and_macs():
    real = open_clip.create_model("TinyCLIP-smoke-teacher")
    shape = zoo.build_shape_model("TinyCLIP-smoke-teacher")
    assert zoo.count_params(real) == zoo.count_params(shape)
    assert zoo.count_macs(real) == pytest.approx(zoo.count_macs(shape), rel=1e-9)


def test_attention_matmuls_are_counted():
    # The trap the counter has on CPU: the fused MHA fast path hides the whole attention block. A naive count
    # must come out lower than ours by at least the attention score/value matmuls: 2 * layers * heads * n^2 * d_head.
    model = open_clip.create_model("TinyCLIP-smoke-teacher").eval()
    image = torch.zeros(1, 3, 32, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as naive:
        model.encode_image(image)
    ours = zoo.count_macs(model)["image"]
    tokens, width, layers = (32 // 8) ** 2 + 1, 64, 4
    attention_matmuls = layers * 2 * tokens * tokens * width
    assert ours - naive.get_total_flops() / 2 >= attention_matmuls


def test_unknown_model_is_a_clear_error():
    with pytest.raises(tinyclip.TinyCLIPError, match="unknown model"):
        zoo.describe("ViT-Nonexistent-1")


def test_models_cli_json():
    out = subprocess.run([sys.executable, "-m", "tinyclip", "models", "--json", "TinyCLIP-ViT-40M-32-Text-19M", "RN50"],
                         capture_output=True, text=True, check=True).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    row = rows["TinyCLIP-ViT-40M-32-Text-19M"]
    for key in ("params_vision_m", "params_text_m", "params_token_embedding_m", "macs_g"):
        assert isinstance(row[key], float)
    assert row["reference"]["macs_g"] == 3.5 and "Cream" in row["reference"]["source"]
    assert rows["RN50"]["reference"] is None and rows["RN50"]["role"] == "teacher"
