"""Datasets by name. Each returns an `ImageDataset` of uint8 tensors; batching lives in `loader`.

Each loader's module registers it (`register_dataset`, registry.py); the registry imports every module
here the first time it is asked for a name."""

from __future__ import annotations

from typing import Any

from ..registry import DATASETS
from .base import ImageDataset
from .loader import DeviceLoader, random_crop_flip, to_float
from .registry import DataSpec, load_dataset, register_dataset


def load_configured(data_cfg: Any, root: str | None = None, *, download: bool | None = None) -> ImageDataset:
    """The whole data set a DataConfig names, with its `args`, called by its `name` when it gives one;
    `root` and `download` replace the config's when given."""
    ds = load_dataset(
        data_cfg.dataset,
        root or data_cfg.root,
        download=data_cfg.download if download is None else download,
        **data_cfg.args,
    )
    if data_cfg.name:
        ds.name = data_cfg.name
    return ds


def dataset_from_config(data_cfg: Any) -> ImageDataset:
    """Load, split off validation and subset the training split, as a DataConfig says."""
    ds = load_configured(data_cfg)
    ds = ds.split_validation(data_cfg.val_size, data_cfg.val_seed)
    return ds.subset_train(data_cfg.train_subset, data_cfg.val_seed)


__all__ = [
    "DATASETS",
    "DataSpec",
    "DeviceLoader",
    "ImageDataset",
    "dataset_from_config",
    "load_configured",
    "load_dataset",
    "random_crop_flip",
    "register_dataset",
    "to_float",
]
