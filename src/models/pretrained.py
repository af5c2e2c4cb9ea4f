"""Torchvision backbones for transfer learning, with a head sized for the data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.utils.errors import UserError, one_line


class TorchvisionModel(nn.Module):
    """Any `torchvision.models` classifier (`builder`, e.g. "resnet18"), with:

    - `weights`: null (random init), a torchvision weights name ("DEFAULT",
      "IMAGENET1K_V1", or "ResNet18_Weights.IMAGENET1K_V1"; downloaded by torchvision),
      or the path of a local .pth state_dict;
    - its last Linear layer (the head) replaced by one with `num_outputs` outputs, and
      its first convolution adapted when the data has other than 3 channels;
    - `freeze`: "none", "backbone" (everything but the head) or a list of module
      names (e.g. [conv1, layer1]) whose parameters stay fixed;
    - `backbone_lr_scale`: the backbone's learning rate relative to the head's.
    """

    def __init__(
        self,
        builder: str,
        input_shape: Sequence[int],
        num_outputs: int,
        weights: str | None = None,
        freeze: str | Sequence[str] = "none",
        backbone_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        import torchvision.models as models

        try:
            build = models.get_model_builder(builder)
        except ValueError:
            names = ", ".join(sorted(models.list_models(module=models))[:12])
            raise UserError(f"model.builder={builder!r} is not a torchvision model; e.g. {names}, ...") from None
        enum_weights = _torchvision_weights(builder, weights)
        try:
            self.net = build(weights=enum_weights)
        except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
            raise UserError(
                f"Could not download the {builder} weights {weights!r} (no network?): {one_line(err)}. Fetch "
                f"{enum_weights.url} elsewhere and pass model.weights=/path/to/that/file.pth, or use model.weights=null."
            ) from None
        if weights and _is_path(weights):
            _load_local(self.net, Path(weights))
        self.head_name = _replace_head(self.net, num_outputs)
        _adapt_first_conv(self.net, input_shape[0])
        self.backbone_lr_scale = backbone_lr_scale
        head = {id(p) for p in self.net.get_submodule(self.head_name).parameters()}
        if freeze == "backbone":
            frozen = [p for p in self.net.parameters() if id(p) not in head]
        else:
            frozen = [p for name in self._named(freeze) for p in self.net.get_submodule(name).parameters()]
        for parameter in frozen:
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters only (a frozen backbone takes no optimizer state), the
        backbone with `lr_scale` so it can learn slower than the new head."""
        head = [p for p in self.net.get_submodule(self.head_name).parameters() if p.requires_grad]
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.net.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": head, "lr_scale": 1.0}]
        if backbone:
            groups.append({"params": backbone, "lr_scale": self.backbone_lr_scale})
        return groups

    def _named(self, freeze: str | Sequence[str]) -> list[str]:
        """The module names `freeze` lists ("none": no module), checked to exist."""
        if freeze == "none" or not freeze:
            return []
        names = [freeze] if isinstance(freeze, str) else list(freeze)
        known = {name for name, _ in self.net.named_modules() if name}
        unknown = [name for name in names if name not in known]
        if unknown:
            top = ", ".join(name for name, _ in self.net.named_children())
            raise UserError(f"model.freeze names unknown modules {unknown}; the model's top-level modules are: {top}.")
        return names


def _is_path(weights: str) -> bool:
    return weights.endswith((".pth", ".pt")) or "/" in weights


def _torchvision_weights(builder: str, weights: str | None) -> Any:
    if not weights or weights == "none" or _is_path(weights):
        return None
    import torchvision.models as models

    enum = models.get_model_weights(builder)
    name = weights.split(".")[-1]
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise UserError(
            f"model.weights={weights!r} is not a weights name of {builder}: use one of "
            f"{', '.join(dict.fromkeys(['DEFAULT', *enum.__members__]))}, a local .pth path, or null."
        ) from None


def _load_local(net: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise UserError(f"model.weights={str(path)!r} is not a file: give the path of a saved state_dict (.pth).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"Could not read model.weights={str(path)!r} as a state_dict: {one_line(err)}.") from None
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise UserError(
            f"The weights in {str(path)!r} do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )


def _replace_head(net: nn.Module, num_outputs: int) -> str:
    """Swap the last Linear layer for a new one with `num_outputs` outputs; its name."""
    linear = [(name, module) for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise UserError(f"{type(net).__name__} has no Linear layer to use as the classifier head.")
    name, old = linear[-1]
    parent_name, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, child, nn.Linear(old.in_features, num_outputs))
    return name


def _adapt_first_conv(net: nn.Module, channels: int) -> None:
    """Grey images into an RGB backbone: the first conv takes `channels` inputs, its
    pretrained filters averaged over the colour channels."""
    name, conv = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if conv is None or conv.in_channels == channels:
        return
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).expand_as(new.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_name, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, child, new)

