"""Training data loaders: in-memory and deterministic (smoke, mini), or streamed from webdataset (paper:
:func:`stream_webdataset`, and :class:`StreamSource` behind the trainer's ``batch`` interface).

:class:`PairSource` makes every batch a pure function of ``(seed, step)``, so training resumes exactly and
splits over DDP ranks without communication:

* the number of rows per source is fixed by the weights (largest remainder: 20% Fashion-MNIST of every
  batch, as the teacher feasibility study trained: docs/data.md §2-3);
* each source is walked through epoch permutations seeded by ``(seed, source, epoch)``: step ``t`` takes
  positions ``[t*k, (t+1)*k)``, so items are not repeated before the source is exhausted and a batch has no
  duplicate pair (false negatives for the contrastive loss) unless a source is smaller than its share;
* the rows are shuffled, and the caption template and augmentation of each row drawn, from a generator
  seeded by ``(seed, step)`` for the whole global batch; rank ``r`` of ``W`` takes the contiguous slice
  ``r*b/W:(r+1)*b/W``, so gathering ranks in order gives exactly the one-process batch;
* with ``fixed_views = K`` each draw picks one of K views per item, and the view's augmentation and
  caption come from ``(key, view)`` alone (ids ``"key#v3"``): a teacher's embeddings can be cached per id.

Images are decoded once into uint8 squares of side ``image_size`` (images under half that, such as
Fashion-MNIST's 28 px at 64, stay native to save memory and are resized at batch time) and kept in a
decoded cache next to the shards (``train/decoded/``, keyed by the shards' names, sizes and mtimes), so a
second load takes about a second instead of half a minute; batches are augmented from it with torch ops.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shutil
import tarfile
import time
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import TinyCLIPError
from .imageops import BRIGHTNESS_RANGE, SCALE_RANGE, SHIFT_RANGE, augment, fit_square, fit_square_pil, normalize

log = logging.getLogger(__name__)

DECODED_CACHE_VERSION = 1


@dataclass
class TrainDataSpec:
    root: str                                   # a built data set (with train/) or its train/ folder
    weights: dict[str, float] | None = None     # per-source sampling weights; None: the build's defaults
    image_size: int = 64
    augment: bool = True
    fixed_views: int = 0                        # > 0: K fixed augmentation views per item (teacher cache)


def seed_of(*parts) -> int:
    """A 63-bit seed derived from any tuple of str/int (stable across processes and Python versions)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def _generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(*parts))


def split_counts(weights: dict[str, float], batch_size: int) -> dict[str, int]:
    """Rows per source in a batch: ``weights * batch_size`` rounded by largest remainder (sum = batch)."""
    exact = {s: w * batch_size for s, w in weights.items()}
    counts = {s: int(v) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: (-(exact[s] - counts[s]), s))[:batch_size - sum(counts.values())]:
        counts[s] += 1
    return counts


def _train_dir(root: str | Path) -> Path:
    root = Path(root)
    train = root / "train" if (root / "train" / "sizes.json").is_file() else root
    if not (train / "sizes.json").is_file():
        raise TinyCLIPError(f"no training shards at {root} (missing sizes.json); build the data set first "
                            f"(tinyclip data build --profile ...)")
    return train


def _tar_members(path: Path) -> list[tuple[str, bytes]]:
    """(name, data) of the regular files in a tar, up to the first damaged header or truncated member (what
    follows cannot be located; the caller counts those samples as skipped). Plain ustar headers (what the build
    writes) are parsed directly, ten times faster than :mod:`tarfile`; anything else goes to tarfile."""
    data = path.read_bytes()
    members, pos = [], 0
    while pos + 512 <= len(data):
        header = data[pos:pos + 512]
        if header == bytes(512):
            return members
        kind = header[156:157]
        if kind not in (b"0", b"\0", b"5") or header[257:262] not in (b"ustar", bytes(5)):
            break   # extended headers: let tarfile handle the whole archive
        if sum(header[:148]) + 8 * 32 + sum(header[156:]) != _octal(header[148:156]):
            return members   # damaged header: checksum mismatch
        size = _octal(header[124:136])
        if size < 0 or pos + 512 + size > len(data):
            return members   # truncated member
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if kind != b"5":
            members.append((f"{prefix}/{name}" if prefix else name, data[pos + 512:pos + 512 + size]))
        pos += 512 + (size + 511) // 512 * 512
    else:
        return members
    members = []
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                if m.isfile():
                    members.append((m.name, tar.extractfile(m).read()))
    except (tarfile.TarError, OSError, EOFError):
        pass   # damaged from here on
    return members


