"""Model registry: architecture name -> builder. Every model takes [0, 1] inputs and normalises inside."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import TopoatError
from .base import ImageClassifier
from .features import check_layer, representation
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


def build_model(
    arch: str, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float], **args: Any
) -> ImageClassifier:
    if arch not in ARCHITECTURES:
        raise TopoatError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    builder = ARCHITECTURES[arch]
    allowed = set(inspect.signature(builder).parameters) - {"num_classes", "in_channels", "mean", "std"}
    unknown = set(args) - allowed
    if unknown:
        raise TopoatError(
            f"model.args: unknown argument(s) {', '.join(sorted(unknown))} for {arch} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    for name, value in args.items():
        _check_arg(arch, name, value, inspect.signature(builder).parameters[name].default)
    if len(mean) != in_channels or len(std) != in_channels:
        raise TopoatError(f"normalisation has {len(mean)} channels, the data {in_channels}")
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, mean=mean, std=std, **args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TopoatError(f"model {arch}: {e}") from None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_arg(arch: str, name: str, value: Any, default: Any) -> None:
    """An argument of the default's kind: sizes (width, depth, blocks per stage) are integers >= 1, since
    0 or less builds a model that fails in its first step or silently has no layers; switches are booleans
    (a string such as "no" would be true)."""
    if isinstance(default, bool):
        ok, what = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, what = _positive_int(value), "an integer >= 1"
    elif isinstance(default, float):
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, tuple):
        ok, what = (
            (isinstance(value, (list, tuple)) and len(value) > 0 and all(_positive_int(v) for v in value)),
            "a list of integers >= 1",
        )
    else:
        return
    if not ok:
        raise TopoatError(f"model.args.{name} must be {what} for {arch}, got {value!r}")


def build_model_for(dataset: Any, arch: str = "small-cnn", **args: Any) -> ImageClassifier:
    """A fresh `arch` for `dataset` (an ImageDataset): its class count, channels and normalisation."""
    return build_model(arch, dataset.num_classes, dataset.in_channels, dataset.mean, dataset.std, **args)


__all__ = ["ARCHITECTURES", "ImageClassifier", "build_model", "build_model_for", "check_layer", "representation"]
