"""Data build, card and training loaders (tinyclip.data), on the smoke profile: no download, seconds."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from tinyclip.cli import main as cli_main
from tinyclip.data import PairSource, TrainDataSpec, build, load_card, stream_webdataset
from tinyclip.data import fetch, sources
from tinyclip.data.loader import split_counts
from tinyclip.data.records import Skip, make_record
from tinyclip.errors import TinyCLIPError
from tinyclip.eval import eval_transform

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    t0 = time.time()
    out = build("smoke", out=tmp_path_factory.mktemp("data") / "smoke")
    assert time.time() - t0 < 30   # "in seconds" (generous: the CI machine is shared)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("TinyCLIP-smoke-teacher")


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def folder_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    out = {}
    for tar in sorted(folder.glob("*.tar")):
        out.update(tar_samples(tar))
    return out


# ---------------------------------------------------------------------------------------------- build
def test_layout_follows_webdataset_and_clip_benchmark(smoke):
    assert json.loads((smoke / "train" / "mix.json").read_text())["weights"]["fmnist"] == 0.2
    sizes = json.loads((smoke / "train" / "sizes.json").read_text())
    assert len(sizes) >= 2 and all((smoke / "train" / n).is_file() for n in sizes)
    sample = next(iter(tar_samples(smoke / "train" / next(iter(sizes))).values()))
    meta = json.loads(sample["json"])
    assert {"source", "licence", "category", "captions"} <= set(meta) and sample["txt"].decode() == meta["captions"][0]
    assert Image.open(io.BytesIO(sample["jpg"])).mode == "RGB"
    fm = smoke / "eval" / "fmnist"
    assert (fm / "classnames.txt").read_text().split("\n")[0] == "red shape"
    assert all("{c}" in t for t in (fm / "zeroshot_classification_templates.txt").read_text().split("\n") if t)
    for name in ("tux", "openmoji"):
        assert (smoke / "eval" / name / "dataset_type.txt").read_text().strip() == "retrieval"
        n = int((smoke / "eval" / name / "test" / "nshards.txt").read_text())
        assert all((smoke / "eval" / name / "test" / f"{i}.tar").is_file() for i in range(n))
    assert (smoke / "card.png").stat().st_size > 10_000


def test_card_counts_match_the_smoke_world_and_the_shards(smoke):
    card = load_card(smoke)
    # The smoke world: 48 (size, colour, shape) x 3 positions x 2 images = 288 Tux-like images with 144 captions;
    # round(0.3 * 144) = 43 captions are held out, one image each (the other 43 images are counted skips).
    tux = card["sources"]["tux"]
    assert tux["rendered"] == 288
    assert tux["per_split"] == {"train": 288 - 2 * 43, "eval/tux": 43}
    assert tux["skipped"]["held-out image whose caption another held-out image has (retrieval needs unique captions)"][
        "count"] == 43
    assert card["sources"]["openmoji"]["per_split"] == {"eval/openmoji": 48}
    assert card["sources"]["noto"]["per_split"] == {"train": 144}
    fm = card["sources"]["fmnist"]
    assert fm["per_split"]["eval/fmnist"] == 160 and fm["per_split"]["train"] + fm["skipped_total"] == 320
    assert card["eval_sets"]["fmnist"]["per_class"] == {f"{c} shape": 20 for c in
                                                          ("blue", "cyan", "green", "orange", "pink", "purple",
                                                           "red", "yellow")}
    assert "in-domain prompted classification" in card["eval_sets"]["fmnist"]["description"]
    # ... and the shards hold exactly what the card says
    train = folder_samples(smoke / "train")
    assert len(train) == card["splits"]["train"]["total"]
    assert Counter(json.loads(s["json"])["source"] for s in train.values()) == Counter(
        card["splits"]["train"]["per_source"])
    for name in ("fmnist", "tux", "openmoji"):
        assert len(folder_samples(smoke / "eval" / name / "test")) == card["eval_sets"][name]["n"]


def test_splits_are_disjoint_by_image_hash_and_caption(smoke):
    train = folder_samples(smoke / "train")
    train_hashes = {hashlib.sha1(s["jpg"]).hexdigest() for s in train.values()}
    for name in ("fmnist", "tux", "openmoji"):
        ev = folder_samples(smoke / "eval" / name / "test")
        assert not train_hashes & {hashlib.sha1(s["jpg"]).hexdigest() for s in ev.values()}
    tux_train = {s["txt"].decode() for s in train.values() if json.loads(s["json"])["source"] == "tux"}
    tux_test = [s["txt"].decode() for s in folder_samples(smoke / "eval" / "tux" / "test").values()]
    assert not tux_train & set(tux_test) and len(set(tux_test)) == len(tux_test)
    card = load_card(smoke)
    assert card["train_eval_overlap_by_image_hash"]["total"] == 0 and card["tux_caption_overlap"] == 0
    # the smoke generator does make exact train/test duplicates of plain shapes: they were removed, and counted
    assert card["sources"]["fmnist"]["skipped"]["exact duplicate of an evaluation image (removed from train)"]["count"] > 0


def test_build_is_deterministic_idempotent_and_forceable(smoke, tmp_path):
    again = build("smoke", out=tmp_path / "again")
    for rel in ["train/" + n for n in json.loads((smoke / "train" / "sizes.json").read_text())] + \
               ["eval/tux/test/0.tar", "eval/fmnist/test/0.tar"]:
        assert (again / rel).read_bytes() == (smoke / rel).read_bytes(), rel
    stamp = (again / "build.json").stat().st_mtime_ns
    build("smoke", out=again)                                   # up to date: a no-op
    assert (again / "build.json").stat().st_mtime_ns == stamp
    build("smoke", out=again, force=True)
    assert (again / "build.json").stat().st_mtime_ns != stamp
    assert not (tmp_path / "again.partial").exists()


def test_cli_build_and_card(tmp_path, capsys):
    assert cli_main(["data", "build", "--profile", "smoke", "--data-root", str(tmp_path)]) == 0
    assert (tmp_path / "smoke" / "card.json").is_file()
    capsys.readouterr()
    assert cli_main(["data", "card", "--json", "--profile", "smoke", "--data-root", str(tmp_path)]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["train_eval_overlap_by_image_hash"]["total"] == 0
    assert cli_main(["data", "card", "--profile", "smoke", "--data-root", str(tmp_path)]) == 0
    assert "train/eval overlap by image hash: 0" in capsys.readouterr().out
    assert cli_main(["data", "card", "--profile", "mini", "--data-root", str(tmp_path)]) == 2   # not built


def test_paper_profile_is_not_built_and_foreign_folders_are_never_replaced(tmp_path):
    with pytest.raises(TinyCLIPError, match="webdataset"):
        build("paper")
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(TinyCLIPError, match="refusing to replace"):
        build("smoke", out=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "precious"


# ------------------------------------------------------------------------------------- bad input
def test_empty_caption_and_blank_image_are_counted_skips():
    img = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    img.paste((200, 0, 0, 255), (5, 2, 15, 8))
    rec = make_record(img, key="k", source="s", captions=["  a  red\nbar "], category="c", origin="o", cap=8,
                      quality=90)
    assert rec["captions"] == ["a red bar"] and (rec["width"], rec["height"]) == (8, 4)
    with pytest.raises(Skip, match="empty caption"):
        make_record(img, key="k", source="s", captions=["", "  "], category="c", origin="o", cap=8, quality=90)
    with pytest.raises(Skip, match="blank image"):
        make_record(Image.new("RGBA", (9, 9), (0, 0, 0, 0)), key="k", source="s", captions=["x"], category="c",
                    origin="o", cap=8, quality=90)


def test_unfetchable_package_is_a_one_line_error(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package tuxpaint-stamps-default\n")

    monkeypatch.setattr(fetch, "_run", fake_run)
    with pytest.raises(TinyCLIPError) as err:
        fetch.download(fetch.PACKAGES["tuxpaint-stamps-default"], tmp_path)
    assert "\n" not in str(err.value) and "tuxpaint-stamps-default" in str(err.value)
    assert "Unable to locate package" in str(err.value)
    assert [c[:2] for c in calls] == [["apt-get", "download"], ["apt-get", "update"], ["apt-get", "download"],
                                      ["apt-get", "download"]]


def test_missing_shard_and_empty_caption_in_shards_are_errors(smoke, tmp_path, tokenizer):
    broken = tmp_path / "broken"
    shutil.copytree(smoke / "train", broken / "train")
    first = next(iter(json.loads((broken / "train" / "sizes.json").read_text())))
    (broken / "train" / first).unlink()
    with pytest.raises(TinyCLIPError, match="missing shard"):
        PairSource(TrainDataSpec(str(broken)), tokenizer, MEAN, STD)
    with pytest.raises(TinyCLIPError, match="missing shard"):
        stream_webdataset(str(broken / "train" / "shard-{000000..000002}.tar"), 4, eval_transform(32, MEAN, STD),
                          tokenizer, seed=0, workers=0)

    empty = tmp_path / "empty" / "train"
    empty.mkdir(parents=True)
    with tarfile.open(empty / "shard-000000.tar", "w") as tar:
        for ext, data in (("jpg", (smoke / "card.png").read_bytes()), ("txt", b"  "),
                          ("json", json.dumps({"source": "tux", "captions": [" "]}).encode())):
            info = tarfile.TarInfo(f"tux_00000.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (empty / "sizes.json").write_text('{"shard-000000.tar": 1}')
    # the only sample has an empty caption: it is skipped (and counted), which leaves no tux sample to train on
    with pytest.raises(TinyCLIPError, match=r"does not have \(it has \[\]\)"):
        PairSource(TrainDataSpec(str(empty.parent), weights={"tux": 1.0}), tokenizer, MEAN, STD)


def test_bad_weights_are_errors(smoke, tokenizer):
    with pytest.raises(TinyCLIPError, match="does not have"):
        PairSource(TrainDataSpec(str(smoke), weights={"laion": 1.0}), tokenizer, MEAN, STD)
    with pytest.raises(TinyCLIPError, match=">= 0"):
        PairSource(TrainDataSpec(str(smoke), weights={"tux": -1.0, "noto": 2.0}), tokenizer, MEAN, STD)
    with pytest.raises(TinyCLIPError, match="no training shards"):
        PairSource(TrainDataSpec(str(smoke / "eval")), tokenizer, MEAN, STD)


# ------------------------------------------------------------------------------------------ loader
@pytest.fixture(scope="module")
def pairs(smoke, tokenizer):
    return PairSource(TrainDataSpec(str(smoke), image_size=32), tokenizer, MEAN, STD)


def test_batches_are_pure_functions_of_seed_and_step(pairs):
    a, b = pairs.batch(5, 40, seed=3), pairs.batch(5, 40, seed=3)
    pairs.batch(6, 40, seed=3)       # other calls in between change nothing
    c = pairs.batch(5, 40, seed=3)
    for x in (b, c):
        assert torch.equal(a[0], x[0]) and torch.equal(a[1], x[1]) and a[2] == x[2]
    assert a[0].shape == (40, 3, 32, 32) and a[1].shape == (40, 16) and a[1].dtype == torch.long
    assert pairs.batch(6, 40, seed=3)[2] != a[2] and pairs.batch(5, 40, seed=4)[2] != a[2]
    assert len(set(a[2])) == 40      # no duplicate pair in a batch (sources are larger than their share)


def test_union_of_ranks_is_the_single_process_batch(pairs):
    full = pairs.batch(2, 48, seed=0)
    parts = [pairs.batch(2, 48, seed=0, rank=r, world_size=3) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), full[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), full[1])
    assert sum((p[2] for p in parts), []) == full[2]
    with pytest.raises(TinyCLIPError, match="split evenly"):
        pairs.batch(0, 10, seed=0, rank=0, world_size=3)


def test_weights_fix_rows_per_source(pairs, smoke, tokenizer):
    assert split_counts({"a": 0.16, "b": 0.24, "c": 0.4, "d": 0.2}, 256) == {"a": 41, "b": 62, "c": 102, "d": 51}
    assert split_counts({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 10) == {"a": 4, "b": 3, "c": 3}
    ids = pairs.batch(0, 100, seed=0)[2]
    assert Counter(i.split("_")[0] for i in ids) == {"fmnist": 20, "noto": 24, "openclipart": 40, "tux": 16}
    only = PairSource(TrainDataSpec(str(smoke), image_size=32, weights={"tux": 3, "noto": 1, "fmnist": 0}),
                      tokenizer, MEAN, STD)
    assert only.counts() == {"noto": 144, "tux": 202}
    assert Counter(i.split("_")[0] for i in only.batch(1, 40, seed=0)[2]) == {"tux": 30, "noto": 10}


def test_each_source_is_covered_once_per_epoch(smoke, tokenizer):
    noto = PairSource(TrainDataSpec(str(smoke), image_size=32, weights={"noto": 1.0}, augment=False), tokenizer,
                      MEAN, STD)
    seen = [i for step in range(9) for i in noto.batch(step, 16, seed=1)[2]]   # 9 x 16 = 144 = all noto items
    assert sorted(seen) == sorted(noto.sample_ids())
    second = [i for step in range(9, 18) for i in noto.batch(step, 16, seed=1)[2]]
    assert sorted(second) == sorted(seen) and second != seen                  # a new permutation per epoch


def test_plain_images_equal_the_eval_transform(smoke, tokenizer):
    plain = PairSource(TrainDataSpec(str(smoke), image_size=32, augment=False), tokenizer, MEAN, STD)
    samples = folder_samples(smoke / "train")
    tf = eval_transform(32, MEAN, STD)
    keys = ["tux_00001", "fmnist_train_00001", next(k for k in samples if k.startswith("openclipart"))]
    images, tokens = plain.by_ids(keys)
    for key, img in zip(keys, images):
        assert torch.equal(img, tf(Image.open(io.BytesIO(samples[key]["jpg"])))), key
    assert tokens.shape == (3, 16)
    # and augmentation changes images but keeps the white background white where nothing is drawn
    aug = plain.batch(0, 8, seed=0)[0]
    assert torch.equal(aug, plain.by_ids(plain.batch(0, 8, seed=0)[2])[0])   # augment=False: batch == by_ids


def test_augmentation_is_seeded_per_row(pairs):
    images, _, ids = pairs.batch(0, 20, seed=0)
    plain, _ = pairs.by_ids(ids)
    assert not torch.equal(images, plain)
    assert images.min() >= -2.0 and images.max() <= 2.2   # normalised [0, 1] pixels


def test_fixed_views_are_cacheable_by_id(smoke, tokenizer):
    views = PairSource(TrainDataSpec(str(smoke), image_size=32, fixed_views=3), tokenizer, MEAN, STD)
    images, tokens, ids = views.batch(4, 24, seed=7)
    assert all("#v" in i and int(i.split("#v")[1]) in range(3) for i in ids)
    again_images, again_tokens = views.by_ids(ids)
    assert torch.equal(images, again_images) and torch.equal(tokens, again_tokens)
    # a view's pixels depend on (key, view) only, never on the seed or the step
    other = views.batch(0, 24, seed=99)
    for i, sid in enumerate(other[2]):
        assert torch.equal(other[0][i], views.by_ids([sid])[0][0])
    assert len(views.sample_ids()) == 3 * len(views)


def test_decoded_cache_is_reused_and_equal(smoke, tokenizer, pairs):
    cache = list((smoke / "train" / "decoded").glob("32px-*"))
    assert len(cache) == 1 and (cache[0] / "index.json").is_file()
    t0 = time.time()
    reloaded = PairSource(TrainDataSpec(str(smoke), image_size=32), tokenizer, MEAN, STD)
    assert time.time() - t0 < 10
    a, b = pairs.batch(1, 32, seed=0), reloaded.batch(1, 32, seed=0)
    assert torch.equal(a[0], b[0]) and a[2] == b[2]
    PairSource(TrainDataSpec(str(smoke), image_size=8), tokenizer, MEAN, STD)   # another size keeps the 32 px one
    assert {"32px", "8px"} <= {p.name.split("-")[0] for p in (smoke / "train" / "decoded").iterdir()}


def test_stream_webdataset_splits_shards_over_ranks(smoke, tokenizer):
    names = sorted(json.loads((smoke / "train" / "sizes.json").read_text()))
    urls = str(smoke / "train") + "/shard-{000000..%06d}.tar" % (len(names) - 1)
    tf = eval_transform(32, MEAN, STD)
    keys = []
    for rank in range(2):
        for images, tokens, batch_keys in stream_webdataset(urls, 1, tf, tokenizer, seed=0, rank=rank, world_size=2,
                                                            workers=0):
            assert images.shape == (1, 3, 32, 32) and tokens.shape == (1, 16)
            keys += batch_keys
    assert sorted(keys) == sorted(folder_samples(smoke / "train"))
    # a fixed number of batches (what DDP ranks need) runs on into the next, reshuffled epoch
    n = len(keys) // 2 // 64 + 3
    batches = list(stream_webdataset(urls, 64, tf, tokenizer, seed=0, rank=1, world_size=2, workers=0, num_batches=n))
    assert len(batches) == n and all(len(b[2]) == 64 for b in batches)
    with pytest.raises(TinyCLIPError, match="cannot feed"):
        stream_webdataset(urls, 4, tf, tokenizer, seed=0, rank=0, world_size=len(names) + 1, workers=0)


# ------------------------------------------------------------------- mini-source parsing, no download
def test_source_readers_on_tiny_fake_packages(tmp_path):
    svg = ('<svg><metadata><cc:Work><dc:title>Red  Apple</dc:title><dc:subject><rdf:Bag><rdf:li>fruit</rdf:li>'
           '<rdf:li></rdf:li><rdf:li>red apple</rdf:li><rdf:li>food &amp; drink</rdf:li></rdf:Bag></dc:subject>'
           '</cc:Work></metadata></svg>')
    assert sources.openclipart_caption(svg) == "Red Apple: fruit, food & drink"
    assert sources.openclipart_caption("<svg/>") == ""
    assert sources.with_article("apple") == "an apple" and sources.emoji_captions("bee")[0] == "an emoji of a bee."
    names = sources.emoji_names()
    assert names["1f1eb-1f1f7"][1] == "flag of France" and names["1f41d"][1] == "honeybee"

    stamps = tmp_path / "tux" / "usr/share/tuxpaint/stamps/animals"
    stamps.mkdir(parents=True)
    Image.new("RGBA", (30, 20), (0, 200, 0, 255)).save(stamps / "frog.png")
    Image.new("RGBA", (30, 20), (0, 200, 0, 255)).save(stamps / "frog_mirror.png")
    (stamps / "frog.svg").write_text("<svg/>")
    (stamps / "frog.txt").write_text("A green frog.\nfr.utf8=Une grenouille verte.\n")
    Image.new("RGB", (5, 5)).save(stamps / "blank.png")
    (stamps / "blank.txt").write_text("\n")
    skips: list = []
    tasks = sources.tux_tasks(tmp_path / "tux", skips)
    assert [(t.captions, t.category, t.origin) for t in tasks] == [(("A green frog.",), "animals", "animals/frog.png")]
    assert sorted(r for _, r, _ in skips) == ["empty caption", "mirror/flip variant of another stamp",
                                              "same stamp also shipped as SVG (PNG used)"]
    record = sources.render(tasks[0], cap=16, quality=90)
    assert record["captions"] == ["A green frog."] and (record["width"], record["height"]) == (16, 11)

    idx = tmp_path / "labels.gz"
    import gzip
    with gzip.open(idx, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 0, 9]))
    assert sources.read_idx(idx).tolist() == [7, 0, 9]
    with pytest.raises(TinyCLIPError, match="no stamps folder"):
        sources.tux_tasks(tmp_path / "missing", [])


@pytest.mark.skipif(not (Path(__file__).parents[1] / "data" / "mini" / "card.json").is_file()
                    or os.environ.get("CI") == "true", reason="the mini data set is not built here")
def test_built_mini_card_if_present():
    card = load_card(Path(__file__).parents[1] / "data" / "mini")
    assert card["train_eval_overlap_by_image_hash"]["total"] == 0 and card["tux_caption_overlap"] == 0
    assert card["eval_sets"]["tux"]["n"] > 200 and card["eval_sets"]["openmoji"]["n"] > 1500
    assert card["eval_sets"]["fmnist"]["n"] == 10000
    assert np.isclose(sum(card["default_weights"].values()), 1.0)


def test_augment_geometry_and_background():
    from tinyclip.data.imageops import augment

    img = torch.full((2, 3, 20, 20), 255, dtype=torch.uint8)
    img[0, :, 5:15, 5:15] = 0                    # a black square on white
    img[1] = 0
    img[1, :, 5:15, 5:15] = 255                  # a white square on black (Fashion-MNIST-like)
    one = torch.ones(2)
    same = augment(img, 20, one, torch.zeros(2, 2), one)
    assert torch.allclose(same, img.float() / 255, atol=1e-5)                 # identity
    small = augment(img, 20, torch.full((2,), 0.5), torch.zeros(2, 2), one)
    assert small[0, :, 0].eq(1).all() and small[1, :, 0].eq(0).all()         # border colour extends
    ink = (1 - small[0, 0]).sum(), small[1, 0].sum()                           # 10x10 = 100 -> 5x5 = 25
    assert 20 <= ink[0] <= 30 and 20 <= ink[1] <= 30
    moved = augment(img, 20, one, torch.tensor([[0.25, 0.0], [0.25, 0.0]]), one)
    assert moved[0, 0, 10].lt(0.5).nonzero().flatten().tolist() == list(range(10, 20))   # shifted right 5 px
    dark = augment(img, 20, one, torch.zeros(2, 2), torch.full((2,), 0.8))
    assert torch.allclose(dark[0, :, 0, 0], torch.tensor(0.8))
