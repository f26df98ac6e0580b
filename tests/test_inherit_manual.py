"""Manual weight inheritance (paper §3.2): slices, layer maps, chains, refusals, the `tinyclip inherit` CLI."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from tinyclip import zoo
from tinyclip.cli import main as cli_main
from tinyclip.errors import TinyCLIPError
from tinyclip.inherit import manual
from tinyclip.inherit.manual import ManualInheritSpec, check_inheritable, inherit_manual, select_layers

REPO = Path(__file__).resolve().parents[1]
SMOKE = "TinyCLIP-smoke-teacher"  # vision 64 wide (4 heads of 16), 4 layers; text 64 wide, 4 heads, 4 layers


def _cfg(name: str) -> dict:
    return open_clip.get_model_config(name)


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Make every tensor distinctive (LayerNorm/BN init is all ones/zeros, which would hide slicing bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
        model.logit_scale.fill_(math.log(42.0))
    return model.eval()


def _build(cfg: dict | str, seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    cfg = _cfg(cfg) if isinstance(cfg, str) else cfg
    return _randomise(open_clip.CLIP(**cfg), seed)


@pytest.fixture(scope="module")
def smoke_teacher() -> open_clip.CLIP:
    return _build(SMOKE)


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=gen)
    texts = open_clip.get_tokenizer(SMOKE)(["a photo of a cat", "two dogs", "a red car on a street"])
    return images, texts


def _outputs(model, images, texts):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(texts)


def _narrow_smoke() -> dict:
    """Smoke teacher at half width in both towers, half depth, embed 48, context 8."""
    cfg = copy.deepcopy(_cfg(SMOKE))
    cfg["embed_dim"] = 48
    cfg["vision_cfg"].update(width=32, layers=2)          # 2 heads of 16
    cfg["text_cfg"].update(width=32, heads=2, layers=2, context_length=8)
    return cfg


# ----------------------------------------------------------------------------------------------------------- depth

@pytest.mark.parametrize("teacher,student,rule,expected", [
    (12, 6, "interval_front", [0, 2, 4, 6, 8, 10]),      # official table, docs/official_code.md §2.2
    (12, 9, "interval_front", list(range(9))),
    (9, 6, "interval_front", list(range(6))),
    (12, 3, "interval_front", [0, 4, 8]),
    (12, 10, "interval_front", list(range(10))),
    (12, 6, "even", [0, 2, 4, 7, 9, 11]),                 # round(i * 11/5)
    (12, 9, "even", [0, 1, 3, 4, 6, 7, 8, 10, 11]),       # round(i * 11/8)
    (9, 6, "even", [0, 2, 3, 5, 6, 8]),                   # round(i * 8/5)
    (8, 4, "even", [0, 2, 5, 7]),                         # round(i * 7/3)
    (12, 12, "even", list(range(12))),
    (12, 12, "interval_front", list(range(12))),
    (4, 1, "even", [0]),
    (4, 1, "interval_front", [0]),
])
def test_select_layers(teacher, student, rule, expected):
    assert select_layers(teacher, student, rule) == expected


@pytest.mark.parametrize("args", [(4, 5, "even"), (4, 0, "even"), (4, 2, "evenly")])
def test_select_layers_rejects(args):
    with pytest.raises(TinyCLIPError):
        select_layers(*args)


def test_spec_validates_rules():
    assert ManualInheritSpec() == ManualInheritSpec(depth_rule="even", width_rule="leading")
    with pytest.raises(TinyCLIPError, match="depth_rule"):
        ManualInheritSpec(depth_rule="front")
    with pytest.raises(TinyCLIPError, match="width_rule"):
        ManualInheritSpec(width_rule="random")


# ------------------------------------------------------------------------------------------------- exact copies

@pytest.mark.parametrize("spec", [ManualInheritSpec(), ManualInheritSpec("interval_front", "l2norm")])
def test_same_config_is_an_exact_copy(smoke_teacher, inputs, spec):
    student, report = inherit_manual(smoke_teacher, SMOKE, spec)
    assert report["inherited_fraction"] == 1.0
    assert report["layer_map"] == {"visual": [0, 1, 2, 3], "text": [0, 1, 2, 3]}
    t_state, s_state = smoke_teacher.state_dict(), student.state_dict()
    assert t_state.keys() == s_state.keys()
    assert all(torch.equal(t_state[k], s_state[k]) for k in t_state)
    assert torch.equal(student.attn_mask, smoke_teacher.attn_mask)
    for got, want in zip(_outputs(student, *inputs), _outputs(smoke_teacher, *inputs)):
        assert torch.equal(got, want)
    assert isinstance(student, open_clip.CLIP) and student is not smoke_teacher
    assert student.visual.preprocess_cfg["size"] == (32, 32)


# ------------------------------------------------------------------------------------------------------ ViT slices

def _qkv_rows(w: torch.Tensor, width: int, heads: list[int], hd: int) -> torch.Tensor:
    """Rows of a [3*width, ...] in_proj tensor for the given heads, in q, k, v order (hand-written, no view)."""
    return torch.cat([w[part * width + h * hd: part * width + (h + 1) * hd] for part in range(3) for h in heads])


def test_vit_and_text_slices(smoke_teacher):
    student, report = inherit_manual(smoke_teacher, _narrow_smoke())
    T, S = smoke_teacher, student
    assert report["layer_map"] == {"visual": [0, 3], "text": [0, 3]}  # even, 4 -> 2 keeps first and last
    n_elements = sum(p.numel() for p in S.parameters()) + sum(b.numel() for b in S.buffers())
    assert report["inherited_elements"] == report["student_elements"] == n_elements
    assert report["inherited_fraction"] == 1.0

    tv, sv = T.visual, S.visual
    assert torch.equal(sv.conv1.weight, tv.conv1.weight[:32])
    assert torch.equal(sv.class_embedding, tv.class_embedding[:32])
    assert torch.equal(sv.positional_embedding, tv.positional_embedding[:, :32])
    assert torch.equal(sv.ln_pre.weight, tv.ln_pre.weight[:32])
    assert torch.equal(sv.ln_post.bias, tv.ln_post.bias[:32])
    assert torch.equal(sv.proj, tv.proj[:32, :48])
    for s_block, t_block, width, hd in [
        (sv.transformer.resblocks[1], tv.transformer.resblocks[3], 64, 16),  # vision block 1 <- teacher block 3
        (S.transformer.resblocks[1], T.transformer.resblocks[3], 64, 16),    # text block 1 <- teacher block 3
    ]:
        want_qkv = _qkv_rows(t_block.attn.in_proj_weight, width, [0, 1], hd)[:, :32]
        assert torch.equal(s_block.attn.in_proj_weight, want_qkv)
        assert torch.equal(s_block.attn.in_proj_bias, _qkv_rows(t_block.attn.in_proj_bias, width, [0, 1], hd))
        assert torch.equal(s_block.attn.out_proj.weight, t_block.attn.out_proj.weight[:32, :32])
        assert torch.equal(s_block.attn.out_proj.bias, t_block.attn.out_proj.bias[:32])
        assert torch.equal(s_block.mlp.c_fc.weight, t_block.mlp.c_fc.weight[:128, :32])
        assert torch.equal(s_block.mlp.c_fc.bias, t_block.mlp.c_fc.bias[:128])
        assert torch.equal(s_block.mlp.c_proj.weight, t_block.mlp.c_proj.weight[:32, :128])
        assert torch.equal(s_block.ln_1.weight, t_block.ln_1.weight[:32])
        assert torch.equal(s_block.ln_2.bias, t_block.ln_2.bias[:32])
        assert s_block.attn.num_heads == 2
    assert torch.equal(S.token_embedding.weight, T.token_embedding.weight[:, :32])
    assert torch.equal(S.positional_embedding, T.positional_embedding[:8, :32])
    assert torch.equal(S.attn_mask, T.attn_mask[:8, :8])
    assert torch.equal(S.ln_final.weight, T.ln_final.weight[:32])
    assert torch.equal(S.text_projection, T.text_projection[:32, :48])
    assert torch.equal(S.logit_scale, T.logit_scale)  # inherited (official code does not: a deviation)

    images, texts = torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 8))
    image_features, text_features = _outputs(S, images, texts)
    assert image_features.shape == text_features.shape == (2, 48)


def test_interval_front_layer_map(smoke_teacher):
    student, report = inherit_manual(smoke_teacher, _narrow_smoke(), ManualInheritSpec(depth_rule="interval_front"))
    assert report["layer_map"] == {"visual": [0, 2], "text": [0, 2]}
    assert torch.equal(student.transformer.resblocks[1].mlp.c_proj.bias,
                       smoke_teacher.transformer.resblocks[2].mlp.c_proj.bias[:32])


def test_shorter_context_encodes_like_the_teacher(smoke_teacher):
    cfg = copy.deepcopy(_cfg(SMOKE))
    cfg["text_cfg"]["context_length"] = 8
    student, _ = inherit_manual(smoke_teacher, cfg)
    tokens = open_clip.get_tokenizer(SMOKE)(["a cat", "two small dogs"])  # EOT within the first 8 tokens
    with torch.no_grad():
        want = smoke_teacher.encode_text(tokens)
        got = student.encode_text(tokens[:, :8])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_quick_gelu_mismatch_is_reported(smoke_teacher):
    cfg = copy.deepcopy(_cfg(SMOKE))
    cfg["quick_gelu"] = True
    with pytest.warns(UserWarning, match="activation mismatch"):
        _, report = inherit_manual(smoke_teacher, cfg)
    assert len(report["warnings"]) == 1


# ------------------------------------------------------------------------------------------------------ l2norm

def test_l2norm_keeps_live_mlp_neurons(smoke_teacher, inputs):
    """Zero half of every MLP's neurons: the l2norm student (half MLP width) computes the teacher's function."""
    teacher = copy.deepcopy(smoke_teacher)
    gen = torch.Generator().manual_seed(3)
    alive = {}
    with torch.no_grad():
        for name, block in [*[(f"v{i}", b) for i, b in enumerate(teacher.visual.transformer.resblocks)],
                            *[(f"t{i}", b) for i, b in enumerate(teacher.transformer.resblocks)]]:
            dead = torch.randperm(256, generator=gen)[:128]
            block.mlp.c_fc.weight[dead] = 0
            block.mlp.c_fc.bias[dead] = 0
            block.mlp.c_proj.weight[:, dead] = 0
            keep = torch.ones(256, dtype=torch.bool)
            keep[dead] = False
            alive[name] = keep.nonzero().squeeze(1)
    cfg = copy.deepcopy(_cfg(SMOKE))
    cfg["vision_cfg"]["mlp_ratio"] = 2.0
    cfg["text_cfg"]["mlp_ratio"] = 2.0
    student, _ = inherit_manual(teacher, cfg, ManualInheritSpec(width_rule="l2norm"))
    assert torch.equal(student.visual.transformer.resblocks[2].mlp.c_fc.weight,
                       teacher.visual.transformer.resblocks[2].mlp.c_fc.weight[alive["v2"]])
    assert torch.equal(student.transformer.resblocks[1].mlp.c_proj.weight,
                       teacher.transformer.resblocks[1].mlp.c_proj.weight[:, alive["t1"]])
    want = _outputs(teacher, *inputs)
    for got, ref in zip(_outputs(student, *inputs), want):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    leading, _ = inherit_manual(teacher, cfg)  # the same cut by leading neurons loses live ones
    assert not torch.allclose(_outputs(leading, *inputs)[1], want[1], atol=1e-3)


def test_l2norm_keeps_strong_heads_and_joint_embed_dims(smoke_teacher):
    teacher = copy.deepcopy(smoke_teacher)
    with torch.no_grad():
        attn = teacher.visual.transformer.resblocks[0].attn
        for part in range(3):  # head 3 of vision block 0: q, k, v rows and out_proj columns x10
            attn.in_proj_weight[part * 64 + 48: part * 64 + 64] *= 10
        attn.out_proj.weight[:, 48:64] *= 10
        teacher.visual.proj[:, 40:] *= 10
        teacher.text_projection[:, 40:] *= 10
    cfg = copy.deepcopy(_cfg(SMOKE))
    cfg["vision_cfg"]["width"] = 32  # 2 of 4 heads
    cfg["embed_dim"] = 32
    spec = ManualInheritSpec(width_rule="l2norm")
    student, _ = inherit_manual(teacher, cfg, spec)

    def head_norms(model):
        w = model.visual.transformer.resblocks[0].attn.in_proj_weight
        return w.reshape(3, -1, 16, w.shape[1]).pow(2).sum((0, 2, 3)).sqrt()

    assert head_norms(student).max() > 5 * head_norms(student).min()  # the boosted head survived
    leading, _ = inherit_manual(teacher, cfg)
    assert head_norms(leading).max() < 2 * head_norms(leading).min()  # leading keeps heads 0, 1
    # the same embed columns in both towers (text width is unchanged, so the rows are the teacher's)
    cols = [next(j for j in range(64) if torch.equal(student.text_projection[:, i], teacher.text_projection[:, j]))
            for i in range(32)]
    assert set(range(40, 64)) <= set(cols) and cols == sorted(cols)
    v_cols = teacher.visual.proj[:, cols]
    assert torch.equal(student.visual.proj, v_cols[[int(i) for i in _kept_rows(student.visual.proj, v_cols)]])


def _kept_rows(student_proj: torch.Tensor, teacher_proj: torch.Tensor) -> list[int]:
    return [next(j for j in range(teacher_proj.shape[0]) if torch.equal(row, teacher_proj[j])) for row in student_proj]


def test_l2norm_needs_real_weights():
    teacher = zoo.build_shape_model(SMOKE)
    with pytest.raises(TinyCLIPError, match="meta"):
        inherit_manual(teacher, "TinyCLIP-smoke-S50", ManualInheritSpec(width_rule="l2norm"))


# ---------------------------------------------------------------------------------------------------- ResNet

def _resnet_cfg(width: int, layers: list[int], embed: int) -> dict:
    return {"embed_dim": embed,
            "vision_cfg": {"image_size": 64, "layers": layers, "width": width, "head_width": 16},
            "text_cfg": copy.deepcopy(_cfg(SMOKE)["text_cfg"])}


def test_resnet_slices():
    teacher = _build(_resnet_cfg(16, [1, 3, 1, 1], 64))
    student, report = inherit_manual(teacher, _resnet_cfg(8, [1, 2, 1, 1], 32))
    assert report["layer_map"]["visual"] == [[0], [0, 2], [0], [0]]
    assert report["inherited_fraction"] == 1.0
    tv, sv = teacher.visual, student.visual
    assert torch.equal(sv.conv1.weight, tv.conv1.weight[:4])          # stem: width // 2 channels
    assert torch.equal(sv.bn1.running_mean, tv.bn1.running_mean[:4])
    assert torch.equal(sv.bn3.running_var, tv.bn3.running_var[:8])
    assert torch.equal(sv.conv3.weight, tv.conv3.weight[:8, :4])
    down_s, down_t = getattr(sv.layer1[0].downsample, "0"), getattr(tv.layer1[0].downsample, "0")  # "-1" is a pool
    assert torch.equal(down_s.weight, down_t.weight[:32, :8])
    assert torch.equal(sv.layer2[1].conv2.weight, tv.layer2[2].conv2.weight[:16, :16])  # block 1 <- block 2
    assert torch.equal(sv.layer2[1].bn1.weight, tv.layer2[2].bn1.weight[:16])
    assert torch.equal(sv.layer2[1].bn1.num_batches_tracked, tv.layer2[2].bn1.num_batches_tracked)
    pool_t, pool_s = tv.attnpool, sv.attnpool                          # 256 of 512 channels, 16 of 32 heads
    assert pool_s.num_heads == 16
    assert torch.equal(pool_s.positional_embedding, pool_t.positional_embedding[:, :256])
    assert torch.equal(pool_s.q_proj.weight, pool_t.q_proj.weight[:256, :256])
    assert torch.equal(pool_s.v_proj.bias, pool_t.v_proj.bias[:256])
    assert torch.equal(pool_s.c_proj.weight, pool_t.c_proj.weight[:32, :256])
    assert torch.equal(pool_s.c_proj.bias, pool_t.c_proj.bias[:32])
    assert torch.equal(student.text_projection, teacher.text_projection[:, :32])
    with torch.no_grad():
        assert student.encode_image(torch.randn(2, 3, 64, 64)).shape == (2, 32)

    front, report = inherit_manual(teacher, _resnet_cfg(8, [1, 2, 1, 1], 32), ManualInheritSpec("interval_front"))
    assert report["layer_map"]["visual"] == [[0], [0, 1], [0], [0]]
    same, _ = inherit_manual(teacher, _resnet_cfg(16, [1, 3, 1, 1], 64))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(same.encode_image(images), teacher.encode_image(images))


# ------------------------------------------------------------------------------------------------------ chains

def _paper_counts(model) -> tuple[float, float]:
    """(vision, text without token embedding) in millions, the paper's convention (docs/sources.md §5)."""
    counts = zoo.count_params(model)
    return round(counts["vision"] / 1e6, 2), round(counts["text"] / 1e6, 2)


