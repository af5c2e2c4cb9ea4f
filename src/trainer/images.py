"""Images the loggers show: a grid of a batch, a confusion matrix, a table of text."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

# A confusion matrix's cell in pixels while its counts fit in it as text; with more
# classes the cells shrink so the image stays about this wide.
CELL = 24
MATRIX_PIXELS = 960


def confusion_image(matrix: list[list[int]], row_labels: list[str] | None = None) -> torch.Tensor:
    """A (3, H, W) uint8 heat map of a confusion matrix (rows: true class), each row
    normalised. Rows are labelled with `row_labels` (by default their index), columns
    with their index; cells show their counts. With more classes than fit at full size
    the cells shrink and the text is left out, so the image stays bounded.

    Drawn with PIL (a torchvision dependency), so no plotting library is needed.
    """
    from PIL import Image, ImageDraw

    n = len(matrix)
    row_labels = row_labels or [str(i) for i in range(n)]
    cell = CELL if n * CELL <= MATRIX_PIXELS else max(1, MATRIX_PIXELS // n)
    text = cell == CELL
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(max(probe.textlength(label) for label in row_labels)) + 8 if text else 0
    top = CELL if text else 0
    image = Image.new("RGB", (left + n * cell, top + n * cell), "white")
    draw = ImageDraw.Draw(image)
    for i, row in enumerate(matrix):
        total = max(sum(row), 1)
        if text:
            draw.text((4, top + i * cell + 6), row_labels[i], fill="black")
            draw.text((left + i * cell + 6, 4), str(i), fill="black")
        for j, count in enumerate(row):
            share = count / total
            shade = int(255 * (1 - share))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255))
            if count and text:
                draw.text((x0 + 2, y0 + 6), str(count) if count < 1000 else f"{count // 1000}k", fill="white" if share > 0.5 else "black")
    return _to_tensor(image)


def table_image(rows: list[list[str]], title: str = "") -> torch.Tensor:
    """A (3, H, W) uint8 picture of a table of text: `rows[0]` is the header; the first
    column is left-aligned, the others right-aligned."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [int(max(probe.textlength(row[c]) for row in rows)) + 16 for c in range(len(rows[0]))]
    line = 16
    top = line if title else 0
    image = Image.new("RGB", (max(sum(widths), int(probe.textlength(title)) + 8) + 8, top + line * len(rows) + 8), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((4, 4), title, fill="black")
    for r, row in enumerate(rows):
        y, x = top + 4 + r * line, 4
        for c, cell in enumerate(row):
            offset = 0 if c == 0 else widths[c] - 8 - probe.textlength(cell)
            draw.text((x + offset, y), cell, fill="black")
            x += widths[c]
        if r == 0:
            draw.line([(4, y + line - 2), (sum(widths), y + line - 2)], fill="gray")
    return _to_tensor(image)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image as a (3, H, W) uint8 tensor."""
    width, height = image.size
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3).permute(2, 0, 1)


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
