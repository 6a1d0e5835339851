"""CIFAR-10/100 and Tiny ImageNet loaders on tiny archives in the official formats, and archive safety."""

import dataclasses
import hashlib
import io
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from topoat.data import archive, cifar, load_dataset, tiny_imagenet
from topoat.data.archive import SafeZip, download, read_tar_members, verify_checksum
from topoat.data.cifar import CIFAR10, CIFAR100, load_cifar
from topoat.data.extract import safe_extract
from topoat.data.tiny_imagenet import decode_jpeg, load_tiny_imagenet
from topoat.errors import TopoatError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def fakes_under_official_names(monkeypatch):
    """The tiny archives here carry the official names (tiny-imagenet-200.zip, ...), not their bytes."""
    monkeypatch.setattr(archive, "OFFICIAL_MD5", {})


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# -- building archives ------------------------------------------------------------------------------
def cifar_records(n, label_bytes, classes, seed):
    """n records; image k of every file has pixel (c, h, w) = (k + c + h + w) % 256, labels from `seed`."""
    rng = np.random.default_rng(seed)
    out = bytearray()
    labels = rng.integers(0, classes, n)
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    for k in range(n):
        head = [int(labels[k]) % 20, int(labels[k])] if label_bytes == 2 else [int(labels[k])]
        out += bytes(head) + ((k + c + h + w) % 256).astype(np.uint8).tobytes()
    return bytes(out), labels


