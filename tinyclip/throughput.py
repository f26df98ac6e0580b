"""Inference throughput in image-text pairs per second, the official way (docs/official_code.md §6).

The official ``measure_throughput.py`` times ``encode_image`` and ``encode_text`` separately on batches and
reports ``1 / (1/images_per_s + 1/texts_per_s)``. This machine is noisy, so numbers are only compared as ratios
measured side by side in one process (:func:`throughput_table`), interleaving the models round by round so that a
burst of load elsewhere hits all of them alike.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _inputs(model: nn.Module, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    size = getattr(model.visual, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    images = torch.randn(batch_size, 3, height, width, device=device)
    texts = torch.randint(1, 49000, (batch_size, int(model.context_length)), device=device)
    return images, texts


def throughput_table(models: dict[str, nn.Module], batch_size: int = 32, rounds: int = 3, warmup: int = 1,
                     device: str = "cpu", amp: bool = False) -> dict[str, dict[str, float]]:
    """Median images/s, texts/s and pairs/s of each model; rounds interleave the models."""
    dev = torch.device(device)
    inputs = {}
    for name, model in models.items():
        model.to(dev).eval()
        inputs[name] = _inputs(model, batch_size, dev)
    times: dict[str, dict[str, list[float]]] = {n: {"image": [], "text": []} for n in models}
    autocast = torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16, enabled=amp)
    with torch.inference_mode(), autocast:
        for round_index in range(warmup + rounds):
            for name, model in models.items():
                images, texts = inputs[name]
                t_img = _timed(lambda: model.encode_image(images), dev)
                t_txt = _timed(lambda: model.encode_text(texts), dev)
                if round_index >= warmup:
                    times[name]["image"].append(t_img)
                    times[name]["text"].append(t_txt)
    table = {}
    for name, t in times.items():
        images_per_s = batch_size / statistics.median(t["image"])
        texts_per_s = batch_size / statistics.median(t["text"])
        table[name] = {"images_per_s": images_per_s, "texts_per_s": texts_per_s,
                       "pairs_per_s": 1.0 / (1.0 / images_per_s + 1.0 / texts_per_s)}
    return table
