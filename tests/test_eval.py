"""Evaluation path (tinyclip.eval) on the smoke data: known-answer models through clip-benchmark.

An oracle that reads the smoke world's attributes from the pixels and from the caption, and embeds both
as the same one-hot/indicator code, must score exactly 1.0 on every set; random models must score near
chance. Both go through the real path: wds shards -> clip-benchmark -> metrics.
"""
from __future__ import annotations

import itertools
import json
import shutil
import zlib

import open_clip
import pytest
import torch

import tinyclip  # noqa: F401  (registers the model configs)
from tinyclip.cli import main as cli_main
from tinyclip.data import build
from tinyclip.data.smoke import COLOURS, POSITIONS, SHAPES, SIZES
from tinyclip.errors import TinyCLIPError
from tinyclip.eval import eval_transform, evaluate_model, retrieval_mean_recall

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
IMAGE_SIZE = 32
CONCEPTS = list(itertools.product(SIZES, COLOURS, SHAPES, POSITIONS))   # 2 x 8 x 3 x 3 = 144 codes
PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255


class _Hues:
    def __init__(self, angles: torch.Tensor):
        self.angles = angles

    def mean_angle(self) -> torch.Tensor:
        return torch.atan2(self.angles.sin().mean(), self.angles.cos().mean())


def _hue(rgb: torch.Tensor) -> _Hues:
    """Hue angles (radians) of colours [3, n] in [0, 1] (the HSV hexcone formula)."""
    r, g, b = rgb
    return _Hues(torch.atan2(3 ** 0.5 * (g - b), 2 * r - g - b))


def _hue_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b + torch.pi).remainder(2 * torch.pi).sub(torch.pi).abs()


PALETTE_HUES = _hue(PALETTE.T).angles


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return build("smoke", out=tmp_path_factory.mktemp("data") / "smoke")


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("TinyCLIP-smoke-teacher")


