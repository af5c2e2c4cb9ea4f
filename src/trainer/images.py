"""Images the loggers show: a grid of a batch, a confusion matrix."""

from __future__ import annotations

import numpy as np
import torch


def confusion_image(matrix: list[list[int]], cell: int = 24) -> torch.Tensor:
    """A (3, H, W) uint8 heat map of a confusion matrix, rows normalised, with counts.

    Drawn with PIL (a torchvision dependency), so no plotting library is needed.
    """
    from PIL import Image, ImageDraw

    n = len(matrix)
    margin = cell  # room for the class indices
    size = margin + n * cell
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for i, row in enumerate(matrix):
        total = max(sum(row), 1)
        draw.text((4, margin + i * cell + 6), str(i), fill="black")
        draw.text((margin + i * cell + 6, 4), str(i), fill="black")
        for j, count in enumerate(row):
            share = count / total
            shade = int(255 * (1 - share))
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255))
            if count:
                draw.text((x0 + 2, y0 + 6), str(count) if count < 1000 else f"{count // 1000}k", fill="white" if share > 0.5 else "black")
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


def image_grid(images: torch.Tensor, columns: int = 8, limit: int = 32) -> torch.Tensor:
    """Up to `limit` images of a (N, C, H, W) batch side by side, each scaled to [0, 1]."""
    images = images[:limit].detach().float().cpu()
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    images = (images - low) / (high - low).clamp_min(1e-8)
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.zeros(c, rows * h, columns * w)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    return grid


def to_hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """A (C, H, W) uint8 or [0, 1] float image as the (H, W, C) uint8 array that image
    libraries take."""
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.cpu().permute(1, 2, 0).numpy()