def _octal(field: bytes) -> int:
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return -1


def shard_sizes(train: Path) -> dict[str, int]:
    """``sizes.json`` (shard name -> samples), after checking that every listed shard exists."""
    try:
        sizes = json.loads((train / "sizes.json").read_text())
    except (OSError, ValueError) as exc:
        raise TinyCLIPError(f"unreadable {train / 'sizes.json'} ({exc}); rebuild the data set with --force") from None
    missing = [name for name in sizes if not (train / name).is_file()]
    if missing:
        raise TinyCLIPError(f"missing shard {train / missing[0]} ({len(missing)} of {len(sizes)} missing); "
                            f"rebuild the data set with --force")
    return sizes


def read_train_shards(train: Path, sources: set[str] | None = None, skipped: Counter | None = None
                      ) -> Iterable[tuple[str, bytes, list[str], dict]]:
    """Yield (key, jpg bytes, captions, meta) from the shards listed in ``sizes.json``, checking each exists.

    A damaged sample is skipped and counted in ``skipped`` by reason, as webdataset and img2dataset users
    expect: samples lost to a damaged tar header or a truncated shard, unreadable metadata, an empty caption, a
    sample without an image."""
    skipped = Counter() if skipped is None else skipped
    for name, expected in shard_sizes(train).items():
        samples: dict[str, dict] = defaultdict(dict)
        try:
            for member, data in _tar_members(train / name):
                key, _, ext = member.rpartition("/")[2].partition(".")
                samples[key][ext] = data
        except OSError as exc:
            raise TinyCLIPError(f"unreadable shard {train / name} ({exc}); rebuild the data set with --force") from None
        lost = int(expected) - sum(1 for parts in samples.values() if "jpg" in parts)
        if lost > 0:
            skipped["damaged tar data"] += lost
            log.warning("shard %s: %d sample(s) unreadable (damaged tar data), skipped", train / name, lost)
        for key, parts in samples.items():
            try:
                meta = json.loads(parts["json"]) if "json" in parts else {}
            except ValueError:
                skipped["unreadable metadata"] += 1
                continue
            if sources is not None and meta.get("source") not in sources:
                continue
            captions = [c for c in (" ".join(str(c).split()) for c in meta.get("captions") or
                                    [parts.get("txt", b"").decode("utf-8", "replace")]) if c]
            if not captions:
                skipped["empty caption"] += 1
                continue
            if "jpg" not in parts:
                skipped["no image"] += 1
                continue
            yield key, parts["jpg"], captions, meta


def cache_side(native: int, image_size: int) -> int:
    """Side at which an image is kept in memory: the model's input size, except images under half of it
    (Fashion-MNIST at 64 px), which stay native (memory) and are resized at batch time."""
    return image_size if native * 2 >= image_size else native