def add_file(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def cifar_members(spec, n=3):
    members, labels = {}, {}
    for i, name in enumerate(spec.train_files + spec.test_files):
        members[name], labels[name] = cifar_records(n, spec.label_bytes, spec.num_classes, seed=i)
    names = CIFAR10_NAMES if spec is CIFAR10 else [f"class_{i}" for i in range(100)]
    members[spec.names_file] = ("\n".join(names) + "\n\n").encode()
    return members, labels


def write_tar(path, members, folder):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in members.items():
            add_file(tar, f"{folder}/{name}", data)
    return path


@pytest.fixture
def cifar10_archive(tmp_path):
    members, labels = cifar_members(CIFAR10)
    return write_tar(tmp_path / CIFAR10.archive, members, CIFAR10.folder), labels


def hostile_tar(path, kind):
    with tarfile.open(path, "w:gz") as tar:
        add_file(tar, "cifar-10-batches-bin/data_batch_1.bin", b"x" * 3073)
        if kind == "dotdot":
            add_file(tar, "cifar-10-batches-bin/../../evil", b"evil")
        elif kind == "absolute":
            add_file(tar, "/tmp/topoat-evil", b"evil")
        elif kind in ("symlink", "hardlink"):
            info = tarfile.TarInfo("cifar-10-batches-bin/link")
            info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        elif kind == "device":
            info = tarfile.TarInfo("cifar-10-batches-bin/dev")
            info.type = tarfile.CHRTYPE
            tar.addfile(info)
        elif kind == "oversized":
            add_file(tar, "cifar-10-batches-bin/big.bin", b"\0" * 5000)
    return path


def jpeg(color, size=64, mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


TINY_WNIDS = ["n01443537", "n01629819", "n01641577"]
TINY_COLORS = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]


def tiny_imagenet_files(bad_annotation=False, odd_size=False):
    files = {
        "wnids.txt": ("\n".join(TINY_WNIDS) + "\n").encode(),
        "words.txt": b"n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n"
        b"n01641577\tbullfrog, Rana catesbeiana\nn09999999\tunused\n",
    }
    for w, color in zip(TINY_WNIDS, TINY_COLORS, strict=True):
        files[f"train/{w}/{w}_boxes.txt"] = b"ignored\n"
        for k in range(2):
            files[f"train/{w}/images/{w}_{k}.JPEG"] = jpeg(color)
    files[f"train/{TINY_WNIDS[0]}/images/{TINY_WNIDS[0]}_1.JPEG"] = jpeg(128, mode="L", size=48 if odd_size else 64)
    rows = []
    for k, w in enumerate(reversed(TINY_WNIDS)):
        files[f"val/images/val_{k}.JPEG"] = jpeg(TINY_COLORS[TINY_WNIDS.index(w)])
        rows.append(f"val_{k}.JPEG\t{'n00000000' if bad_annotation and k == 0 else w}\t0\t0\t63\t63")
    files["val/val_annotations.txt"] = ("\n".join(rows) + "\n").encode()
    files["test/images/test_0.JPEG"] = jpeg((9, 9, 9))
    return files


def write_zip(path, files, top="tiny-imagenet-200/"):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(top + name, data)
    return path


# -- CIFAR ------------------------------------------------------------------------------------------
def test_cifar10_from_archive_and_from_folder(cifar10_archive, tmp_path):
    archive, labels = cifar10_archive
    ds = load_cifar("cifar10", str(archive), full_size=False)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (3, 3, 32, 32) and ds.num_classes == 10 and ds.class_names == CIFAR10_NAMES
    # records are R plane, G plane, B plane, each row-major: pixel (c, h, w) of image k is (k + c + h + w) % 256
    assert int(ds.x_train[1, 2, 5, 7]) == 1 + 2 + 5 + 7 and int(ds.x_train[4, 0, 31, 31]) == 1 + 62
    expected = np.concatenate([labels[f] for f in CIFAR10.train_files])
    assert ds.y_train.tolist() == expected.tolist()
    assert ds.mean == list(CIFAR10.mean)

    # The same data from the extracted folder, from its parent, and from a folder holding the archive.
    extracted = safe_extract(archive, tmp_path / "extracted")
    for root in (extracted / CIFAR10.folder, extracted, tmp_path):
        other = load_cifar("cifar10", str(root), full_size=False)
        assert torch.equal(other.x_train, ds.x_train) and torch.equal(other.y_test, ds.y_test)

    with pytest.raises(TopoatError, match="expected 50000") as e:
        load_dataset("cifar10", str(archive))
    one_line(e)


def test_cifar100_uses_fine_labels(tmp_path):
    members, labels = cifar_members(CIFAR100, n=4)
    archive = write_tar(tmp_path / CIFAR100.archive, members, CIFAR100.folder)
    ds = load_cifar("cifar100", str(archive), full_size=False)
    assert ds.num_classes == 100 and len(ds.class_names) == 100
    assert ds.y_train.tolist() == labels["train.bin"].tolist() and ds.y_test.tolist() == labels["test.bin"].tolist()
    # a CIFAR-10 file handed to the CIFAR-100 reader is caught by its record size
    members["train.bin"] = cifar_records(5, 1, 10, 0)[0]
    write_tar(tmp_path / "mixed.tar.gz", members, CIFAR100.folder)
    with pytest.raises(TopoatError, match="whole number of 3074-byte records"):
        load_cifar("cifar100", str(tmp_path / "mixed.tar.gz"), full_size=False)


def test_cifar_missing_data_is_a_clear_error(tmp_path, cifar10_archive):
    with pytest.raises(TopoatError, match="data.download: true") as e:
        load_dataset("cifar10", str(tmp_path / "nowhere"))
    one_line(e)
    members, _ = cifar_members(CIFAR10)
    del members["data_batch_3.bin"]
    write_tar(tmp_path / "partial.tar.gz", members, CIFAR10.folder)
    with pytest.raises(TopoatError, match="data_batch_3.bin is missing"):
        load_cifar("cifar10", str(tmp_path / "partial.tar.gz"), full_size=False)


def test_cifar_download_verifies_checksum(cifar10_archive, tmp_path, monkeypatch):
    archive, _ = cifar10_archive
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    local = dataclasses.replace(CIFAR10, url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(cifar.SPECS, "cifar10", local)
    ds = load_cifar("cifar10", str(tmp_path / "dl"), download=True, full_size=False, progress=False)
    assert ds.x_train.shape[0] == 15 and (tmp_path / "dl" / CIFAR10.archive).is_file()
    # a second load reads the downloaded archive, whatever the URL now says
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(local, url="file:///nonexistent"))
    assert load_cifar("cifar10", str(tmp_path / "dl"), full_size=False).x_train.shape[0] == 15

    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(local, md5="0" * 32))
    with pytest.raises(TopoatError, match="md5 checksum mismatch") as e:
        load_cifar("cifar10", str(tmp_path / "bad"), download=True, full_size=False, progress=False)
    one_line(e)
    assert list((tmp_path / "bad").iterdir()) == []  # the wrong file is not left behind


