"""Tests for tinyclip.teacher_cache (the storage; the equivalence with an uncached run is in test_train.py)."""
from __future__ import annotations

import pytest
import torch

from tinyclip.errors import TinyCLIPError
from tinyclip.teacher_cache import TeacherEmbeddingCache

IDENTITY = {"teacher": "t", "data": "d"}


IDS = [f"s{i}" for i in range(10)]


def make(tmp_path, dim=3):
    return TeacherEmbeddingCache.create(tmp_path / "cache", ids=IDS, dim=dim, logit_scale=42.0, identity=IDENTITY)


def ids(*numbers):
    return [f"s{n}" for n in numbers]


def test_lazy_fill_computes_each_row_once(tmp_path):
    cache = make(tmp_path)
    calls = []

    def compute(keys):
        def run():
            calls.append(list(keys))
            k = torch.tensor(keys, dtype=torch.float32)[:, None]
            return k * torch.ones(1, 3), -k * torch.ones(1, 3)
        return run

    image, text = cache.embed(ids(1, 4), compute([1, 4]))
    assert image[:, 0].tolist() == [1.0, 4.0] and text[:, 0].tolist() == [-1.0, -4.0]
    # a batch with a new key: the whole batch is computed (as an uncached run would), only key 7 is added
    cache.embed(ids(4, 7), compute([4, 7]))
    image, text = cache.embed(ids(7, 1, 4), None)  # everything stored: no compute needed
    assert image[:, 0].tolist() == [7.0, 1.0, 4.0] and text[:, 0].tolist() == [-7.0, -1.0, -4.0]
    assert calls == [[1, 4], [4, 7]]
    assert (cache.hits, cache.misses, cache.filled_count()) == (1, 2, 3)
    # persisted: a reopened cache (another process) sees the rows and the teacher's logit scale
    cache.flush()
    again = TeacherEmbeddingCache.open(tmp_path / "cache")
    assert again.get(ids(7))[0][0, 0].item() == 7.0 and again.logit_scale == 42.0
    assert again.get(ids(0)) is None


def test_missing_rows_without_a_teacher_and_bad_keys(tmp_path):
    cache = make(tmp_path)
    with pytest.raises(TinyCLIPError, match="lacks 2 samples"):
        cache.embed(ids(0, 1), None)
    with pytest.raises(TinyCLIPError, match="'s10' is not in teacher cache"):
        cache.get(ids(10))


def test_identity_is_checked_and_creation_is_idempotent(tmp_path):
    make(tmp_path)
    same = TeacherEmbeddingCache.open_or_create(tmp_path / "cache", ids=IDS, dim=3, logit_scale=42.0,
                                                identity=IDENTITY)
    assert same.capacity == 10
    with pytest.raises(TinyCLIPError, match="identity differs"):
        TeacherEmbeddingCache.open_or_create(tmp_path / "cache", ids=IDS, dim=3, logit_scale=42.0,
                                             identity={"teacher": "other"})
    # a second create of the same path (a parallel arm that lost the race) opens the existing cache
    assert make(tmp_path).cache_id == same.cache_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    with pytest.raises(TinyCLIPError, match="not a teacher embedding cache"):
        TeacherEmbeddingCache.open(tmp_path)

