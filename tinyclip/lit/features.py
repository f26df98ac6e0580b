"""Frozen-tower features, computed once per training sample.

The towers never change, so their pooled outputs are cached (:class:`FeatureCache`, one safetensors file)
and the heads are trained on the cache alone. This module also reads the built data set's training shards
into :class:`Sample` items (:func:`training_samples`), optionally keeping a hash-chosen subset of a source.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..errors import TinyCLIPError
from .towers import DEFAULT_IMAGE_SIZE, Towers, image_transform


@dataclass
class FeatureCache:
    """Frozen-tower features of a set of samples: one image feature per sample id, one text feature per
    *unique* caption. A sample may have several captions (templated emoji / Fashion-MNIST captions):
    sample ``i``'s captions are ``caption_index[caption_offsets[i]:caption_offsets[i + 1]]`` (rows of
    ``text`` / ``texts``)."""
    ids: list[str]
    sources: list[str]
    image: torch.Tensor            # [N, image_dim] float32
    texts: list[str]               # U unique captions
    text: torch.Tensor             # [U, text_dim] float32
    caption_index: torch.Tensor    # [P] int64, P = total captions over samples
    caption_offsets: torch.Tensor  # [N + 1] int64
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def caption_counts(self) -> torch.Tensor:
        return self.caption_offsets[1:] - self.caption_offsets[:-1]

    def first_caption(self) -> torch.Tensor:
        """Row in ``texts`` of each sample's first caption, ``[N]``."""
        return self.caption_index[self.caption_offsets[:-1]]

    def captions_of(self, row: int) -> list[str]:
        lo, hi = int(self.caption_offsets[row]), int(self.caption_offsets[row + 1])
        return [self.texts[j] for j in self.caption_index[lo:hi].tolist()]

    def random_caption(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One caption (row in ``texts``) per sample, uniformly among the sample's captions."""
        counts = self.caption_counts()[rows]
        pick = (torch.rand(len(rows), generator=generator) * counts).long().clamp_max(counts - 1)
        return self.caption_index[self.caption_offsets[rows] + pick]

    def row_of(self) -> dict[str, int]:
        return {sid: i for i, sid in enumerate(self.ids)}

    def save(self, path: str | Path) -> None:
        """One safetensors file (written atomically); ids, sources, captions and meta live in its header."""
        from safetensors.torch import save
        from ..runs import atomic_write_bytes
        tensors = {"image": self.image.to(torch.float16).contiguous(),  # pooled activations: fp16 is ample
                   "text": self.text.float().contiguous(), "caption_index": self.caption_index.long().contiguous(),
                   "caption_offsets": self.caption_offsets.long().contiguous()}
        header = {"ids": json.dumps(self.ids), "sources": json.dumps(self.sources),
                  "texts": json.dumps(self.texts), "meta": json.dumps(self.meta)}
        atomic_write_bytes(Path(path), save(tensors, metadata=header))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureCache":
        from safetensors import safe_open
        path = Path(path)
        if not path.is_file():
            raise TinyCLIPError(f"no LiT feature cache at {path}; build it with tinyclip.lit.cache_features")
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata()
            t = {k: handle.get_tensor(k) for k in handle.keys()}
        return cls(json.loads(header["ids"]), json.loads(header["sources"]), t["image"].float(),
                   json.loads(header["texts"]), t["text"].float(), t["caption_index"].long(),
                   t["caption_offsets"].long(), json.loads(header["meta"]))


def _batched(iterable: Iterable, size: int) -> Iterable[list]:
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def encode_texts(towers: Towers, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Text-tower features of ``texts``, batched by length so that little padding is computed."""
    from tqdm.auto import tqdm
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), towers.text_dim)
    for rows in tqdm(list(_batched(order, batch_size)), desc="LiT text features", disable=not progress,
                     leave=False):
        out[rows] = towers.text(towers.tokenizer([texts[i] for i in rows])).float()
    return out


@dataclass
class Sample:
    """What the feature cache needs of one training or evaluation item."""
    id: str
    image: Any            # a PIL image
    captions: Sequence[str]
    source: str = ""


@torch.no_grad()
def cache_features(towers: Towers, samples: Iterable[Sample], image_size: int = DEFAULT_IMAGE_SIZE,
                   batch_size: int = 64, total: int | None = None, desc: str = "LiT image features",
                   progress: bool = True, meta: dict[str, Any] | None = None) -> FeatureCache:
    """Run the frozen towers once over ``samples``: un-augmented images at ``image_size`` through the
    teacher's eval transform, every stored caption through the text tower (each unique text once)."""
    from tqdm.auto import tqdm
    transform = image_transform(image_size)
    ids: list[str] = []
    sources: list[str] = []
    captions: list[list[str]] = []
    chunks: list[torch.Tensor] = []
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, mininterval=2.0)
    for batch in _batched(samples, batch_size):
        pixels = torch.stack([transform(s.image) for s in batch]).contiguous(memory_format=torch.channels_last)
        chunks.append(towers.image(pixels).float())
        for s in batch:
            caps = [str(c) for c in ([s.captions] if isinstance(s.captions, str) else s.captions)]
            if not caps:
                raise TinyCLIPError(f"sample {s.id!r} has no caption; every LiT training sample needs one")
            ids.append(str(s.id))
            sources.append(s.source)
            captions.append(caps)
        bar.update(len(batch))
    bar.close()
    if len(set(ids)) != len(ids):
        raise TinyCLIPError("duplicate sample ids in the LiT feature cache input; ids must be unique")
    image_seconds = time.perf_counter() - start
    texts = sorted({c for caps in captions for c in caps})
    position = {t: i for i, t in enumerate(texts)}
    start = time.perf_counter()
    text = encode_texts(towers, texts, progress=progress) if texts else torch.zeros(0, towers.text_dim)
    counts = torch.tensor([0] + [len(c) for c in captions], dtype=torch.long)
    info = {"image_size": image_size, "towers": towers.name, "image_seconds": round(image_seconds, 2),
            "text_seconds": round(time.perf_counter() - start, 2), **(meta or {})}
    return FeatureCache(ids, sources, torch.cat(chunks) if chunks else torch.zeros(0, towers.image_dim), texts,
                        text, torch.tensor([position[c] for caps in captions for c in caps], dtype=torch.long),
                        counts.cumsum(0), info)


def keep_fraction(sample_id: str, fraction: float, salt: str = "lit-subset") -> bool:
    """Deterministic subset membership by a hash of the id (the same ids at every build)."""
    return int(hashlib.sha256(f"{salt}:{sample_id}".encode()).hexdigest()[:8], 16) < fraction * 2 ** 32


def training_samples(data_dir: str | Path, source_fraction: dict[str, float] | None = None) -> tuple[list[Sample], dict]:
    """Every training sample of a built data set (through the trainer's own shard reader), as
    :class:`Sample` with its webdataset ``__key__`` as id and all its stored captions; ``source_fraction``
    keeps a hash-chosen fraction of a source's ids (documented in the returned coverage)."""
    import io

    from PIL import Image

    from ..data.loader import _train_dir, read_train_shards
    source_fraction = source_fraction or {}
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for key, jpg, captions, meta in read_train_shards(_train_dir(data_dir)):
        source = str(meta.get("source", ""))
        seen[source] = seen.get(source, 0) + 1
        if source in source_fraction and not keep_fraction(key, source_fraction[source]):
            continue
        samples.append(Sample(key, Image.open(io.BytesIO(jpg)), captions, source))
    kept: dict[str, int] = {}
    for s in samples:
        kept[s.source] = kept.get(s.source, 0) + 1
    coverage = {src: {"available": n, "cached": kept.get(src, 0)} for src, n in sorted(seen.items())}
    return samples, coverage