def test_download_function(tmp_path):
    source = tmp_path / "payload.bin"
    source.write_bytes(b"topoat" * 1000)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    dest = download(source.as_uri(), tmp_path / "out" / "payload.bin", md5=md5, sha256=sha, progress=False)
    assert dest.read_bytes() == source.read_bytes()
    verify_checksum(dest, sha256=sha.upper())
    with pytest.raises(TopoatError, match="sha256 checksum mismatch"):
        download(source.as_uri(), tmp_path / "out2" / "payload.bin", sha256="ab" * 32, progress=False)
    assert list((tmp_path / "out2").iterdir()) == []
    with pytest.raises(TopoatError, match="cannot download") as e:
        download((tmp_path / "missing.bin").as_uri(), tmp_path / "out3" / "x", progress=False)
    one_line(e)


def test_truncated_archives_are_one_line_errors(cifar10_archive, tmp_path):
    archive, _ = cifar10_archive
    raw = archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TopoatError, match="corrupt or truncated") as e:
        load_cifar("cifar10", str(cut), full_size=False)
    one_line(e)
    with pytest.raises(TopoatError, match="corrupt or truncated"):
        safe_extract(cut, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(TopoatError, match="corrupt or truncated"):
        load_cifar("cifar10", str(tmp_path / "junk.tar.gz"), full_size=False)


@pytest.mark.parametrize(
    "kind,message",
    [
        ("dotdot", "'..'"),
        ("absolute", "absolute path"),
        ("symlink", "link"),
        ("hardlink", "link"),
        ("device", "special file"),
        ("oversized", "exceeds"),
    ],
)
def test_hostile_tar_members_are_refused(tmp_path, kind, message):
    archive = hostile_tar(tmp_path / "hostile.tar.gz", kind)
    with pytest.raises(TopoatError, match=message) as e:
        safe_extract(archive, tmp_path / "out" / "dest", max_member_bytes=4096)
    one_line(e)
    assert list((tmp_path / "out").iterdir()) == []  # nothing extracted, no temporary folder left
    assert not (tmp_path / "evil").exists()
    with pytest.raises(TopoatError, match=message):
        read_tar_members(archive, lambda name: True, max_member_bytes=4096)
    if kind != "oversized":  # the loaders refuse the archive too, even though they would not read that member
        with pytest.raises(TopoatError, match=message):
            load_cifar("cifar10", str(archive), full_size=False)


def test_total_size_limit_and_existing_destination(cifar10_archive, tmp_path):
    archive, _ = cifar10_archive
    with pytest.raises(TopoatError, match="add up to more than"):
        safe_extract(archive, tmp_path / "a", max_total_bytes=20000)
    (tmp_path / "b").mkdir()
    with pytest.raises(TopoatError, match="already exists"):
        safe_extract(archive, tmp_path / "b")


def test_hostile_zip_members_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("tiny-imagenet-200/wnids.txt", b"n01443537\n")
        z.writestr("tiny-imagenet-200/../../evil", b"evil")
    with pytest.raises(TopoatError, match="'..'") as e:
        safe_extract(evil, tmp_path / "dest")
    one_line(e)
    with pytest.raises(TopoatError, match="'..'"):
        load_tiny_imagenet(str(evil), full_size=False, progress=False)
    assert not (tmp_path / "dest").exists() and not (tmp_path.parent / "evil").exists()

    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as z:
        info = zipfile.ZipInfo("data/link")
        info.create_system = 3
        info.external_attr = 0o120777 << 16  # S_IFLNK
        z.writestr(info, "/etc/passwd")
    with pytest.raises(TopoatError, match="link"):
        SafeZip(link)

    absolute = tmp_path / "absolute.zip"
    with zipfile.ZipFile(absolute, "w") as z:
        z.writestr(zipfile.ZipInfo("/abs/evil"), b"evil")
    with pytest.raises(TopoatError, match="absolute path"):
        safe_extract(absolute, tmp_path / "dest")

    big = write_zip(tmp_path / "big.zip", {"a.bin": b"\0" * 10000}, top="")
    with pytest.raises(TopoatError, match="exceeds"):
        safe_extract(big, tmp_path / "dest", max_member_bytes=1000)
    assert safe_extract(big, tmp_path / "dest").joinpath("a.bin").stat().st_size == 10000


# -- Tiny ImageNet ----------------------------------------------------------------------------------
def test_tiny_imagenet_from_zip_then_cache_then_folder(tmp_path, monkeypatch):
    archive = write_zip(tmp_path / "tiny-imagenet-200.zip", tiny_imagenet_files())
    ds = load_tiny_imagenet(str(archive), full_size=False, progress=False)
    assert ds.x_train.shape == (6, 3, 64, 64) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (3, 3, 64, 64) and ds.num_classes == 3
    assert ds.y_train.tolist() == [0, 0, 1, 1, 2, 2] and ds.y_test.tolist() == [2, 1, 0]
    assert ds.class_names == ["goldfish", "European fire salamander", "bullfrog"]
    # image 0 of class 1 is green; the grey JPEG became three equal channels
    assert (ds.x_train[2, 1].float().mean() > 240) and (ds.x_train[2, 0].float().mean() < 10)
    grey = ds.x_train[1].float()
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2]) and abs(grey.mean() - 128) < 3
    assert ds.x_test[0, 2].float().mean() > 240  # val_0 is annotated with the blue class
    assert len(ds.mean) == 3 and all(0 < s < 1 for s in ds.std)

    cache = tmp_path / "tiny-imagenet-200.decoded.npz"
    assert cache.is_file()

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache is fresh")

    monkeypatch.setattr(tiny_imagenet, "decode_jpeg", no_decoding)
    again = load_tiny_imagenet(str(tmp_path), full_size=False, progress=False)
    assert torch.equal(again.x_train, ds.x_train) and again.class_names == ds.class_names
    monkeypatch.setattr(tiny_imagenet, "decode_jpeg", decode_jpeg)

    extracted = safe_extract(archive, tmp_path / "extracted")
    from_folder = load_tiny_imagenet(str(extracted), full_size=False, progress=False)
    assert torch.equal(from_folder.x_train, ds.x_train) and torch.equal(from_folder.y_test, ds.y_test)
    assert (extracted / "tiny-imagenet-200.decoded.npz").is_file()

    with pytest.raises(TopoatError, match="expected 200 classes") as e:
        load_dataset("tiny-imagenet", str(archive))
    one_line(e)


