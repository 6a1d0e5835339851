"""The image-folder dataset on tiny generated folders and archives: layout, labels, decoding, the cache,
one-line errors, and a CLI training that records the class names."""

import io
import json
import os
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from topoat import build_model
from topoat.cli import main
from topoat.config import dump_config
from topoat.data import DATASETS, image_folder, load_dataset
from topoat.data.image_folder import load_image_folder
from topoat.errors import TopoatError
from topoat.runs.checkpoint import load_checkpoint, model_record, save_atomic

# Written in this (unsorted) order; sorted, the labels are ant 0, bee 1, cat 2.
COLOURS = {"cat": (250, 10, 10), "ant": (10, 250, 10), "bee": (10, 10, 250)}
N = 4  # images per class and split: 12 train, 12 test


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def make_tree(root, classes=tuple(COLOURS), n=N, size=8, grey=False):
    """train/<class>/ and test/<class>/, half PNG and half JPEG; image k of a class is its colour + k."""
    for split in ("train", "test"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for k in range(n):
                colour = tuple(min(c + k, 255) for c in COLOURS.get(cls, (128, 128, 128)))
                img = Image.new("RGB", (size, size), colour)
                if grey:
                    img = img.convert("L")
                if k % 2:
                    img.save(folder / f"{k:04d}.jpg", quality=95)
                else:
                    img.save(folder / f"{k:04d}.png")
    (root / "train" / ".DS_Store").write_bytes(b"\0junk")  # hidden files and non-images are ignored
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    return root


def write_tar(path, source, top=None):
    """A .tar.gz of the folder `source`, its content under `top/` when given."""
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted(source.iterdir()):
            tar.add(item, arcname=f"{top}/{item.name}" if top else item.name)
    return path


def write_zip(path, source, top=None):
    with zipfile.ZipFile(path, "w") as z:
        for dirpath, dirnames, filenames in os.walk(source):
            for name in sorted(dirnames) + sorted(filenames):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, source).replace(os.sep, "/")
                z.write(full, f"{top}/{rel}" if top else rel)
    return path


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "imgs")


def test_a_folder_loads_with_labels_from_the_sorted_class_names(tree, tmp_path):
    assert "image-folder" in DATASETS
    ds = load_dataset("image-folder", str(tree))
    assert ds.name == "image-folder" and ds.class_names == ["ant", "bee", "cat"] and ds.num_classes == 3
    assert ds.x_train.shape == (3 * N, 3, 8, 8) and ds.x_test.shape == (3 * N, 3, 8, 8)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == [0] * N + [1] * N + [2] * N and ds.y_test.tolist() == ds.y_train.tolist()
    # each image has its class's colour: the label follows the folder, not the order of writing
    for label, cls in enumerate(["ant", "bee", "cat"]):
        pixels = ds.x_train[ds.y_train == label].float().mean(dim=(0, 2, 3))
        assert torch.allclose(pixels, torch.tensor(COLOURS[cls]).float(), atol=4), (cls, pixels)
    assert ds.x_train[0, :, 0, 0].tolist() == [10, 250, 10]  # ant/0000.png, lossless
    expected = ds.x_train.double().div(255)
    assert ds.mean == pytest.approx(expected.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert ds.std == pytest.approx(expected.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-4)
    assert (tmp_path / "imgs.decoded.npz").is_file()  # beside the folder, not in it
    assert not list(tree.glob("*.npz"))


@pytest.mark.parametrize("kind", ["tar.gz", "tgz", "zip"])
@pytest.mark.parametrize("top", [None, "cifar"])
def test_archives_give_the_folders_data(tree, tmp_path, kind, top):
    ds = load_image_folder(str(tree), progress=False, cache=False)
    write = write_zip if kind == "zip" else write_tar
    archive = write(tmp_path / f"imgs-copy.{kind}", tree, top)
    from_archive = load_image_folder(str(archive), progress=False)
    assert from_archive.class_names == ds.class_names
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(from_archive, key), getattr(ds, key)), key
    assert from_archive.mean == ds.mean and from_archive.std == ds.std
    assert (tmp_path / "imgs-copy.decoded.npz").is_file()


