"""The LiT teacher's embeddings, handed to the mini teacher's trainer.

:func:`export_teacher_embeddings` writes the final embeddings of every cached training sample by sample id;
:class:`TeacherEmbeddings` reads them back. :func:`fill_teacher_cache` / :func:`make_teacher_cache` turn them
into the trainer's per-(sample, view) :class:`~tinyclip.teacher_cache.TeacherEmbeddingCache`, so the trainer
mimics the LiT affinities without ever running the towers.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import TinyCLIPError
from .features import FeatureCache
from .model import LiTTeacher
from .towers import IMAGE_MEAN, IMAGE_STD


@torch.no_grad()
def export_teacher_embeddings(teacher: LiTTeacher, cache: FeatureCache, path: str | Path,
                              batch_size: int = 4096, extra_meta: dict[str, Any] | None = None) -> Path:
    """Final L2-normalised LiT embeddings of every cached training sample, plus the teacher's logit scale.

    One safetensors file: ``image`` ``[N, D]`` and ``text`` ``[N, D]`` (the sample's first, stored caption)
    in float32, and for samples with several captions ``caption_text`` ``[U, D]`` for every unique caption
    with ``caption_index`` / ``caption_offsets`` as in :class:`FeatureCache`; the header holds ``ids`` (the
    webdataset ``__key__``s), ``texts``, ``logit_scale`` (exponentiated) and ``meta``.
    :func:`fill_teacher_cache` turns it into the trainer's :class:`~tinyclip.teacher_cache.TeacherEmbeddingCache`."""
    from safetensors.torch import save
    from ..runs import atomic_write_bytes
    teacher.eval()
    image = torch.cat([teacher.project_image(cache.image[i:i + batch_size], normalize=True)
                       for i in range(0, len(cache), batch_size)]) if len(cache) else torch.zeros(0, teacher.config.embed_dim)
    caption_text = torch.cat([teacher.project_text(cache.text[i:i + batch_size], normalize=True)
                              for i in range(0, len(cache.texts), batch_size)])
    tensors = {"image": image.float().contiguous(), "text": caption_text[cache.first_caption()].contiguous(),
               "caption_text": caption_text.float().contiguous(), "caption_index": cache.caption_index.contiguous(),
               "caption_offsets": cache.caption_offsets.contiguous()}
    header = {"ids": json.dumps(cache.ids), "texts": json.dumps(cache.texts),
              "logit_scale": repr(float(teacher.logit_scale.detach().exp())),
              "meta": json.dumps({"towers": teacher.towers_name, "config": asdict(teacher.config),
                                  "features": cache.meta, **(extra_meta or {})})}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


@dataclass
class TeacherEmbeddings:
    """What :func:`export_teacher_embeddings` wrote, loaded."""
    ids: list[str]
    image: torch.Tensor
    text: torch.Tensor
    logit_scale: float
    texts: list[str]
    caption_text: torch.Tensor
    caption_index: torch.Tensor
    caption_offsets: torch.Tensor
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> "TeacherEmbeddings":
        from safetensors import safe_open
        if not Path(path).is_file():
            raise TinyCLIPError(f"no LiT teacher embeddings at {path}; build them with tinyclip.lit.build_lit_teacher")
        with safe_open(str(path), framework="pt") as handle:
            h = handle.metadata()
            t = {k: handle.get_tensor(k) for k in handle.keys()}
        return cls(json.loads(h["ids"]), t["image"], t["text"], float(h["logit_scale"]), json.loads(h["texts"]),
                   t["caption_text"], t["caption_index"], t["caption_offsets"], json.loads(h["meta"]))

    def digest(self) -> str:
        """A content hash of the embeddings (the identity of caches made from them)."""
        h = hashlib.sha256()
        for t in (self.image, self.caption_text, self.caption_index, self.caption_offsets):
            h.update(t.contiguous().numpy().tobytes())
        h.update(json.dumps([self.ids, self.texts, self.logit_scale]).encode())
        return h.hexdigest()[:16]

    def text_of(self, captions: Sequence[str]) -> torch.Tensor:
        """Embeddings of caption strings (each must be one of the cached captions)."""
        position = {t: i for i, t in enumerate(self.texts)}
        missing = [c for c in captions if c not in position]
        if missing:
            raise TinyCLIPError(f"caption {missing[0]!r} is not in the LiT teacher embeddings; rebuild them for "
                                "this data set")
        return self.caption_text[[position[c] for c in captions]]


def _caption_strings(texts: Sequence[str]) -> list[str]:
    """A "tokenizer" that returns the captions themselves, to learn which caption the loader picks."""
    return list(texts)


def fill_teacher_cache(embeddings: TeacherEmbeddings, data: Any, path: str | Path,
                       identity: dict[str, Any] | None = None, batch_size: int = 2048, progress: bool = True):
    """Write the LiT embeddings into a :class:`~tinyclip.teacher_cache.TeacherEmbeddingCache` for ``data``
    (a :class:`tinyclip.data.PairSource` with the trainer's sources and ``fixed_views``; its tokenizer,
    image size and augmentation do not matter, see :func:`make_teacher_cache`). Every sample id the loader
    can return (``key#v{j}``) gets the image embedding of the un-augmented image of ``key`` (an augmented
    view is the same picture, and the LiT towers never see it) and the text embedding of exactly the caption
    the loader pairs with that id. Returns the cache."""
    from tqdm.auto import tqdm

    from ..teacher_cache import TeacherEmbeddingCache
    ids = list(data.sample_ids())
    views = int(data.spec.fixed_views)
    row = {sid: i for i, sid in enumerate(embeddings.ids)}
    bases = [sid.partition("#v")[0] for sid in ids]
    missing = [b for b in bases if b not in row]
    if missing:
        raise TinyCLIPError(f"{len(missing)} training samples (e.g. {missing[0]!r}) have no LiT embedding; "
                            "rebuild the LiT teacher over the whole training set")
    counts = embeddings.caption_offsets[1:] - embeddings.caption_offsets[:-1]
    if views == 0 and bool((counts[[row[b] for b in bases]] > 1).any()):
        raise TinyCLIPError("samples with several captions draw a fresh one at every step unless the loader uses "
                            "fixed views; set data.fixed_views > 0 to use cached LiT teacher embeddings")
    identity = {"teacher": "lit", "embeddings": embeddings.digest(), "views": views, **(identity or {})}
    cache = TeacherEmbeddingCache.open_or_create(path, ids=ids, dim=int(embeddings.image.shape[1]),
                                                 logit_scale=embeddings.logit_scale, identity=identity)
    tokenizer = data.tokenizer
    data.tokenizer = _caption_strings
    try:
        for lo in tqdm(range(0, len(ids), batch_size), desc="LiT -> teacher cache", disable=not progress,
                       leave=False, mininterval=2.0):
            chunk = ids[lo:lo + batch_size]
            _, captions = data.by_ids(chunk)
            image = embeddings.image[[row[b] for b in bases[lo:lo + batch_size]]]
            cache.put(chunk, image, embeddings.text_of(captions))
    finally:
        data.tokenizer = tokenizer
    cache.flush()
    return cache


def make_teacher_cache(embeddings_path: str | Path, data_dir: str | Path, out: str | Path, fixed_views: int,
                       sources: Sequence[str] | None = None, progress: bool = True):
    """The trainer's teacher-embedding cache (a folder for recipe ``teacher: {embeddings: DIR}``) from
    exported LiT embeddings, for a loader with ``fixed_views`` views per sample over ``sources`` (default:
    every source in the built data set; ids the trainer never draws do no harm)."""
    from ..data.loader import PairSource, TrainDataSpec, _train_dir
    train = _train_dir(data_dir)
    if sources is None:
        sources = sorted(json.loads((train / "mix.json").read_text())["counts"])
    # Ids and captions do not depend on the image size or augmentation: 8 px, no augmentation is cheapest.
    spec = TrainDataSpec(root=str(train), weights={s: 1.0 for s in sources}, image_size=8, augment=False,
                         fixed_views=fixed_views)
    data = PairSource(spec, _caption_strings, IMAGE_MEAN, IMAGE_STD)
    return fill_teacher_cache(TeacherEmbeddings.load(embeddings_path), data, out, progress=progress)