def test_tiny_imagenet_bad_inputs(tmp_path):
    bad = write_zip(tmp_path / "bad.zip", tiny_imagenet_files(bad_annotation=True))
    with pytest.raises(TopoatError, match="val_annotations.txt"):
        load_tiny_imagenet(str(bad), full_size=False, progress=False)
    odd = write_zip(tmp_path / "odd.zip", tiny_imagenet_files(odd_size=True))
    with pytest.raises(TopoatError, match="48x48, expected 64x64"):
        load_tiny_imagenet(str(odd), full_size=False, progress=False)
    raw = (tmp_path / "bad.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TopoatError, match="corrupt or truncated") as e:
        load_tiny_imagenet(str(tmp_path / "cut.zip"), full_size=False, progress=False)
    one_line(e)
    with pytest.raises(TopoatError, match="data.download: true"):
        load_tiny_imagenet(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("damage", ["y_train", "x_train", "mean", "version", "names"])
def test_tiny_imagenet_damaged_cache_is_decoded_again(tmp_path, damage):
    archive = write_zip(tmp_path / "tiny-imagenet-200.zip", tiny_imagenet_files())
    ds = load_tiny_imagenet(str(archive), full_size=False, progress=False)
    cache = tmp_path / "tiny-imagenet-200.decoded.npz"
    with np.load(cache) as f:
        arrays = {k: f[k] for k in f.files}
    arrays[damage] = {
        "y_train": arrays["y_train"].astype(np.float32),
        "x_train": arrays["x_train"][:, 0],
        "mean": np.array([0.5]),
        "version": np.array([1, 1]),
        "names": arrays["names"][:1],
    }[damage]
    np.savez(cache, **arrays)  # the fingerprint still matches: only the content is wrong
    again = load_tiny_imagenet(str(archive), full_size=False, progress=False)
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_train, ds.y_train)
    assert again.y_train.dtype == torch.int64 and again.mean == ds.mean and again.class_names == ds.class_names


def test_tiny_imagenet_download(tmp_path, monkeypatch):
    archive = write_zip(tmp_path / "source.zip", tiny_imagenet_files())
    monkeypatch.setattr(tiny_imagenet, "URL", archive.as_uri())
    monkeypatch.setattr(tiny_imagenet, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    ds = load_tiny_imagenet(str(tmp_path / "dl"), download=True, full_size=False, progress=False)
    assert ds.x_train.shape[0] == 6 and (tmp_path / "dl" / "tiny-imagenet-200.zip").is_file()


def test_an_archive_named_as_an_official_one_must_match_its_published_md5(tmp_path, monkeypatch):
    members, _ = cifar_members(CIFAR10)
    good = write_tar(tmp_path / "cifar-10-binary.tar.gz", members, CIFAR10.folder)
    monkeypatch.setitem(archive.OFFICIAL_MD5, good.name, hashlib.md5(good.read_bytes()).hexdigest())
    assert load_cifar("cifar10", str(good), full_size=False).x_train.shape[0] == 15
    raw = bytearray(good.read_bytes())
    raw[5] ^= 1  # the gzip header's time stamp: no CRC covers it, the MD5 does
    good.write_bytes(raw)
    for read in (lambda: load_cifar("cifar10", str(good), full_size=False), lambda: safe_extract(good, tmp_path / "x")):
        with pytest.raises(TopoatError, match="md5 checksum mismatch .* not the official one") as e:
            read()
        one_line(e)
    assert not (tmp_path / "x").exists()


def test_a_flipped_byte_in_a_tar_gz_is_refused_by_extraction_too(tmp_path):
    source = tmp_path / "a.tar.gz"
    with tarfile.open(source, "w:gz") as tar:
        add_file(tar, "d/a.bin", np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    raw = source.read_bytes()
    for position in (len(raw) // 2, len(raw) - 6):  # inside the deflated member, and in gzip's CRC
        bad = tmp_path / f"bad{position}.tar.gz"
        bad.write_bytes(raw[:position] + bytes([raw[position] ^ 1]) + raw[position + 1 :])
        for read in (
            lambda bad=bad: read_tar_members(bad, lambda name: True),
            lambda bad=bad: safe_extract(bad, tmp_path / "x"),
        ):
            with pytest.raises(TopoatError, match="corrupt or truncated") as e:
                read()
            one_line(e)
        assert not (tmp_path / "x").exists()