@pytest.mark.parametrize("teacher_name,chain", [
    ("ViT-B-32", [("TinyCLIP-ViT-61M-32-Text-29M", (61.41, 28.67)), ("TinyCLIP-ViT-40M-32-Text-19M", (39.69, 19.22))]),
    ("ViT-B-16", [("TinyCLIP-ViT-39M-16-Text-19M", (38.59, 19.22))]),
    ("ViT-B-16", [("TinyCLIP-ViT-8M-16-Text-3M", (8.28, 2.52))]),
    ("RN50", [("TinyCLIP-ResNet-30M-Text-29M", (29.58, 28.94)), ("TinyCLIP-ResNet-19M-Text-19M", (18.60, 19.48))]),
])
def test_paper_chains_on_meta(teacher_name, chain):
    """Shapes only, on the meta device: the paper's chains give exactly the configs' shapes and published sizes."""
    model = zoo.build_shape_model(teacher_name)
    for student_name, counts in chain:
        model, report = inherit_manual(model, student_name)
        reference = zoo.build_shape_model(student_name)
        assert {k: v.shape for k, v in model.state_dict().items()} == \
            {k: v.shape for k, v in reference.state_dict().items()}
        assert report["inherited_fraction"] == 1.0
        assert _paper_counts(model) == counts