class DecodedImages:
    """Every training image decoded once: uint8 stacks per cached side, plus keys, sources and captions."""

    def __init__(self, keys, sources, captions, side_of, row_of, stacks, skipped: dict[str, int] | None = None):
        self.keys, self.sources, self.captions = keys, sources, captions
        self.side_of, self.row_of, self.stacks = side_of, row_of, stacks   # side_of/row_of: np.int32 [n]
        self.skipped = dict(skipped or {})   # damaged samples left out, by reason

    @classmethod
    def decode(cls, train: Path, image_size: int) -> "DecodedImages":
        keys, sources, captions, sides = [], [], [], []
        by_side: dict[int, list[np.ndarray]] = defaultdict(list)
        rows = []
        sizes = shard_sizes(train)
        skipped: Counter = Counter()
        for key, jpg, caps, meta in tqdm(read_train_shards(train, skipped=skipped), total=sum(sizes.values()),
                                         desc="decode training images", leave=False, mininterval=2,
                                         disable=os.environ.get("TINYCLIP_PROGRESS") == "0"):
            try:
                pil = Image.open(io.BytesIO(jpg))
                pil.load()
            except (OSError, ValueError, Image.DecompressionBombError):
                skipped["undecodable image"] += 1
                continue
            side = cache_side(max(pil.size), image_size)
            img = np.asarray(fit_square_pil(pil, side))
            rows.append(len(by_side[side]))
            by_side[side].append(img)
            sides.append(side)
            keys.append(key)
            sources.append(meta.get("source", "unknown"))
            captions.append(caps)
        stacks = {side: np.ascontiguousarray(np.stack(imgs).transpose(0, 3, 1, 2)) for side, imgs in by_side.items()}
        if skipped:
            log.warning("training data %s: skipped %s", train, dict(skipped))
        return cls(keys, sources, captions, np.asarray(sides, np.int32), np.asarray(rows, np.int32), stacks,
                   skipped)

    @staticmethod
    def cache_folder(train: Path, image_size: int) -> Path:
        sizes = shard_sizes(train)
        stamp = [(n, (train / n).stat().st_size, (train / n).stat().st_mtime_ns) for n in sorted(sizes)]
        key = hashlib.sha256(json.dumps([DECODED_CACHE_VERSION, image_size, stamp]).encode()).hexdigest()[:16]
        return train / "decoded" / f"{image_size}px-{key}"

    @classmethod
    def load(cls, train: Path, image_size: int) -> "DecodedImages":
        """From the decoded cache if it is current, else decode the shards (and try to write the cache)."""
        folder = cls.cache_folder(train, image_size)
        if (folder / "index.json").is_file():
            try:
                index = json.loads((folder / "index.json").read_text())
                stacks = {int(side): np.load(folder / f"side{side}.npy") for side in index["sides"]}
                return cls(index["keys"], index["sources"], index["captions"], np.load(folder / "side_of.npy"),
                           np.load(folder / "row_of.npy"), stacks, index.get("skipped"))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring a damaged decoded-image cache at %s (%s)", folder, exc)
        decoded = cls.decode(train, image_size)
        decoded._save(folder)
        return decoded

    def _save(self, folder: Path) -> None:
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        size_prefix = folder.name.split("-")[0] + "-"
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            for old in folder.parent.iterdir():
                # Stale caches of this image size go (shards rebuilt); other sizes stay (the LiT cache uses 8 px
                # while the trainer uses 64); unfinished ones of other processes only when clearly abandoned.
                abandoned = ".tmp" in old.name and time.time() - old.stat().st_mtime > 3600
                if (old.name.startswith(size_prefix) and ".tmp" not in old.name and old.name != folder.name) \
                        or abandoned:
                    shutil.rmtree(old, ignore_errors=True)
            tmp.mkdir()
            for side, stack in self.stacks.items():
                np.save(tmp / f"side{side}.npy", stack)
            np.save(tmp / "side_of.npy", self.side_of)
            np.save(tmp / "row_of.npy", self.row_of)
            (tmp / "index.json").write_text(json.dumps({"sides": sorted(self.stacks), "keys": self.keys,
                                                        "sources": self.sources, "captions": self.captions,
                                                        "skipped": self.skipped}))
            tmp.rename(folder)
        except OSError as exc:  # a read-only data set still loads, only slower
            log.info("could not write the decoded-image cache %s (%s)", folder, exc)
            shutil.rmtree(tmp, ignore_errors=True)


