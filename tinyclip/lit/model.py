"""The LiT teacher itself: frozen towers + trained projection heads + a learned temperature.

:class:`LiTTeacher` speaks open_clip's interface (``encode_image``, ``encode_text``, ``forward``), so the
project's evaluation runs on it unchanged. Only its heads and logit scale are saved
(:meth:`LiTTeacher.save_heads`); :func:`load_lit_teacher` puts them back onto the packaged towers.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TinyCLIPError
from .towers import DEFAULT_IMAGE_SIZE, Towers, image_transform, load_pretrained_towers


def make_head(in_dim: int, out_dim: int, kind: str = "linear", hidden_dim: int | None = None) -> nn.Module:
    """Projection head: ``"linear"`` (LiT's choice) or ``"mlp"`` (Linear-GELU-Linear)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        hidden = hidden_dim or max(in_dim, out_dim)
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    raise TinyCLIPError(f"unknown LiT head kind {kind!r}; use 'linear' or 'mlp'")


def _project(head: nn.Module, features: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``head(features)``, L2-normalised on request (both heads are applied the same way)."""
    emb = head(features)
    return F.normalize(emb, dim=-1) if normalize else emb


@dataclass
class LiTConfig:
    """What defines a LiT teacher besides its (fixed) towers."""
    embed_dim: int = 256
    head: str = "linear"
    hidden_dim: int | None = None
    image_size: int = DEFAULT_IMAGE_SIZE
    init_temperature: float = 0.07   # CLIP's initial 1/logit_scale
    max_logit_scale: float = 100.0   # CLIP clamps the scale at 100


class LiTTeacher(nn.Module):
    """Frozen image and text towers + trained projection heads + a learned logit scale.

    The interface is open_clip's: ``encode_image(images)`` (images from :attr:`preprocess`),
    ``encode_text(tokens)`` (tokens from :attr:`tokenizer`, a packed ``[n, 2, L]`` LongTensor),
    ``forward(images, tokens) -> (image_emb, text_emb, logit_scale.exp())`` with L2-normalised embeddings.
    The heads can also be applied to cached tower features (:meth:`project_image`, :meth:`project_text`).
    """

    def __init__(self, towers: Towers, config: LiTConfig | None = None):
        super().__init__()
        self.config = config = config or LiTConfig()
        self.towers_name = towers.name
        self.image_tower = towers.image.eval().requires_grad_(False)
        self.text_tower = towers.text.eval().requires_grad_(False)
        self.tokenizer = towers.tokenizer
        self.preprocess = image_transform(config.image_size)
        self.image_head = make_head(towers.image_dim, config.embed_dim, config.head, config.hidden_dim)
        self.text_head = make_head(towers.text_dim, config.embed_dim, config.head, config.hidden_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    def train(self, mode: bool = True) -> "LiTTeacher":
        super().train(mode)
        # Locked towers stay in eval mode: BatchNorm statistics and dropout are part of what is frozen.
        self.image_tower.eval()
        self.text_tower.eval()
        return self

    # -- frozen towers --------------------------------------------------------------------------------
    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tower(images.contiguous(memory_format=torch.channels_last)).float()

    @torch.no_grad()
    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_tower(tokens).float()

    # -- heads ----------------------------------------------------------------------------------------
    def project_image(self, features: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return _project(self.image_head, features, normalize)

    def project_text(self, features: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return _project(self.text_head, features, normalize)

    # -- open_clip interface --------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.project_image(self.image_features(images), normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.project_text(self.text_features(tokens), normalize)

    def forward(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None):
        image_emb = self.encode_image(images, normalize=True) if images is not None else None
        text_emb = self.encode_text(tokens, normalize=True) if tokens is not None else None
        return image_emb, text_emb, self.logit_scale.exp()

    # -- persistence (heads only: the towers come from their packages) ---------------------------------
    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if not k.startswith(("image_tower.", "text_tower."))}

    def save_heads(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save
        from ..runs import atomic_write_bytes
        meta = {"config": asdict(self.config), "towers": self.towers_name, **(extra or {})}
        atomic_write_bytes(Path(path), save(self.heads_state_dict(), metadata={"lit": json.dumps(meta)}))


def read_heads_meta(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["lit"])


def load_lit_teacher(heads_path: str | Path, towers: Towers | None = None) -> LiTTeacher:
    """A trained LiT teacher: its heads from ``heads_path`` (written by :meth:`LiTTeacher.save_heads`),
    its towers from the packages (or the given ``towers``, which must be the ones the heads were trained on)."""
    from safetensors.torch import load_file
    path = Path(heads_path)
    if not path.is_file():
        raise TinyCLIPError(f"no LiT heads at {path}; build the LiT teacher first (tinyclip.lit.build_lit_teacher)")
    meta = read_heads_meta(path)
    towers = towers or load_pretrained_towers()
    if meta.get("towers") != towers.name:
        raise TinyCLIPError(f"LiT heads at {path} were trained on towers {meta.get('towers')!r}, "
                            f"not {towers.name!r}")
    teacher = LiTTeacher(towers, LiTConfig(**meta["config"]))
    missing, unexpected = teacher.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in missing if not k.startswith(("image_tower.", "text_tower."))]
    if missing or unexpected:
        raise TinyCLIPError(f"LiT heads at {path} do not fit the configured teacher "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); rebuild them")
    return teacher.eval()