def test_official_manual_chain_layer_maps():
    b32 = zoo.build_shape_model("ViT-B-32")
    spec = ManualInheritSpec(depth_rule="interval_front")
    s61, r61 = inherit_manual(b32, "TinyCLIP-ViT-61M-32-Text-29M", spec)
    _, r40 = inherit_manual(s61, "TinyCLIP-ViT-40M-32-Text-19M", spec)
    assert r61["layer_map"] == {"visual": list(range(12)), "text": list(range(9))}
    assert r40["layer_map"] == {"visual": list(range(12)), "text": list(range(6))}  # official: the first six
    _, r61_even = inherit_manual(b32, "TinyCLIP-ViT-61M-32-Text-29M")
    assert r61_even["layer_map"]["text"] == [0, 1, 3, 4, 6, 7, 8, 10, 11]


@pytest.mark.parametrize("profile", ["mini", "smoke"])
def test_profile_chains(profile):
    teacher = _build(f"TinyCLIP-{profile}-teacher")
    s75, _ = inherit_manual(teacher, f"TinyCLIP-{profile}-S75")
    s50, report = inherit_manual(s75, f"TinyCLIP-{profile}-S50")
    assert report["inherited_fraction"] == 1.0
    ref = open_clip.CLIP(**_cfg(f"TinyCLIP-{profile}-S50"))
    assert {k: v.shape for k, v in s50.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    size = _cfg(f"TinyCLIP-{profile}-S50")["vision_cfg"]["image_size"]
    images, texts = torch.randn(2, 3, size, size), open_clip.get_tokenizer(f"TinyCLIP-{profile}-S50")(["a", "b"])
    image_features, text_features = _outputs(s50, images, texts)
    assert image_features.shape == text_features.shape and torch.isfinite(image_features).all()


# ---------------------------------------------------------------------------------------------------- refusals

def _smoke_with(**changes) -> dict:
    cfg = copy.deepcopy(_cfg(SMOKE))
    for key, value in changes.items():
        tower, _, field = key.partition("__")
        if field:
            cfg[f"{tower}_cfg"][field] = value
        else:
            cfg[tower] = value
    return cfg


@pytest.mark.parametrize("student,match", [
    (_smoke_with(vision__width=80), "vision width"),
    (_smoke_with(vision__layers=5), "vision layers"),
    (_smoke_with(vision__mlp_ratio=5.0), "vision MLP width"),
    (_smoke_with(text__width=80, text__heads=5), "text width"),
    (_smoke_with(text__layers=5), "text layers"),
    (_smoke_with(text__mlp_ratio=6.0), "text MLP width"),
    (_smoke_with(embed_dim=96), "embed dim"),
    (_smoke_with(vision__patch_size=16), "patch size"),
    (_smoke_with(vision__image_size=64), "image size"),
    (_smoke_with(text__context_length=32), "context length"),
    (_smoke_with(text__vocab_size=1000), "vocabulary"),
    (_smoke_with(vision__head_width=32), "vision head width"),
    (_smoke_with(text__heads=2), "text head width"),
    (_resnet_cfg(16, [1, 1, 1, 1], 64), "resnet"),
    (_smoke_with(vision__ls_init_value=1e-5), "layer scale"),
    (_smoke_with(vision__qk_norm=True), "custom vision attention"),
    (_smoke_with(text__hf_model_name="bert-base-uncased"), "Hugging Face"),
    (_smoke_with(custom_text=True), "custom_text"),
    (_smoke_with(vision__width=60), "multiple of head_width"),
    ({"vision_cfg": {}}, "not an open_clip model config"),
])
def test_refusals(student, match):
    with pytest.raises(TinyCLIPError, match=match):
        check_inheritable(_cfg(SMOKE), student)


def test_refusals_happen_before_any_model_is_built(smoke_teacher, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(manual, "_build_empty", no_build)
    with pytest.raises(TinyCLIPError, match="exceeds"):
        inherit_manual(smoke_teacher, _smoke_with(text__layers=6))
    with pytest.raises(TinyCLIPError, match="l2norm"):
        check_inheritable(_resnet_cfg(16, [1, 1, 1, 1], 64), _resnet_cfg(8, [1, 1, 1, 1], 64),
                          ManualInheritSpec(width_rule="l2norm"))
    check_inheritable(_cfg(SMOKE), _smoke_with(text__context_length=8))  # shorter context: allowed
    check_inheritable(_cfg("RN50"), _cfg("TinyCLIP-ResNet-30M-Text-29M"))


def test_teacher_must_be_plain_clip():
    with pytest.raises(TinyCLIPError, match="not an open_clip CLIP"):
        inherit_manual(torch.nn.Linear(2, 2), SMOKE)


# ------------------------------------------------------------------------------------------------------ CLI

@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory, smoke_teacher) -> dict[str, Path]:
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("teacher")
    state = {k: v.contiguous() for k, v in smoke_teacher.state_dict().items()}
    torch.save(state, folder / "teacher.pt")
    save_file(state, str(folder / "teacher.safetensors"))
    return {"pt": folder / "teacher.pt", "safetensors": folder / "teacher.safetensors"}


def test_cli_end_to_end(tmp_path, teacher_files, smoke_teacher, inputs):
    out = tmp_path / "student"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "tinyclip", "inherit", "--teacher", SMOKE, "--teacher-weights",
         str(teacher_files["pt"]), "--student", "TinyCLIP-smoke-S50", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["teacher"] == SMOKE and summary["student"] == "TinyCLIP-smoke-S50"
    assert summary["inherited_fraction"] == 1.0 and Path(summary["out"]) == out
    assert summary["layer_map"] == {"visual": [0, 1, 2, 3], "text": [0, 3]}

    exported = open_clip.create_model(f"local-dir:{out}").eval()
    in_memory, _ = inherit_manual(smoke_teacher, "TinyCLIP-smoke-S50")
    for got, want in zip(_outputs(exported, *inputs), _outputs(in_memory, *inputs)):
        assert torch.equal(got, want)


def test_cli_chain_from_local_dir(tmp_path, teacher_files, capsys):
    s75, s50 = tmp_path / "s75", tmp_path / "s50"
    assert cli_main(["inherit", "--teacher", SMOKE, "--teacher-weights", str(teacher_files["safetensors"]),
                     "--student", "TinyCLIP-smoke-S75", "--out", str(s75)]) == 0
    assert cli_main(["inherit", "--teacher", f"local-dir:{s75}", "--student", "TinyCLIP-smoke-S50",
                     "--out", str(s50), "--depth-rule", "interval_front"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["layer_map"]["text"] == [0, 1] and summary["depth_rule"] == "interval_front"
    config = json.loads((s50 / "open_clip_config.json").read_text())
    assert config["model_cfg"] == _cfg("TinyCLIP-smoke-S50")
    assert config["tinyclip"]["inherit"]["teacher"] == f"local-dir:{s75}"


@pytest.mark.parametrize("case", ["wider", "unknown", "missing", "corrupt", "mismatched", "dir_and_weights"])
def test_cli_errors(case, tmp_path, teacher_files, capsys, monkeypatch):
    out = tmp_path / "out"
    teacher, student, weights = SMOKE, "TinyCLIP-smoke-S50", str(teacher_files["pt"])
    if case == "wider":
        teacher, student = "TinyCLIP-smoke-S50", SMOKE
    elif case == "unknown":
        student = "TinyCLIP-no-such-model"
    elif case == "missing":
        weights = str(tmp_path / "absent.pt")
    elif case == "corrupt":
        (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
        weights = str(tmp_path / "bad.safetensors")
    elif case == "mismatched":
        teacher = "TinyCLIP-smoke-S75"  # the smoke teacher's weights do not fit it
    elif case == "dir_and_weights":
        teacher = f"local-dir:{tmp_path}"
        (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": _cfg(SMOKE)}))
    if case in ("wider", "unknown", "missing", "dir_and_weights"):  # refused from configs/paths alone
        def no_model(*args, **kwargs):
            raise AssertionError("a model was built")
        monkeypatch.setattr(open_clip.CLIP, "__init__", no_model)
    code = cli_main(["inherit", "--teacher", teacher, "--teacher-weights", weights, "--student", student,
                     "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
