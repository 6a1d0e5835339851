"""Model registry: architecture name -> builder. Every model takes [0, 1] inputs and normalises inside."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..builder_args import builder_defaults, check_builder_args
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
    defaults = builder_defaults(builder, skip={"num_classes", "in_channels", "mean", "std"})
    check_builder_args("model.args", arch, args, defaults, least=1)
    if len(mean) != in_channels or len(std) != in_channels:
        raise TopoatError(f"normalisation has {len(mean)} channels, the data {in_channels}")
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, mean=mean, std=std, **args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TopoatError(f"model {arch}: {e}") from None


def build_model_for(dataset: Any, arch: str = "small-cnn", **args: Any) -> ImageClassifier:
    """A fresh `arch` for `dataset` (an ImageDataset): its class count, channels and normalisation."""
    return build_model(arch, dataset.num_classes, dataset.in_channels, dataset.mean, dataset.std, **args)


__all__ = ["ARCHITECTURES", "ImageClassifier", "build_model", "build_model_for", "check_layer", "representation"]
