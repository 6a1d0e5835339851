"""A small CNN for 28x28 grey images (Fashion-MNIST) that still accepts any size and channel count."""
from __future__ import annotations

from torch import nn

from .base import ImageClassifier


class SmallCNN(ImageClassifier):
    def __init__(self, num_classes: int, in_channels: int, mean, std, width: int = 32,
                 feature_dim: int = 256):
        super().__init__(mean, std)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(4 * w * 16, feature_dim), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(feature_dim, num_classes)