class Oracle(torch.nn.Module):
    """Knows the smoke world: reads (size, colour, shape, position) from pixels and words from tokens."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def read_image(self, x: torch.Tensor) -> tuple[str, str, str, str]:
        p = x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)   # back to [0, 1]
        hi, lo = p.max(dim=0).values, p.min(dim=0).values
        saturated = (hi - lo) > 0.3                            # the fill (not white, black outline or grey edges)
        colour_idx = int(_hue_distance(_hue(p[:, saturated]).mean_angle(), PALETTE_HUES).argmin())
        c = PALETTE[colour_idx].view(3, 1, 1)
        coverage = ((1 - p) * (1 - c)).sum(0) / ((1 - c) ** 2).sum()   # projection on the white->colour line
        mask = coverage > 0.5                                  # half-covered pixels: unbiased area (outline > 1)
        ys, xs = mask.nonzero(as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        w, h = x1 - x0 + 1, y1 - y0 + 1
        box = mask[y0:y1 + 1, x0:x1 + 1].float()
        k = max(1, round(0.2 * min(w, h)))
        corners = (box[:k, :k].mean() + box[:k, -k:].mean() + box[-k:, :k].mean() + box[-k:, -k:].mean()) / 4
        band = max(1, h // 4)
        top_over_bottom = box[:band].sum(1).mean() / box[-band:].sum(1).mean()   # a triangle is narrow on top
        shape = "square" if corners > 0.6 else "triangle" if top_over_bottom < 0.44 else "circle"
        side = x.shape[-1]
        size = "big" if max(w, h) / side > 0.45 else "small"
        centre = (x0 + x1 + 1) / 2 / side
        position = "left" if centre < 0.4 else "right" if centre > 0.6 else "middle"
        return size, list(COLOURS)[colour_idx], shape, position

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(images), len(CONCEPTS))
        for i, x in enumerate(images):
            out[i, CONCEPTS.index(self.read_image(x))] = 1.0
        return out

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(tokens), len(CONCEPTS))
        for i, t in enumerate(tokens):
            words = set(self.tokenizer.decode(t.tolist()).replace(".", " ").split())
            allowed = [[v for v in values if v in words] or list(values)
                       for values in (SIZES, COLOURS, SHAPES, POSITIONS)]
            for concept in itertools.product(*allowed):
                out[i, CONCEPTS.index(concept)] = 1.0
        return out


class RandomEmbedder(torch.nn.Module):
    """Embeds every image and text to an independent random direction (seeded by its content)."""

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.randn(64, generator=torch.Generator().manual_seed(zlib.crc32(v.numpy().tobytes())))
                            for v in x])

    def encode_image(self, images):
        return self._embed(images)

    def encode_text(self, tokens):
        return self._embed(tokens)


def test_oracle_scores_one_on_every_set(smoke, tokenizer):
    res = evaluate_model(Oracle(tokenizer), eval_transform(IMAGE_SIZE, MEAN, STD), tokenizer, smoke / "eval",
                         batch_size=64)
    assert res["fmnist"]["acc1"] == 1.0 and res["fmnist"]["mean_per_class_recall"] == 1.0
    assert res["fmnist"]["n"] == 160
    for name, n in (("tux", 43), ("openmoji", 48)):
        assert res[name]["n"] == n
        for k in (1, 5, 10):
            assert res[name][f"image_retrieval_recall@{k}"] == 1.0
            assert res[name][f"text_retrieval_recall@{k}"] == 1.0


def test_random_models_score_near_chance(smoke, tokenizer):
    tf = eval_transform(IMAGE_SIZE, MEAN, STD)
    res = evaluate_model(RandomEmbedder(), tf, tokenizer, smoke / "eval", batch_size=64)
    # 8 balanced classes: chance 0.125; retrieval over 43 / 48 items: chance R@1 ~ 0.02, R@10 ~ 0.2-0.23.
    assert res["fmnist"]["acc1"] < 0.3
    for name in ("tux", "openmoji"):
        assert res[name]["image_retrieval_recall@1"] < 0.15 and res[name]["text_retrieval_recall@1"] < 0.15
        assert 0.05 < res[name]["image_retrieval_recall@10"] < 0.45
    torch.manual_seed(0)
    model = open_clip.create_model("TinyCLIP-smoke-teacher")   # random init: the open_clip model path
    res = evaluate_model(model, tf, tokenizer, smoke / "eval", tasks=("fmnist", "tux"), batch_size=64)
    assert res["fmnist"]["acc1"] < 0.35
    assert res["tux"]["image_retrieval_recall@1"] < 0.2
    assert model.training  # evaluate_model restores the model's mode


def test_per_item_outcomes_reproduce_clip_benchmark(smoke, tokenizer):
    """The per-item outcomes (kept in run folders for bootstrap intervals) are computed from the features
    clip-benchmark scored and give back its every metric; they are not all hits or all misses here."""
    torch.manual_seed(1)
    model = open_clip.create_model("TinyCLIP-smoke-teacher")
    items: dict = {}
    res = evaluate_model(model, eval_transform(IMAGE_SIZE, MEAN, STD), tokenizer, smoke / "eval", batch_size=16,
                         items=items)
    correct = items["fmnist"]["correct"]
    assert len(correct) == 160 and 0 < sum(correct) < 160
    assert sum(correct) / len(correct) == pytest.approx(res["fmnist"]["acc1"], abs=1e-12)
    for name in ("tux", "openmoji"):
        i2t, t2i = items[name]["i2t_rank"], items[name]["t2i_rank"]
        assert len(i2t) == len(t2i) == res[name]["n"]
        for k in (1, 5, 10):
            assert sum(r < k for r in i2t) / len(i2t) == pytest.approx(res[name][f"text_retrieval_recall@{k}"], abs=1e-6)
            assert sum(r < k for r in t2i) / len(t2i) == pytest.approx(res[name][f"image_retrieval_recall@{k}"], abs=1e-6)
        summary = retrieval_mean_recall(items[name]).mean()
        expected = sum(res[name][f"{d}_retrieval_recall@{k}"] for d in ("image", "text") for k in (1, 5, 10)) / 6
        assert summary == pytest.approx(expected, abs=1e-6) and 0 < summary < 1


def test_max_items_and_task_subset(smoke, tokenizer):
    res = evaluate_model(Oracle(tokenizer), eval_transform(IMAGE_SIZE, MEAN, STD), tokenizer, smoke / "eval",
                         tasks=("fmnist", "openmoji"), max_items=20, batch_size=8)
    assert set(res) == {"fmnist", "openmoji"}
    assert res["fmnist"]["n"] == 20 and res["openmoji"]["n"] == 20
    assert res["fmnist"]["acc1"] == 1.0 and res["openmoji"]["image_retrieval_recall@1"] == 1.0


def test_eval_errors(smoke, tokenizer, tmp_path):
    tf = eval_transform(IMAGE_SIZE, MEAN, STD)
    with pytest.raises(TinyCLIPError, match="not found"):
        evaluate_model(Oracle(tokenizer), tf, tokenizer, tmp_path / "nowhere")
    broken = tmp_path / "eval"
    shutil.copytree(smoke / "eval", broken)
    (broken / "tux" / "test" / "0.tar").unlink()
    with pytest.raises(TinyCLIPError, match="missing shard .*0.tar"):
        evaluate_model(Oracle(tokenizer), tf, tokenizer, broken, tasks=("tux",))
    with pytest.raises(TinyCLIPError, match="unknown evaluation task"):
        evaluate_model(Oracle(tokenizer), tf, tokenizer, smoke / "eval", tasks=("cifar",))
    with pytest.raises(TinyCLIPError, match="ImageNet folder"):
        evaluate_model(Oracle(tokenizer), tf, tokenizer, smoke / "eval", tasks=(), imagenet_root=tmp_path / "in1k")


def test_eval_transform_pads_white_and_normalises():
    from PIL import Image

    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 40, 20))   # a black 40x20 bar: padded with white to 40x40, then 32x32
    x = eval_transform(32, MEAN, STD)(img)
    assert x.shape == (3, 32, 32)
    white = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    black = -torch.tensor(MEAN) / torch.tensor(STD)
    assert torch.allclose(x[:, 0, 0], white, atol=1e-6) and torch.allclose(x[:, -1, -1], white, atol=1e-6)
    assert torch.allclose(x[:, 16, 16], black, atol=1e-6)


def test_cli_eval_writes_json(smoke, tmp_path, capsys):
    out = tmp_path / "res.json"
    code = cli_main(["eval", "--model", "TinyCLIP-smoke-teacher", "--profile", "smoke", "--eval-root",
                     str(smoke / "eval"), "--max-items", "16", "--batch-size", "16", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"fmnist", "tux", "openmoji"}
    assert "in-domain prompted classification" in report["descriptions"]["fmnist"]
    assert report["results"]["tux"]["n"] == 16
    assert json.loads(capsys.readouterr().out)["results"] == report["results"]
    assert cli_main(["eval", "--model", "TinyCLIP-smoke-teacher", "--weights", str(tmp_path / "no.pt"),
                     "--profile", "smoke", "--eval-root", str(smoke / "eval")]) == 2
