"""TensorBoard extras: hyperparameters for the HParams tab and a confusion-matrix image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


def log_hparams(writer: SummaryWriter, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
    """Write the run's hyperparameters and final metrics into the run's own event file,
    so runs pointed at together (`--logdir saved/`) compare in the HParams tab."""
    clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
    experiment, session_start, session_end = hparams(clean, dict(metrics))
    file_writer = writer._get_file_writer()
    for summary in (experiment, session_start, session_end):
        file_writer.add_summary(summary, step)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, step)


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


def log_histograms(writer: SummaryWriter, model: torch.nn.Module, step: int) -> None:
    """Histograms of every parameter and of its last gradient."""
    for name, parameter in model.named_parameters():
        writer.add_histogram(f"parameters/{name}", parameter.detach().float().cpu(), step)
        if parameter.grad is not None:
            writer.add_histogram(f"gradients/{name}", parameter.grad.detach().float().cpu(), step)
