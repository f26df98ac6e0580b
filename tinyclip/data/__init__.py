"""Data for the reproduction (docs/data.md): building the profiles' data sets and loading them.

* :func:`build` / ``tinyclip data build``: the smoke (synthetic) or mini (registry packages) data set as
  webdataset shards plus clip-benchmark evaluation sets and a data card (:mod:`.build`, :mod:`.card`).
* :class:`PairSource`: the in-memory, deterministic training loader (every batch a pure function of
  ``(seed, step)``), and :func:`stream_webdataset` for the paper profile's LAION-style shards (:mod:`.loader`).
"""
from .build import build, is_built
from .card import format_card, load_card
from .loader import PairSource, StreamSource, TrainDataSpec, stream_webdataset
from .profiles import DEFAULT_WEIGHTS, EVAL_SETS, PROFILES, DataProfile, cache_dir, data_root, get_profile, profile_dir

__all__ = ["DEFAULT_WEIGHTS", "EVAL_SETS", "PROFILES", "DataProfile", "PairSource", "StreamSource", "TrainDataSpec", "build",
           "cache_dir", "data_root", "format_card", "get_profile", "is_built", "load_card", "profile_dir",
           "stream_webdataset"]
