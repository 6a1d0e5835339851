"""Datasets by name. Each returns an `ImageDataset` of uint8 tensors; batching lives in `loader`."""

from __future__ import annotations

from ..errors import TopoatError
from .base import ImageDataset
from .cifar import load_cifar
from .fashion_mnist import load_fashion_mnist
from .image_folder import load_image_folder
from .loader import DeviceLoader, random_crop_flip, to_float
from .npz import load_npz
from .synthetic import make_synthetic
from .tiny_imagenet import load_tiny_imagenet

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "tiny-imagenet", "image-folder", "npz", "synthetic")


def load_dataset(
    name: str,
    root: str | None = None,
    *,
    synthetic_shape=(1, 28, 28),
    synthetic_classes: int = 10,
    synthetic_train: int = 512,
    synthetic_test: int = 256,
    seed: int = 0,
    download: bool = False,
) -> ImageDataset:
    """`download` lets cifar10/cifar100/tiny-imagenet fetch their official archive into `root` if missing."""
    if name == "fashion-mnist":
        return load_fashion_mnist(root)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, download=download)
    if name == "tiny-imagenet":
        return load_tiny_imagenet(root, download=download)
    if name == "image-folder":
        return load_image_folder(root)
    if name == "npz":
        return load_npz(root)
    if name == "synthetic":
        return make_synthetic(tuple(synthetic_shape), synthetic_classes, synthetic_train, synthetic_test, seed)
    raise TopoatError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def load_configured(data_cfg, root: str | None = None, *, download: bool | None = None) -> ImageDataset:
    """The whole data set a DataConfig names, called by its `name` when it gives one; `root` and
    `download` replace the config's when given."""
    ds = load_dataset(
        data_cfg.dataset,
        root or data_cfg.root,
        synthetic_shape=data_cfg.synthetic_shape,
        synthetic_classes=data_cfg.synthetic_classes,
        synthetic_train=data_cfg.synthetic_train,
        synthetic_test=data_cfg.synthetic_test,
        download=data_cfg.download if download is None else download,
    )
    if data_cfg.name:
        ds.name = data_cfg.name
    return ds


def dataset_from_config(data_cfg) -> ImageDataset:
    """Load, split off validation and subset the training split, as a DataConfig says."""
    ds = load_configured(data_cfg)
    ds = ds.split_validation(data_cfg.val_size, data_cfg.val_seed)
    return ds.subset_train(data_cfg.train_subset, data_cfg.val_seed)


__all__ = [
    "DATASETS",
    "DeviceLoader",
    "ImageDataset",
    "dataset_from_config",
    "load_configured",
    "load_dataset",
    "random_crop_flip",
    "to_float",
]
