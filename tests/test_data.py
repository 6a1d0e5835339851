import gzip
import struct

import numpy as np
import pytest
import torch

from topoat.data import DeviceLoader, load_dataset, random_crop_flip
from topoat.data.fashion_mnist import IMAGE_MAGIC, LABEL_MAGIC, load_fashion_mnist, read_idx
from topoat.errors import TopoatError


def write_idx(path, array, magic):
    header = struct.pack(">II", magic, array.shape[0])
    if magic == IMAGE_MAGIC:
        header += struct.pack(">II", *array.shape[1:])
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fmnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 8)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), IMAGE_MAGIC)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n), LABEL_MAGIC)
    return tmp_path


def test_fashion_mnist_reads_idx(fmnist_dir):
    ds = load_fashion_mnist(str(fmnist_dir), full_size=False)
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (8, 1, 28, 28) and ds.num_classes == 10
    # the real loader insists on the official sizes
    with pytest.raises(TopoatError, match="expected 60000"):
        load_fashion_mnist(str(fmnist_dir))


def test_fashion_mnist_rejects_bad_files(fmnist_dir, tmp_path):
    images = fmnist_dir / "train-images-idx3-ubyte.gz"
    with pytest.raises(TopoatError, match="magic"):
        read_idx(images, LABEL_MAGIC)
    raw = gzip.open(images).read()
    with gzip.open(images, "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(TopoatError, match="payload"):
        read_idx(images, IMAGE_MAGIC)
    images.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(TopoatError, match="corrupt or truncated"):
        read_idx(images, IMAGE_MAGIC)
    with pytest.raises(TopoatError, match="not found"):
        load_fashion_mnist(str(tmp_path / "nowhere"))


def test_npz_user_data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8), y_train=np.arange(10) % 4,
             x_test=rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8), y_test=np.arange(5) % 4)
    ds = load_dataset("npz", str(path))
    assert ds.x_train.shape == (10, 3, 16, 16) and ds.num_classes == 4 and len(ds.mean) == 3
    grey = tmp_path / "grey.npz"
    np.savez(grey, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 2, 1]),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.array([0, 1]))
    assert load_dataset("npz", str(grey)).x_train.shape == (4, 1, 8, 8)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((4, 8, 8), np.float32), y_train=np.zeros(4, int),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.zeros(2, int))
    with pytest.raises(TopoatError, match="uint8"):
        load_dataset("npz", str(bad))
    missing = tmp_path / "missing.npz"
    np.savez(missing, x_train=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(TopoatError, match="missing array"):
        load_dataset("npz", str(missing))
    hostile = tmp_path / "hostile.npz"
    np.savez(hostile, x_train=np.array([object()], dtype=object), y_train=np.zeros(1, int),
             x_test=np.zeros((1, 8, 8), np.uint8), y_test=np.zeros(1, int))
    with pytest.raises(TopoatError):
        load_dataset("npz", str(hostile))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TopoatError, match="not a valid"):
        load_dataset("npz", str(tmp_path / "junk.npz"))


def test_synthetic_is_deterministic_and_splits_are_disjoint():
    a, b = load_dataset("synthetic"), load_dataset("synthetic")
    assert torch.equal(a.x_train, b.x_train)
    split = a.split_validation(100, seed=0)
    assert split.x_train.shape[0] + split.x_val.shape[0] == a.x_train.shape[0]
    rows = {tuple(r.flatten().tolist()) for r in split.x_val}
    assert not any(tuple(r.flatten().tolist()) in rows for r in split.x_train[:50])
    with pytest.raises(TopoatError, match="unknown dataset"):
        load_dataset("imagenet")


def test_loader_covers_epoch_and_crops_are_windows():
    x = torch.arange(10 * 1 * 4 * 4, dtype=torch.uint8).view(10, 1, 4, 4)
    y = torch.arange(10)
    g = torch.Generator().manual_seed(0)
    loader = DeviceLoader(x, y, batch_size=3, shuffle=True, generator=g)
    seen = torch.cat([yb for _, yb in loader])
    assert sorted(seen.tolist()) == list(range(10)) and len(loader) == 4
    img = torch.rand(5, 2, 6, 6)
    out = random_crop_flip(img, padding=2, flip=True, generator=torch.Generator().manual_seed(1))
    assert out.shape == img.shape
    padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
    for i in range(5):  # each output is some 6x6 window of the padded image, maybe flipped
        windows = [padded[i, :, a:a + 6, b:b + 6] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    assert torch.equal(random_crop_flip(img, 0, False, None), img)