def test_greyscale_images_give_one_channel_and_mixed_ones_rgb(tmp_path):
    grey = load_image_folder(str(make_tree(tmp_path / "grey", grey=True)), progress=False)
    assert grey.x_train.shape == (3 * N, 1, 8, 8) and len(grey.mean) == 1
    mixed = make_tree(tmp_path / "mixed", grey=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(mixed / "test" / "bee" / "rgb.png")
    ds = load_image_folder(str(mixed), progress=False)
    assert ds.x_train.shape == (3 * N, 3, 8, 8) and ds.x_test.shape == (3 * N + 1, 3, 8, 8)
    grey_image = ds.x_train[0]
    assert torch.equal(grey_image[0], grey_image[1]) and torch.equal(grey_image[1], grey_image[2])
    assert ds.x_test[ds.y_test == 1][-1, :, 0, 0].tolist() == [1, 2, 3]  # bee/rgb.png sorts last


def test_the_cache_is_reused_and_rebuilt_when_the_source_changes(tree, tmp_path, monkeypatch):
    ds = load_image_folder(str(tree), progress=False)

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache is fresh")

    monkeypatch.setattr(image_folder, "decode_image", no_decoding)
    again = load_dataset("image-folder", str(tree))
    assert torch.equal(again.x_train, ds.x_train) and again.class_names == ds.class_names
    assert again.mean == ds.mean

    Image.new("RGB", (8, 8), (0, 0, 0)).save(tree / "train" / "cat" / "extra.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load_image_folder(str(tree), progress=False)
    monkeypatch.undo()
    grown = load_image_folder(str(tree), progress=False)
    assert grown.x_train.shape[0] == 3 * N + 1 and grown.y_train[-1] == 2

    # an archive's cache follows its bytes: another archive under the same name is decoded again
    archive = write_tar(tmp_path / "data.tar.gz", tree)
    load_image_folder(str(archive), progress=False)
    monkeypatch.setattr(image_folder, "decode_image", no_decoding)
    load_image_folder(str(archive), progress=False)
    (tree / "train" / "cat" / "extra.png").unlink()
    write_tar(archive, tree)
    with pytest.raises(AssertionError, match="decoded again"):
        load_image_folder(str(archive), progress=False)
    monkeypatch.undo()
    assert load_image_folder(str(archive), progress=False).x_train.shape[0] == 3 * N

    (tmp_path / "data.decoded.npz").write_bytes(b"not an npz")  # a damaged cache is decoded again
    assert torch.equal(load_image_folder(str(archive), progress=False).x_train, ds.x_train)


def test_a_read_only_data_folder_caches_in_the_user_cache(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "ro").mkdir()
    archive = write_tar(tmp_path / "ro" / "data.tar.gz", tree)
    (tmp_path / "ro").chmod(0o555)  # root could still write there: the mode is what counts
    try:
        ds = load_image_folder(str(archive), progress=False)
        assert not (tmp_path / "ro" / "data.decoded.npz").exists()
        cached = list((tmp_path / "xdg" / "topoat").glob("data-*.decoded.npz"))
        assert len(cached) == 1
        monkeypatch.setattr(image_folder, "decode_image", lambda *a: pytest.fail("decoded again"))
        assert torch.equal(load_image_folder(str(archive), progress=False).x_train, ds.x_train)
    finally:
        (tmp_path / "ro").chmod(0o755)


# -- one-line errors --------------------------------------------------------------------------------
def _no_train(root):
    (root / "train").rename(root / "training")


def _mismatched(root):
    (root / "test" / "cat").rename(root / "test" / "dog")


def _empty_class(root):
    for f in (root / "test" / "bee").iterdir():
        f.unlink()


def _corrupt_image(root):
    (root / "train" / "bee" / "0001.jpg").write_bytes(b"\xff\xd8\xff\xe0 a JPEG's first bytes, then nonsense")


def _other_size(root):
    Image.new("RGB", (9, 8)).save(root / "test" / "ant" / "wide.png")


def _sixteen_bit(root):
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(root / "test" / "ant" / "deep.png")


def _no_classes(root):
    for split in ("train", "test"):
        for folder in (root / split).iterdir():
            if folder.is_dir():
                for f in folder.iterdir():
                    f.unlink()
                folder.rmdir()


@pytest.mark.parametrize(
    "damage,message",
    [
        (_no_train, r"imgs has no train/ folder \(need train/<class>/ and test/<class>/\)"),
        (_mismatched, r"same class folders \(only in train/: cat; only in test/: dog\)"),
        (_empty_class, r"test/bee/ holds no \.jpg, \.jpeg, \.png images"),
        (_corrupt_image, r"cannot decode .*/imgs/train/bee/0001\.jpg \(\w+\); the file is corrupt"),
        (_other_size, r"test/ant/wide\.png is 9x8, but the first image is 8x8"),
        (_sixteen_bit, r"deep\.png has Pillow mode I;16"),
        (_no_classes, r"train/ holds no class folders"),
    ],
)
def test_bad_layouts_and_images_are_one_line_errors(tree, damage, message):
    damage(tree)
    with pytest.raises(TopoatError, match=message) as e:
        load_image_folder(str(tree), progress=False)
    one_line(e)


def test_missing_sources_are_one_line_errors(tmp_path):
    for root, message in [
        (None, "needs data.root"),
        (str(tmp_path / "nowhere"), "not found"),
        (str(tmp_path), "has no train/ and test/ folders"),
    ]:
        with pytest.raises(TopoatError, match=message) as e:
            load_dataset("image-folder", root)
        one_line(e)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "train" / "a").mkdir(parents=True)
    with pytest.raises(TopoatError, match="has no test/ folder") as e:
        load_image_folder(str(tmp_path / "only"), progress=False)
    one_line(e)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TopoatError, match="neither a folder nor a .tar.gz/.tgz/.zip archive") as e:
        load_image_folder(str(tmp_path / "notes.txt"), progress=False)
    one_line(e)


