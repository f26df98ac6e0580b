"""Image operations shared by training and evaluation, in torch so that they are exact and seedable.

The plain (evaluation) path is :func:`fit_square_pil`: pad to a square with white (the images are composited
on white), then resize to the model's input size. The training loader caches images already fitted to at most
the input size and applies the same function at batch time, so ``augment=False`` training batches equal the
evaluation preprocessing bit for bit. :func:`augment` is the feasibility study's augmentation
(docs/data.md §2-3): random affine (scale 0.75-1.05, shift +-10%) and brightness jitter
(0.8-1.2), with every parameter given explicitly so the caller decides where randomness comes from. (The
study's random light background is moot: images are stored composited on white.)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SCALE_RANGE = (0.75, 1.05)
SHIFT_RANGE = 0.10        # fraction of the image side, each axis
BRIGHTNESS_RANGE = (0.8, 1.2)


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 tensor [3, H, W] (RGB)."""
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def fit_square_pil(img: Image.Image, side: int) -> Image.Image:
    """Centre an RGB image on a white square, then resize it to ``side`` (PIL bilinear, antialiased when
    shrinking). PIL rather than torch: it is single-threaded and fast on thousands of small images."""
    img = img.convert("RGB")
    s = max(img.size)
    if img.width != img.height:
        canvas = Image.new("RGB", (s, s), (255, 255, 255))
        canvas.paste(img, ((s - img.width) // 2, (s - img.height) // 2))
        img = canvas
    return img if s == side else img.resize((side, side), Image.BILINEAR)


def fit_square(img: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, side, side], the same operation as :func:`fit_square_pil`."""
    if img.shape[1] == img.shape[2] == side:
        return img
    return pil_to_uint8(fit_square_pil(Image.fromarray(img.permute(1, 2, 0).numpy()), side))


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float images in [0, 1], [..., 3, H, W] -> (x - mean) / std."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - m) / s


def border_colour(images: torch.Tensor) -> torch.Tensor:
    """Median colour of each image's one-pixel border, [n, 3] in [0, 1] (the background to extend)."""
    x = images.float() / 255.0
    border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
    return border.median(dim=2).values


def augment(images: torch.Tensor, out_size: int, scale: torch.Tensor, shift: torch.Tensor,
            brightness: torch.Tensor) -> torch.Tensor:
    """Random-affine + brightness for a stack of same-sized uint8 squares [n, 3, s, s] -> float [n, 3, out, out].

    ``scale`` [n] zooms about the centre (< 1 shrinks the drawing), ``shift`` [n, 2] moves it by a fraction of
    the side, ``brightness`` [n] multiplies the result. Uncovered area takes the image's border colour: white
    for the drawings (composited on white), black for Fashion-MNIST, so no frame appears that tests never show.
    The parameters may live on the CPU while ``images`` live on an accelerator (the work runs there).
    """
    n = images.shape[0]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = -2.0 * shift / scale[:, None]  # normalised coordinates span 2 per side
    theta, brightness = (t.to(images.device, non_blocking=True) for t in (theta, brightness))
    grid = F.affine_grid(theta, [n, 3, out_size, out_size], align_corners=False)
    x = images.float() / 255.0
    fill = border_colour(images).view(n, 3, 1, 1)
    # Sample (x - fill) with zero padding and add fill back: the area outside the source reads as background.
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return (out * brightness.view(n, 1, 1, 1)).clamp(0.0, 1.0)


class EvalTransform:
    """PIL -> normalised float tensor [3, side, side]: the deterministic evaluation preprocessing (picklable)."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return normalize(pil_to_uint8(fit_square_pil(img, self.image_size)).float() / 255.0, self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size}, mean={self.mean}, std={self.std})"