class PairSource:
    """An in-memory image-caption training set whose batches are pure functions of (seed, step)."""

    def __init__(self, spec: TrainDataSpec, tokenizer: Callable[[list[str]], torch.Tensor],
                 image_mean: Sequence[float], image_std: Sequence[float]):
        self.spec, self.tokenizer = spec, tokenizer
        self.mean, self.std = tuple(image_mean), tuple(image_std)
        if spec.image_size <= 0 or spec.fixed_views < 0:
            raise TinyCLIPError(f"bad TrainDataSpec: image_size {spec.image_size}, fixed_views {spec.fixed_views}")
        train = _train_dir(spec.root)
        mix = json.loads((train / "mix.json").read_text()) if (train / "mix.json").is_file() else {}
        weights = dict(spec.weights if spec.weights is not None else mix.get("weights", {}))
        if not weights:
            raise TinyCLIPError(f"no source weights given and none recorded in {train / 'mix.json'}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise TinyCLIPError(f"source weights must be >= 0 with a positive sum, got {weights}")
        weights = {s: w for s, w in weights.items() if w > 0}

        def check_sources(present: set[str]) -> None:
            unknown = sorted(set(weights) - present)
            if unknown:
                raise TinyCLIPError(f"weights name source(s) {unknown} that {train} does not have "
                                    f"(it has {sorted(present)}); set their weight to 0 or rebuild the data set")

        if mix.get("counts"):
            check_sources({s for s, n in mix["counts"].items() if n > 0})   # before the (slow) first decode
        data = DecodedImages.load(train, spec.image_size)
        check_sources(set(data.sources))
        self._data = data
        self._stacks = {side: torch.from_numpy(stack) for side, stack in data.stacks.items()}
        self.sources = sorted(weights)
        total_w = sum(weights.values())
        self.weights = {s: weights[s] / total_w for s in self.sources}
        # source -> global indices (in shard order, which is fixed by the build)
        self.members = {s: [i for i, src in enumerate(data.sources) if src == s] for s in self.sources}
        self._index = {data.keys[i]: i for s in self.sources for i in self.members[s]}
        self._perms: OrderedDict[tuple[int, str, int], torch.Tensor] = OrderedDict()
        self._tokens: dict[str, torch.Tensor] = {}  # caption -> token row (tokenizing is a pure function)
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return sum(len(m) for m in self.members.values())

    def skipped(self) -> dict[str, int]:
        """Damaged training samples left out, by reason (reported in the run summary)."""
        return dict(self._data.skipped)

    def counts(self) -> dict[str, int]:
        return {s: len(self.members[s]) for s in self.sources}

    def rows_per_source(self, batch_size: int) -> dict[str, int]:
        return split_counts(self.weights, batch_size)

    def sample_ids(self) -> list[str]:
        """Every id a batch can return: item keys, or ``key#v{j}`` for each of the fixed views."""
        keys = [self._data.keys[i] for s in self.sources for i in self.members[s]]
        k = self.spec.fixed_views
        return [f"{key}#v{v}" for key in keys for v in range(k)] if k > 0 else keys

    # ------------------------------------------------------------------------------------------ batches
    def _perm(self, seed: int, source: str, epoch: int) -> torch.Tensor:
        key = (seed, source, epoch)
        perm = self._perms.get(key)
        if perm is None:
            perm = torch.randperm(len(self.members[source]), generator=_generator("perm", seed, source, epoch))
            self._perms[key] = perm
            while len(self._perms) > 4 * len(self.sources):
                self._perms.popitem(last=False)
        return perm

    def _draw(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch: item index per row [b], and per-row uniforms [b, 6] (all ranks agree)."""
        picks = []
        for src, k in self.rows_per_source(batch_size).items():
            if k == 0:
                continue
            n = len(self.members[src])
            pos = torch.arange(step * k, (step + 1) * k)
            local = torch.empty(k, dtype=torch.long)
            for epoch in pos.div(n, rounding_mode="floor").unique().tolist():
                sel = pos.div(n, rounding_mode="floor") == epoch
                local[sel] = self._perm(seed, src, epoch)[pos[sel] % n]
            picks.append(torch.as_tensor(self.members[src])[local])
        g = _generator("batch", seed, step)
        order = torch.randperm(batch_size, generator=g)
        # columns: caption, scale, shift x, shift y, brightness, view
        return torch.cat(picks)[order], torch.rand(batch_size, 6, generator=g)

    @staticmethod
    def _view_uniforms(key: str, view: int) -> torch.Tensor:
        """A fixed view's caption choice and augmentation: from (key, view) only, never the seed, so a teacher
        embedding cached under ``key#v{view}`` stays valid across runs."""
        return torch.rand(5, generator=_generator("view", key, view))

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Rows ``rank*b/W : (rank+1)*b/W`` of global batch ``step``: (images, tokens, sample ids)."""
        if step < 0 or batch_size <= 0:
            raise TinyCLIPError(f"bad batch request: step {step}, batch size {batch_size}")
        if not 0 <= rank < world_size or batch_size % world_size:
            raise TinyCLIPError(f"batch size {batch_size} must split evenly over world size {world_size} "
                                f"(rank {rank})")
        items, uniforms = self._draw(step, batch_size, seed)
        per = batch_size // world_size
        mine = slice(rank * per, (rank + 1) * per)
        items, u = items[mine], uniforms[mine, :5].clone()
        keys = [self._data.keys[i] for i in items.tolist()]
        if self.spec.fixed_views > 0:
            k = self.spec.fixed_views
            views = (uniforms[mine, 5] * k).long().clamp_(max=k - 1)
            for row, (key, view) in enumerate(zip(keys, views.tolist())):
                u[row] = self._view_uniforms(key, view)
            ids = [f"{key}#v{view}" for key, view in zip(keys, views.tolist())]
        else:
            ids = keys
        images, tokens = self._materialise(items, u, augmented=torch.full((len(items),), self.spec.augment))
        return images, tokens, ids

    def by_ids(self, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, tokens) for given sample ids. With fixed views these equal what :meth:`batch` returned for
        the same ids; without, an id names only the item: plain (unaugmented) image and first caption."""
        items, u, aug = [], torch.zeros(len(ids), 5), torch.zeros(len(ids), dtype=torch.bool)
        for row, sid in enumerate(ids):
            key, sep, view = sid.partition("#v")
            if key not in self._index:
                raise TinyCLIPError(f"unknown sample id {sid!r}")
            items.append(self._index[key])
            if sep and self.spec.fixed_views > 0:
                u[row] = self._view_uniforms(key, int(view))
                aug[row] = self.spec.augment
        return self._materialise(torch.as_tensor(items, dtype=torch.long), u, aug)

    def _materialise(self, items: torch.Tensor, u: torch.Tensor, augmented: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (augmented where ``augmented``; uniforms ``u`` [n, 5]) and tokenized captions."""
        size, dev = self.spec.image_size, self.device
        on_device = (lambda t: t.to(dev, non_blocking=True)) if dev.type != "cpu" else (lambda t: t)
        out = torch.empty(len(items), 3, size, size, device=dev)
        sides = torch.from_numpy(self._data.side_of)[items]
        rows_in_stack = torch.from_numpy(self._data.row_of)[items]
        for side in sides.unique().tolist():
            sel = (sides == side).nonzero().flatten()
            stack = self._stacks[side][on_device(rows_in_stack[sel])]
            aug = augmented[sel]
            if aug.any():
                a = sel[aug]
                lo, hi = SCALE_RANGE
                scale = u[a, 1] * (hi - lo) + lo
                shift = (u[a, 2:4] * 2 - 1) * SHIFT_RANGE
                lo, hi = BRIGHTNESS_RANGE
                out[on_device(a)] = augment(stack[on_device(aug)], size, scale, shift, u[a, 4] * (hi - lo) + lo)
            for j in (~aug).nonzero().flatten().tolist():
                out[sel[j]] = fit_square(stack[j].cpu(), size).to(dev).float() / 255.0
        captions = []
        for i, c in zip(items.tolist(), u[:, 0].tolist()):
            options = self._data.captions[i]
            captions.append(options[min(int(c * len(options)), len(options) - 1)])
        return normalize(out, self.mean, self.std), self._tokenize(captions)

    def _tokenize(self, captions: list[str]) -> torch.Tensor:
        """open_clip's SimpleTokenizer maps each caption to its own row: rows are cached per caption (the same
        tensor, a tenth of the batch time at 1,024 rows). Other tokenizers are called as they are."""
        from open_clip.tokenizer import SimpleTokenizer

        if not isinstance(self.tokenizer, SimpleTokenizer) or not captions:
            return self.tokenizer(captions)
        missing = list(dict.fromkeys(c for c in captions if c not in self._tokens))
        if missing:
            self._tokens.update(zip(missing, self.tokenizer(missing)))
        return torch.stack([self._tokens[c] for c in captions])

    # ------------------------------------------------------------------------------------------ prefetching
    def to(self, device: str | torch.device) -> "PairSource":
        """Keep the uint8 image stacks on ``device`` and crop, resize and normalise there (a GPU builds a batch
        in milliseconds; CPU workers would need many cores at 224 px). The draws stay on the CPU generators."""
        self.device = torch.device(device)
        self._stacks = {side: stack.to(self.device) for side, stack in self._stacks.items()}
        return self

    def batches(self, steps: range, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, *,
                workers: int = 0, pin_memory: bool = False) -> Iterable[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """``batch(step, ...)`` for each step in ``steps``, in order. With ``workers`` > 0 (and CPU stacks) the
        batches are built ahead in that many forked worker processes (a DataLoader over step indices), so the
        trainer does not wait for them; each is still the pure function :meth:`batch` computes."""
        if workers <= 0 or self.device.type != "cpu":
            return (self.batch(step, batch_size, seed, rank, world_size) for step in steps)
        return torch.utils.data.DataLoader(
            _StepBatches(self, batch_size, seed, rank, world_size), sampler=list(steps), batch_size=None,
            num_workers=workers, pin_memory=pin_memory, prefetch_factor=2,
            multiprocessing_context="fork", collate_fn=_keep,
            # its own generator: a DataLoader draws its workers' base seed from the global torch RNG, which
            # would move the trainer's stream (the auto stage's gate samples) and break exact resume
            generator=torch.Generator().manual_seed(0))


class _StepBatches(torch.utils.data.Dataset):
    """Step index -> that step's batch (what a prefetching DataLoader's workers compute)."""

    def __init__(self, source: PairSource, batch_size: int, seed: int, rank: int, world_size: int):
        self.source, self.args = source, (batch_size, seed, rank, world_size)

    def __getitem__(self, step: int):
        return self.source.batch(step, *self.args)


def _keep(batch):
    return batch


# ------------------------------------------------------------------------------------------------- paper
def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace-expand shard specs (``a/{000000..000099}.tar``; several joined by ``::``), as webdataset does."""
    from webdataset.shardlists import expand_urls as wds_expand

    return wds_expand(urls) if isinstance(urls, str) else [u for spec in urls for u in wds_expand(spec)]


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


class _Collate:
    """Stack images, tokenize captions, keep keys (picklable for loader workers)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples):
        images, texts, keys = zip(*samples)
        return torch.stack(list(images)), self.tokenizer(list(texts)), list(keys)


def _has_caption(sample) -> bool:
    ok = bool(" ".join(str(sample[1]).split()))
    if not ok:
        log.warning("skipping sample %s: empty caption", sample[2])
    return ok


def stream_webdataset(urls: str | Sequence[str], batch_size: int, preprocess: Callable, tokenizer: Callable,
                      seed: int, rank: int = 0, world_size: int = 1, workers: int = 2, shuffle_buffer: int = 2000,
                      epoch: int = 0, num_batches: int | None = None
                      ) -> Iterable[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """LAION-style shards (img2dataset: jpg/png/webp + txt) for this rank, as batches of (images, tokens, keys).

    Shards are split over ranks (``rank::world_size``) and then over loader workers, and shuffled per
    ``(seed, epoch)``; samples pass a shuffle buffer. Without ``num_batches`` this is one epoch of this rank's
    shards; with it, exactly ``num_batches`` batches, continuing into epochs ``epoch+1, ...`` as needed. Under
    DDP pass ``num_batches`` so that every rank takes the same number of steps. Missing local shards are an
    error up front; an undecodable image or empty caption inside a shard is skipped with a warning (web data
    has some; img2dataset shards record their own failures)."""
    shards = expand_urls(urls)
    if not shards:
        raise TinyCLIPError(f"no shards in {urls!r}")
    missing = [u for u in shards if _is_local(u) and not Path(u).is_file()]
    if missing:
        raise TinyCLIPError(f"missing shard {missing[0]} ({len(missing)} of {len(shards)} missing); check the "
                            f"training data path")
    if len(shards) < world_size * max(1, workers):
        raise TinyCLIPError(f"{len(shards)} shards cannot feed {world_size} rank(s) x {max(1, workers)} worker(s); "
                            f"use fewer workers or more shards")
    if num_batches is not None and num_batches <= 0:
        raise TinyCLIPError(f"num_batches must be positive, got {num_batches}")
    args = (shards[rank::world_size], batch_size, preprocess, tokenizer, seed, rank, workers, shuffle_buffer)
    if num_batches is None:
        return _epoch_loader(*args, epoch)
    return _fixed_length(args, epoch, num_batches)


def _fixed_length(args, epoch: int, num_batches: int):
    served = 0
    while True:
        empty = True
        for batch in _epoch_loader(*args, epoch):
            empty = False
            yield batch
            served += 1
            if served == num_batches:
                return
        if empty:
            raise TinyCLIPError("the training shards yielded no complete batch; check the data or the batch size")
        epoch += 1


def _epoch_loader(mine: list[str], batch_size: int, preprocess, tokenizer, seed: int, rank: int, workers: int,
                  shuffle_buffer: int, epoch: int):
    import webdataset as wds

    mine = list(mine)
    random.Random(seed_of("shards", seed, epoch, rank)).shuffle(mine)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(mine),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(shuffle_buffer, rng=random.Random(seed_of("samples", seed, epoch, rank))),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.to_tuple("jpg;png;jpeg;webp", "txt", "__key__", handler=wds.warn_and_continue),
        wds.select(_has_caption),
        wds.map_tuple(preprocess, str, str),
        wds.batched(batch_size, collation_fn=_Collate(tokenizer), partial=False),
    )
    if workers <= 0:
        return pipeline
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=False)


class StreamSource:
    """Batches streamed from webdataset shards (LAION-style, the paper profile) behind PairSource's ``batch``.

    A stream is not a function of the step: batches come in shard order, and a resumed run restarts the stream
    at the epoch its step falls in, so resumption is statistically equivalent but not sample-exact (the
    in-memory profiles are exact). Epoch length comes from ``sizes.json`` when the shards have one."""

    def __init__(self, root: Path, image_size: int, augment: bool, tokenizer: Any, mean: Sequence[float],
                 std: Sequence[float], workers: int):
        import open_clip

        folder = root / "train" if (root / "train").is_dir() else root
        self.shards = sorted(str(p) for p in folder.glob("*.tar"))
        if not self.shards:
            raise TinyCLIPError(f"no webdataset shards (*.tar) in {folder}; give the training shards' folder")
        sizes = folder / "sizes.json"
        self.epoch_samples = sum(json.loads(sizes.read_text()).values()) if sizes.is_file() else None
        # the official train transform: RandomResizedCrop(scale 0.9-1.0, bicubic), normalise
        self.preprocess = open_clip.image_transform(image_size, is_train=augment, mean=mean, std=std)
        self.tokenizer, self.workers = tokenizer, workers
        self.iterator, self.epoch = None, 0

    def _start(self, epoch: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.epoch = epoch
        self.iterator = iter(stream_webdataset(self.shards, batch_size // world_size, self.preprocess,
                                               self.tokenizer, seed, rank, world_size, self.workers, epoch=epoch))

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if self.iterator is None:
            epoch = step * batch_size // self.epoch_samples if self.epoch_samples else 0
            self._start(epoch, batch_size, seed, rank, world_size)
        for _ in range(2):
            try:
                return next(self.iterator)
            except StopIteration:  # the epoch is over: the next one reshuffles the shards
                self._start(self.epoch + 1, batch_size, seed, rank, world_size)
        raise TinyCLIPError(f"the shards in {Path(self.shards[0]).parent} yield no full batch of {batch_size}")

    def batches(self, steps: range, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, *,
                workers: int = 0, pin_memory: bool = False) -> Iterable[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """The stream for ``steps``, read ahead by a thread (and pinned) while this stream's own loader workers
        decode; ``workers`` is unused here (the source has its own)."""
        return read_ahead((self.batch(step, batch_size, seed, rank, world_size) for step in steps),
                          depth=2, pin_memory=pin_memory)


def read_ahead(batches: Iterable[tuple], depth: int = 2, pin_memory: bool = False) -> Iterable[tuple]:
    """Iterate ``batches`` in a background thread, ``depth`` items ahead (tensors pinned if asked); an error
    in the thread is raised in the reader."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work() -> None:
        try:
            for batch in batches:
                items.put(tuple(t.pin_memory() if pin_memory and isinstance(t, torch.Tensor) else t for t in batch))
        except BaseException as exc:  # noqa: BLE001 — handed to the reader, which stops there
            items.put(exc)
            return
        items.put(done)

    threading.Thread(target=work, daemon=True, name="tinyclip-read-ahead").start()
    while (item := items.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item

