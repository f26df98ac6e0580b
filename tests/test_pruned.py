"""tinyclip.pruned: open_clip conversion, parameter counts, save/load, figure data (smoke configs, meta ViT-B/32)."""
import json

import open_clip
import pytest
import torch

import tinyclip  # noqa: F401  (registers the model configs)
from tinyclip.errors import TinyCLIPError
from tinyclip.pruned import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    PrunedCLIP,
    PrunedConfig,
    config_param_counts,
    load_pruned,
    param_counts,
    pruned_architecture,
    to_pruned,
)

SMOKE = "TinyCLIP-smoke-teacher"


def _batch(seed=0, n=3):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=gen)
    tokens = torch.randint(1, 49000, (n, 16), generator=gen)
    tokens[torch.arange(n), torch.tensor([3, 15, 7])[:n]] = 49407  # EOT positions (pooling), one at the end
    return images, tokens


def _meta_open_clip(name):
    with torch.device("meta"):
        return open_clip.CLIP(**open_clip.get_model_config(name))


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_to_pruned_reproduces_open_clip(quick_gelu):
    torch.manual_seed(0)
    reference = open_clip.create_model(SMOKE, force_quick_gelu=quick_gelu).eval()
    converted = to_pruned(reference).eval()
    assert converted.config.vision.act == ("quick_gelu" if quick_gelu else "gelu")
    images, tokens = _batch()
    with torch.no_grad():
        img_a, txt_a, scale_a = reference(images, tokens)
        img_b, txt_b, scale_b = converted(images, tokens)
        raw_a, raw_b = reference.encode_text(tokens), converted.encode_text(tokens)
    torch.testing.assert_close(img_b, img_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(txt_b, txt_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(raw_b, raw_a, atol=1e-5, rtol=1e-5)
    assert scale_b.item() == pytest.approx(scale_a.item())
    # the conversion copies: training the converted model leaves the open_clip model alone
    with torch.no_grad():
        converted.visual.proj.add_(1.0)
    assert not torch.equal(converted.visual.proj, reference.visual.proj)


def test_paper_parameter_convention_on_meta_models():
    # docs/sources.md §5: ViT-B/32 = 87.85 M vision + 38.13 M text without token embedding
    counts = param_counts(to_pruned(_meta_open_clip("ViT-B-32")))
    assert counts["vision"] == 87_849_216 and counts["text"] == 38_131_200
    assert counts["token_embedding"] == 49408 * 512
    # the formula from the config alone agrees with counting tensors, also for the manual students
    for name in ("ViT-B-32", "TinyCLIP-ViT-61M-32-Text-29M", "TinyCLIP-ViT-8M-16-Text-3M"):
        model = _meta_open_clip(name)
        pruned = to_pruned(model)
        expected = {k: v for k, v in param_counts(model).items() if k != "token_embedding"}
        assert config_param_counts(pruned.config) == expected
        assert pruned.config.reference_params == expected["total"]
    assert config_param_counts(to_pruned(_meta_open_clip("TinyCLIP-ViT-61M-32-Text-29M")).config)["vision"] == 61_411_200


def test_to_pruned_rejects_unsupported_models():
    with pytest.raises(TinyCLIPError, match="ModifiedResNet"):
        to_pruned(_meta_open_clip("RN50"))
    with pytest.raises(TinyCLIPError, match="expected an open_clip CLIP"):
        to_pruned(torch.nn.Linear(2, 2))


def _irregular_config() -> PrunedConfig:
    config = to_pruned(_meta_open_clip(SMOKE)).config
    config = PrunedConfig.from_dict(config.to_dict())
    config.vision.width, config.vision.heads, config.vision.mlp = 40, [3, 0, 4, 1], [100, 256, 0, 7]
    config.text.width, config.text.heads, config.text.mlp = 48, [4, 2, 0, 0], [0, 30, 256, 0]
    return config


def test_irregular_model_counts_trains_and_checkpoints():
    torch.manual_seed(0)
    model = PrunedCLIP(_irregular_config())
    assert model.visual.blocks[1].attn is None and model.visual.blocks[2].mlp is None
    assert model.text.blocks[3].attn is None and model.text.blocks[3].mlp is None  # identity layer
    counted = param_counts(model)
    assert config_param_counts(model.config) == {k: counted[k] for k in ("vision", "text", "total")}
    # hand count of vision layer 0: ln_1 2*40, in_proj 41*3*3*16, out_proj (48+1)*40, ln_2, c_fc 41*100, c_proj 101*40
    layer0 = sum(p.numel() for p in model.visual.blocks[0].parameters())
    assert layer0 == 80 + 41 * 144 + 49 * 40 + 80 + 41 * 100 + 101 * 40
    images, tokens = _batch()
    img, txt, scale = model(images, tokens)
    assert img.shape == txt.shape == (3, 64) and torch.allclose(img.norm(dim=-1), torch.ones(3))
    # trainable, and gradient checkpointing gives the same gradients
    loss = (img @ txt.T).sum() * scale
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert "text.blocks.1.mlp.c_fc.weight" in grads and "visual.blocks.3.attn.in_proj.weight" in grads
    model.zero_grad()
    model.set_grad_checkpointing(True)
    img, txt, scale = model(images, tokens)
    ((img @ txt.T).sum() * scale).backward()
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = PrunedCLIP(_irregular_config()).eval()
    model.save(tmp_path / "student")
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = load_pruned(tmp_path / "student").eval()
    assert loaded.config == model.config
    images, tokens = _batch()
    with torch.no_grad():
        for a, b in zip(model(images, tokens), loaded(images, tokens)):
            assert torch.equal(a, b)
    assert all(p.requires_grad for p in loaded.parameters())


def test_load_errors(tmp_path):
    model = PrunedCLIP(_irregular_config())
    folder = model.save(tmp_path / "student")
    with pytest.raises(TinyCLIPError, match="not found"):
        load_pruned(tmp_path / "missing")
    weights = (folder / WEIGHTS_FILE).read_bytes()
    # truncated weights
    (folder / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
    with pytest.raises(TinyCLIPError, match="cannot be read"):
        load_pruned(folder)
    (folder / WEIGHTS_FILE).write_bytes(weights)
    # config that does not match the weights
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["vision"]["mlp"][0] = 99
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(TinyCLIPError, match="does not match"):
        load_pruned(folder)
    # garbled / incomplete / foreign configs
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(TinyCLIPError, match="not valid JSON"):
        load_pruned(folder)
    del config["text"]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(TinyCLIPError, match="missing entry"):
        load_pruned(folder)
    (folder / CONFIG_FILE).write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(TinyCLIPError, match="format"):
        load_pruned(folder)
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(TinyCLIPError, match="not found"):
        load_pruned(folder)


def test_pruned_architecture_figure_data(tmp_path):
    model = PrunedCLIP(_irregular_config())
    arch = pruned_architecture(model.save(tmp_path / "s"))
    assert arch == pruned_architecture(model) == pruned_architecture(model.config)
    vision = arch["vision"]
    assert (vision["hidden"], vision["hidden_original"], vision["head_dim"]) == (40, 64, 16)
    assert [layer["heads"] for layer in vision["layers"]] == [3, 0, 4, 1]
    assert [layer["heads_original"] for layer in vision["layers"]] == [4, 4, 4, 4]
    assert [layer["mlp_dropped"] for layer in arch["text"]["layers"]] == [True, False, False, True]
    assert [layer["attn_dropped"] for layer in arch["text"]["layers"]] == [False, False, True, True]
    assert arch["params"] == vision["params"] + arch["text"]["params"] == param_counts(model)["total"]
    assert arch["sparsity"] == pytest.approx(1 - arch["params"] / model.config.reference_params)
    json.dumps(arch)  # plain data
