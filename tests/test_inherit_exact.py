"""The profile chains inherit exactly: every student tensor is its source's tensor (the mapped layer, the
leading slice), blocks kept at full width compute what their source blocks compute, and a student of its source's
own shape reproduces the source's outputs bit for bit. (A broken slice, layer map or copy fails here even when
every shape is right.)"""
from __future__ import annotations

import open_clip
import pytest
import torch

import tinyclip  # noqa: F401  (registers the model configs)
from tinyclip.inherit.manual import inherit_manual

BLOCKS = {"visual": "visual.transformer.resblocks.", "text": "transformer.resblocks."}


def _randomised(name: str, seed: int = 0) -> open_clip.CLIP:
    """A model whose every tensor is distinctive (LayerNorm ones and zeros would hide a wrong slice)."""
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _source_key(key: str, layer_map: dict[str, list[int]]) -> str:
    for tower, prefix in BLOCKS.items():
        if key.startswith(prefix) and not (tower == "text" and key.startswith("visual.")):
            index, _, rest = key[len(prefix):].partition(".")
            return f"{prefix}{layer_map[tower][int(index)]}.{rest}"
    return key


def _leading(source: torch.Tensor, shape: torch.Size, key: str) -> torch.Tensor:
    """The leading slice of ``source`` with ``shape``; q, k and v of a fused projection are sliced each."""
    if "in_proj_" in key:
        thirds = source.reshape(3, source.shape[0] // 3, *source.shape[1:])
        part = thirds[(slice(None),) + tuple(slice(0, n) for n in (shape[0] // 3, *shape[1:]))]
        return part.reshape(shape)
    return source[tuple(slice(0, n) for n in shape)]


def _check_slices(source: torch.nn.Module, student: torch.nn.Module, layer_map: dict[str, list[int]]) -> int:
    src = source.state_dict()
    checked = 0
    for key, tensor in student.state_dict().items():
        expected = _leading(src[_source_key(key, layer_map)], tensor.shape, key)
        assert torch.equal(tensor, expected), key
        checked += 1
    return checked


def _check_full_width_blocks(source: open_clip.CLIP, student: open_clip.CLIP, layer_map: dict[str, list[int]]):
    """Each student block whose width equals its source's computes exactly what the mapped source block does."""
    towers = {"visual": (source.visual.transformer, student.visual.transformer),
              "text": (source.transformer, student.transformer)}
    compared = 0
    for tower, (src_tf, dst_tf) in towers.items():
        if src_tf.width != dst_tf.width:
            continue
        x = torch.randn(3, 5, dst_tf.width, generator=torch.Generator().manual_seed(1))
        for i, block in enumerate(dst_tf.resblocks):
            with torch.no_grad():
                assert torch.equal(block(x), src_tf.resblocks[layer_map[tower][i]](x)), (tower, i)
            compared += 1
    return compared


@pytest.mark.parametrize("profile", ["smoke", "mini"])
def test_profile_chain_students_are_exact_copies_and_slices(profile):
    source = _randomised(f"TinyCLIP-{profile}-teacher")
    size = source.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    texts = open_clip.get_tokenizer(f"TinyCLIP-{profile}-teacher")(["a red circle", "two blue squares"])
    full_width_blocks = 0
    for stage in ("S75", "S50"):
        student, report = inherit_manual(source, f"TinyCLIP-{profile}-{stage}")
        assert _check_slices(source, student, report["layer_map"]) == len(student.state_dict())
        full_width_blocks += _check_full_width_blocks(source, student, report["layer_map"])
        # inheriting a model's own shape keeps everything: the outputs are the source's, bit for bit
        copy, copy_report = inherit_manual(student, f"TinyCLIP-{profile}-{stage}")
        assert copy_report["inherited_fraction"] == 1.0
        with torch.no_grad():
            assert torch.equal(copy.encode_image(images), student.encode_image(images))
            assert torch.equal(copy.encode_text(texts), student.encode_text(texts))
        source = student
    assert full_width_blocks > 0   # the text towers keep their width in both profiles' chains
