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
    with gzip.open(images) as f:
        raw = f.read()
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
    np.savez(
        path,
        x_train=rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(10) % 4,
        x_test=rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8),
        y_test=np.arange(5) % 4,
    )
    ds = load_dataset("npz", str(path))
    assert ds.x_train.shape == (10, 3, 16, 16) and ds.num_classes == 4 and len(ds.mean) == 3
    grey = tmp_path / "grey.npz"
    np.savez(
        grey,
        x_train=np.zeros((4, 8, 8), np.uint8),
        y_train=np.array([0, 1, 2, 1]),
        x_test=np.zeros((2, 8, 8), np.uint8),
        y_test=np.array([0, 1]),
    )
    assert load_dataset("npz", str(grey)).x_train.shape == (4, 1, 8, 8)
    bad = tmp_path / "bad.npz"
    np.savez(
        bad,
        x_train=np.zeros((4, 8, 8), np.float32),
        y_train=np.zeros(4, int),
        x_test=np.zeros((2, 8, 8), np.uint8),
        y_test=np.zeros(2, int),
    )
    with pytest.raises(TopoatError, match="uint8"):
        load_dataset("npz", str(bad))
    missing = tmp_path / "missing.npz"
    np.savez(missing, x_train=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(TopoatError, match="missing array"):
        load_dataset("npz", str(missing))
    hostile = tmp_path / "hostile.npz"
    np.savez(
        hostile,
        x_train=np.array([object()], dtype=object),
        y_train=np.zeros(1, int),
        x_test=np.zeros((1, 8, 8), np.uint8),
        y_test=np.zeros(1, int),
    )
    with pytest.raises(TopoatError):
        load_dataset("npz", str(hostile))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TopoatError, match="not a valid"):
        load_dataset("npz", str(tmp_path / "junk.npz"))


@pytest.mark.parametrize("kind,size", [("images", 12), ("images", 3), ("labels", 5)])
def test_idx_file_cut_inside_its_header_is_a_one_line_error(fmnist_dir, kind, size):
    # an image file cut between bytes 8 and 16 used to end in struct.error
    path = fmnist_dir / f"train-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
    magic = IMAGE_MAGIC if kind == "images" else LABEL_MAGIC
    with gzip.open(path) as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:size])
    with pytest.raises(TopoatError, match="too short to be an IDX file"):
        read_idx(path, magic)


def test_data_root_expands_the_home_folder(fmnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_fashion_mnist(f"~/{fmnist_dir.relative_to(tmp_path)}", full_size=False).x_train.shape[0] == 20
    (tmp_path / "mine").mkdir()
    write_npz(tmp_path / "mine" / "d.npz")
    assert load_dataset("npz", "~/mine/d.npz").num_classes == 4


def write_npz(path, **changes):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
        y_train=np.arange(12) % 4,
        x_test=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8),
        y_test=np.arange(6) % 4,
    )
    np.savez(path, **{**arrays, **changes})
    return str(path)


def test_npz_header_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    import io
    import zipfile

    path = tmp_path / "huge.npz"
    write_npz(path)
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    header = io.BytesIO()  # 93 GiB declared, 64 bytes stored
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (100000, 1000, 1000)}
    )
    members["x_train.npy"] = header.getvalue() + bytes(64)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(
        TopoatError,
        match=r"x_train declares shape \(100000, 1000, 1000\) \(100000000000 bytes\) "
        "but holds only 64 bytes",
    ):
        load_dataset("npz", str(path))


def test_npz_class_count_and_empty_or_empty_shaped_splits(tmp_path):
    # test labels above every training label used to add classes the model never trains on
    unseen = write_npz(tmp_path / "unseen.npz", y_test=np.array([0, 1, 2, 3, 7, 9]))
    with pytest.raises(
        TopoatError, match="y_test has label\\(s\\) 7, 9 above every training label \\(0..3\\); add a num_classes array"
    ):
        load_dataset("npz", unseen)
    declared = write_npz(tmp_path / "declared.npz", y_test=np.array([0, 1, 2, 3, 7, 9]), num_classes=np.array(10))
    assert load_dataset("npz", declared).num_classes == 10
    with pytest.raises(TopoatError, match="labels must lie in 0..4"):
        load_dataset("npz", write_npz(tmp_path / "small.npz", y_test=np.arange(6) + 2, num_classes=np.array(5)))
    with pytest.raises(TopoatError, match="num_classes must be a single integer >= 2"):
        load_dataset("npz", write_npz(tmp_path / "vector.npz", num_classes=np.array([4, 4])))
    empty = write_npz(tmp_path / "empty.npz", x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, np.int64))
    with pytest.raises(TopoatError, match="y_test is empty"):
        load_dataset("npz", empty)
    for name, shape in (("no-channels", (12, 8, 8, 0)), ("no-rows", (12, 0, 8))):
        bad = write_npz(
            tmp_path / f"{name}.npz", x_train=np.zeros(shape, np.uint8), x_test=np.zeros((6, *shape[1:]), np.uint8)
        )
        with pytest.raises(TopoatError, match="at least 1 channel and 1x1 pixels"):
            load_dataset("npz", bad)


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
        windows = [padded[i, :, a : a + 6, b : b + 6] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    assert torch.equal(random_crop_flip(img, 0, False, None), img)
