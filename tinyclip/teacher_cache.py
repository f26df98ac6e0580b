"""Teacher-embedding cache: pay for the teacher's forward pass once per sample (paper §3.3 training, made cheap).

Affinity mimicking (paper §3.1) only needs the teacher's L2-normalised image and text embeddings and its logit
scale. When every sample comes in a fixed set of views (:class:`tinyclip.data.TrainDataSpec` ``fixed_views``: each
view fixes the sample's augmentation, or none when augmentation is off, *and* its caption), those embeddings are a
pure function of the view id ``"key#v3"``, so they can be stored and looked up instead of recomputed — the idea behind MobileCLIP's "reinforced" data sets (Vasu et al., CVPR 2024). On a CPU
the teacher forward is often the larger half of a distillation step; with a cache many student arms and seeds
share one teacher pass.

Storage: a folder with ``meta.json`` (identity, dim, the teacher's exponentiated logit scale), ``ids.json``
(the sample ids, one per row: ``"key"``, or ``"key#v3"`` per fixed augmentation view, as
:meth:`tinyclip.data.PairSource.sample_ids` lists them) and three ``.npy`` files opened as memory maps: ``image``
and ``text`` ``[rows, dim]`` float32 and ``filled`` ``[rows]`` uint8. Rows are filled lazily, on first sight, from a forward pass over the whole batch (so the stored values
are exactly what the uncached run computes for that batch); ``filled`` is set only after its row's values are
written, so a concurrent reader (a parallel arm, another DDP rank) never sees half a row. Creation is atomic
(temporary folder, then rename).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import faults
from .errors import TinyCLIPError
from .runs import config_hash

META = "meta.json"
IDS = "ids.json"
_ARRAYS = ("image", "text", "filled")


class TeacherEmbeddingCache:
    """Normalised teacher embeddings per sample id, plus the teacher's logit scale; see the module docstring."""

    def __init__(self, path: Path, meta: dict[str, Any], writable: bool = True):
        self.path = Path(path)
        self.meta = meta
        self.ids: list[str] = json.loads((self.path / IDS).read_text())
        self.row = {sid: i for i, sid in enumerate(self.ids)}
        mode = "r+" if writable else "r"
        self.image = np.load(self.path / "image.npy", mmap_mode=mode)
        self.text = np.load(self.path / "text.npy", mmap_mode=mode)
        self.filled = np.load(self.path / "filled.npy", mmap_mode=mode)
        self.writable = writable
        self.hits = 0
        self.misses = 0

    # construction ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, ids: Sequence[str], dim: int, logit_scale: float,
               identity: dict[str, Any]) -> "TeacherEmbeddingCache":
        """Make an empty cache (atomically) with one row per sample id. ``identity`` says whose embeddings of
        what data these are."""
        path = Path(path)
        ids = [str(i) for i in ids]
        capacity = len(ids)
        if capacity < 1 or dim < 1 or len(set(ids)) != capacity:
            raise TinyCLIPError(f"teacher cache needs ≥ 1 unique sample ids and dim ≥ 1, got {capacity} ids "
                                f"({len(set(ids))} unique) and dim {dim}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            for name, shape, dtype in (("image", (capacity, dim), np.float32), ("text", (capacity, dim), np.float32),
                                       ("filled", (capacity,), np.uint8)):
                np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape).flush()
            meta = {"cache_id": config_hash(identity), "capacity": capacity, "dim": dim,
                    "logit_scale": float(logit_scale), "identity": identity}
            (tmp / IDS).write_text(json.dumps(ids))
            (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            try:
                os.rename(tmp, path)
            except OSError:  # somebody else created it first (a parallel arm): use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path, writable: bool = True) -> "TeacherEmbeddingCache":
        path = Path(path)
        meta_path = path / META
        if not meta_path.is_file() or not (path / IDS).is_file() or \
                any(not (path / f"{n}.npy").is_file() for n in _ARRAYS):
            raise TinyCLIPError(f"{path} is not a teacher embedding cache (meta.json, ids.json, "
                                "image/text/filled.npy); "
                                "build it with the trainer's teacher_cache option or tinyclip.teacher_cache")
        try:
            meta = json.loads(meta_path.read_text())
            return cls(path, meta, writable=writable and os.access(path / "image.npy", os.W_OK))
        except (OSError, ValueError) as exc:
            raise TinyCLIPError(f"teacher embedding cache {path} is unreadable ({exc}); delete it to rebuild") \
                from None

    @classmethod
    def open_or_create(cls, path: str | Path, **kwargs: Any) -> "TeacherEmbeddingCache":
        path = Path(path)
        cache = cls.open(path) if (path / META).is_file() else cls.create(path, **kwargs)
        if cache.meta["cache_id"] != config_hash(kwargs["identity"]) or cache.ids != list(kwargs["ids"]):
            raise TinyCLIPError(f"teacher cache {path} holds other embeddings (identity differs); delete it")
        return cache

    # properties --------------------------------------------------------------------------------------------
    @property
    def cache_id(self) -> str:
        return self.meta["cache_id"]

    @property
    def capacity(self) -> int:
        return int(self.meta["capacity"])

    @property
    def logit_scale(self) -> float:
        return float(self.meta["logit_scale"])

    def filled_count(self) -> int:
        return int(np.count_nonzero(self.filled))

    # lookup ------------------------------------------------------------------------------------------------
    def rows(self, ids: Sequence[str]) -> np.ndarray:
        try:
            return np.fromiter((self.row[i] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise TinyCLIPError(f"sample id {exc.args[0]!r} is not in teacher cache {self.path}; it was built "
                                "for another data set or number of views") from None

    def get(self, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Stored (image, text) rows for sample ``ids``, or None if any row is missing."""
        keys = self.rows(ids)
        if not bool(np.all(self.filled[keys])):
            return None
        return torch.from_numpy(np.array(self.image[keys])), torch.from_numpy(np.array(self.text[keys]))

    def put(self, ids: Sequence[str], image: torch.Tensor, text: torch.Tensor) -> None:
        """Store the rows of sample ``ids`` (values first, then the filled flags)."""
        if not self.writable:
            raise TinyCLIPError(f"teacher cache {self.path} is read-only and lacks some samples")
        keys = self.rows(ids)
        self.image[keys] = image.detach().float().cpu().numpy()
        self.text[keys] = text.detach().float().cpu().numpy()
        faults.point("teacher-cache", str(self.path))   # values stored, flags not yet: a crash here loses nothing
        self.filled[keys] = 1

    def embed(self, ids: Sequence[str],
              compute: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's embeddings: from the cache if every row is there, else ``compute()`` on the whole batch
        (the same values an uncached run gets) and the missing rows are stored."""
        found = self.get(ids)
        if found is not None:
            self.hits += 1
            return found
        if compute is None:
            missing = int(np.count_nonzero(self.filled[self.rows(ids)] == 0))
            raise TinyCLIPError(f"teacher cache {self.path} lacks {missing} samples of this batch and there is no "
                                "teacher model to compute them; rebuild the cache over the whole data set")
        self.misses += 1
        image, text = compute()
        new = self.filled[self.rows(ids)] == 0  # rows already stored stay as they are (a reader may read them)
        mask = torch.from_numpy(new).to(image.device)
        self.put([i for i, n in zip(ids, new) if n], image[mask], text[mask])
        return image, text

    def flush(self) -> None:
        for array in (self.image, self.text, self.filled):
            if isinstance(array, np.memmap):
                array.flush()


def prefill(cache: TeacherEmbeddingCache, embed: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
            data: Any, batch_size: int = 256, device: str = "cpu") -> int:
    """Fill every missing row in one pass (instead of lazily during training): ``data.by_ids(ids)`` gives the
    (images, tokens) of sample ids, ``embed(images, tokens)`` the normalised teacher embeddings. This is how an
    external teacher (one that is not an open_clip model, e.g. the LiT towers) becomes a ``teacher: {embeddings:
    DIR}`` for a recipe. Returns the number of rows filled."""
    from tqdm.auto import tqdm

    missing = [sid for sid, filled in zip(cache.ids, cache.filled) if not filled]
    for start in tqdm(range(0, len(missing), batch_size), desc="teacher embeddings", unit="batch", leave=False):
        chunk = missing[start:start + batch_size]
        images, tokens = data.by_ids(chunk)
        with torch.no_grad():
            image, text = embed(images.to(device), tokens.to(device))
        cache.put(chunk, image, text)
    cache.flush()
    return len(missing)