@pytest.mark.parametrize("where", [-6, -2, "middle", "cut"])
def test_a_damaged_tar_gz_is_a_one_line_error(tree, tmp_path, where):
    """-6 and -2 hit gzip's CRC and length fields, after the last image: only reading to the end sees them."""
    raw = bytearray(write_tar(tmp_path / "data.tar.gz", tree).read_bytes())
    if where == "cut":
        raw = raw[: len(raw) * 2 // 3]
    else:
        at = len(raw) // 2 if where == "middle" else where
        raw[at] ^= 0xFF
    (tmp_path / "data.tar.gz").write_bytes(bytes(raw))
    with pytest.raises(TopoatError, match="corrupt or truncated") as e:
        load_image_folder(str(tmp_path / "data.tar.gz"), progress=False)
    one_line(e)
    assert not (tmp_path / "data.decoded.npz").exists()


def test_hostile_archive_members_are_refused(tree, tmp_path):
    slip = write_zip(tmp_path / "slip.zip", tree)
    with zipfile.ZipFile(slip, "a") as z:
        z.writestr("train/ant/../../../evil.png", b"evil")
    with pytest.raises(TopoatError, match=r"'\.\.'") as e:
        load_image_folder(str(slip), progress=False)
    one_line(e)

    link = write_tar(tmp_path / "link.tar.gz", tree)
    with tarfile.open(link, "w:gz") as tar:
        for item in sorted(tree.iterdir()):
            tar.add(item, arcname=item.name)
        info = tarfile.TarInfo("train/ant/link.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(TopoatError, match="it is a link") as e:
        load_image_folder(str(link), progress=False)
    one_line(e)

    slip_tar = tmp_path / "slip.tar.gz"
    with tarfile.open(slip_tar, "w:gz") as tar:
        data = b"evil"
        info = tarfile.TarInfo("../train/ant/evil.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(TopoatError, match=r"'\.\.'"):
        load_image_folder(str(slip_tar), progress=False)
    assert not (tmp_path.parent / "evil.png").exists() and not (tmp_path / "evil.png").exists()


# -- training from the command line ----------------------------------------------------------------
def test_cli_trains_on_an_image_folder_and_records_the_class_names(tree, tmp_path, capsys):
    archive = write_tar(tmp_path / "data.tgz", tree, top="wrapped")
    cfg = tiny_config(
        **{
            "data.dataset": "image-folder",
            "data.args": "{}",
            "data.root": str(archive),
            "data.name": "Tiny colours (test copy)",
            "data.val_size": 3,
            "optim.epochs": 1,
            "optim.batch_size": 4,
            "validation.n": 3,
            "validation.attack_steps": 1,
            "evaluation.n": 6,
            "evaluation.attacks": "[pgd-1]",
        }
    )
    (tmp_path / "cfg.yaml").write_text(dump_config(cfg))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")]) == 0
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(tmp_path / "run" / name)
        assert ckpt["class_names"] == ["ant", "bee", "cat"] and ckpt["num_classes"] == 3, name
        assert ckpt["dataset"] == "Tiny colours (test copy)" and ckpt["image_size"] == [8, 8]
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert doc["dataset"] == "Tiny colours (test copy)" and doc["runs"]["tiny"]["n_eval"] == 6
    # eval finds the data from the checkpoint's own config, under the name results.json uses
    argv = ["eval", str(tmp_path / "run" / "last.pt"), "--attacks", "fgsm", "--n", "6", "--no-progress"]
    assert main(argv + ["--results", str(tmp_path / "run" / "results.json"), "--run", "tiny"]) == 0
    assert "on Tiny colours (test copy) test: 6 images" in capsys.readouterr().out


def test_a_corrupt_image_in_an_archive_is_named_with_the_archive(tree, tmp_path):
    _corrupt_image(tree)
    archive = write_zip(tmp_path / "data.zip", tree, top="top")
    with pytest.raises(TopoatError, match=r"cannot decode top/train/bee/0001\.jpg in .*data\.zip \(\w+\)") as e:
        load_image_folder(str(archive), progress=False)
    one_line(e)


def test_a_checkpoint_whose_class_names_do_not_fit_is_damaged(tmp_path):
    model = build_model("small-cnn", 3, 3, [0.5] * 3, [0.25] * 3, width=4, feature_dim=16)
    args = {"width": 4, "feature_dim": 16}
    save_atomic(model_record(model, "small-cnn", args, 3, 3, (8, 8), class_names=["a", "b", "c"]), tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["class_names"] == ["a", "b", "c"]
    save_atomic(model_record(model, "small-cnn", args, 3, 3, (8, 8), class_names=["a", "b"]), tmp_path / "bad.pt")
    with pytest.raises(TopoatError, match="'class_names' must be a list of one name per class") as e:
        load_checkpoint(tmp_path / "bad.pt")
    one_line(e)
