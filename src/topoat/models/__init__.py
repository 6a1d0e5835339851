"""Model registry: architecture name -> builder. Every model takes [0, 1] inputs and normalises inside."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

from ..errors import TopoatError
from .base import ImageClassifier
from .preact_resnet import PreActResNet
from .resnet import ResNet
from .small_cnn import SmallCNN
from .wide_resnet import WideResNet

ARCHITECTURES: dict[str, Callable[..., ImageClassifier]] = {
    "small-cnn": SmallCNN,
    "preact-resnet18": PreActResNet,
    "resnet18": ResNet,
    "wrn-34-10": WideResNet,
}


def build_model(arch: str, num_classes: int, in_channels: int, mean: Sequence[float],
                std: Sequence[float], **args: Any) -> ImageClassifier:
    if arch not in ARCHITECTURES:
        raise TopoatError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    builder = ARCHITECTURES[arch]
    allowed = set(inspect.signature(builder).parameters) - {"num_classes", "in_channels", "mean", "std"}
    unknown = set(args) - allowed
    if unknown:
        raise TopoatError(f"model.args: unknown argument(s) {', '.join(sorted(unknown))} for {arch} "
                          f"(allowed: {', '.join(sorted(allowed))})")
    for name, value in args.items():
        default = inspect.signature(builder).parameters[name].default
        # a size (width, depth, feature_dim) of 0 or less builds a model that fails only in its first step
        if isinstance(default, int) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TopoatError(f"model.args.{name} must be an integer >= 1 for {arch}, got {value!r}")
    if len(mean) != in_channels or len(std) != in_channels:
        raise TopoatError(f"normalisation has {len(mean)} channels, the data {in_channels}")
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, mean=mean, std=std, **args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TopoatError(f"model {arch}: {e}") from None


__all__ = ["ARCHITECTURES", "ImageClassifier", "build_model"]
