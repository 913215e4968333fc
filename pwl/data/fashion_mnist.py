"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` idx files (or torchvision)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from pwl.data.datamodule import ImageDataArgs, ImageDataModule, PathStr, Split, register_data
from pwl.errors import DataError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
HOW_TO_GET = ("install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; "
              "run `apt-get update` first on a fresh machine), or run once with internet and "
              "data.download=true, or point data.root at a folder holding the four idx .gz files")


def read_idx(path: Path) -> np.ndarray:
    """Reads a (possibly gzipped) idx file into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}; the file is corrupt, reinstall it "
                        f"({HOW_TO_GET})") from None
    if len(data) < 4:
        raise DataError(f"{path} is truncated ({len(data)} bytes); reinstall it")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{path} is not a uint8 idx file (header {data[:4].hex()}); "
                        "reinstall it")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} bytes of data but its header says "
                        f"{shape}; the file is truncated or corrupt, reinstall it")
    return body.reshape(shape)


def find_idx_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        if all((d / name).exists() for pair in FILES.values() for name in pair):
            return d
    return None


def read_fashion_mnist(root: str | Path) -> tuple[Split, Split]:
    """Reads the four idx files in ``root`` into (train, test) splits of (N, 1, 28, 28)."""
    root = Path(root)
    splits = []
    for split, (img_name, lbl_name) in FILES.items():
        images = read_idx(root / img_name)
        labels = read_idx(root / lbl_name)
        if images.ndim != 3 or len(images) != len(labels):
            raise DataError(f"{root}: {split} has {len(images)} images of shape "
                            f"{images.shape[1:]} and {len(labels)} labels; reinstall the data")
        splits.append(Split(torch.from_numpy(images.copy()).unsqueeze(1),
                            torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1]


class FashionMNISTArgs(ImageDataArgs):
    root: PathStr = DEBIAN_DIR
    data_dir: PathStr = "data"
    download: bool = True


@register_data(FashionMNISTArgs, name="fashion_mnist")
class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST, 60,000 train / 10,000 test grayscale 28x28 images in 10 classes.

    Looks for the idx files in ``root`` (Debian's package path by default), then
    in ``data_dir`` (torchvision's layout); downloads with torchvision when
    ``download`` is set and the network allows, else stops with instructions.
    """

    name = "fashion_mnist"
    mean = (0.2860,)
    std = (0.3530,)
    native_size = 28
    native_chans = 1
    native_classes = 10

    def __init__(self, root: str = DEBIAN_DIR, data_dir: str = "data", download: bool = True,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.data_dir = data_dir
        self.download = download

    def load(self) -> tuple[Split, Split]:
        tv_raw = Path(self.data_dir) / "FashionMNIST" / "raw"
        found = find_idx_dir([Path(self.root), tv_raw])
        if found is None and self.download:
            try:
                from torchvision.datasets import FashionMNIST
                FashionMNIST(self.data_dir, train=True, download=True)
            except Exception as e:  # any network or disk failure ends in the same advice
                raise DataError(f"Fashion-MNIST is not in {self.root} or {tv_raw} and the "
                                f"download failed ({type(e).__name__}); {HOW_TO_GET}") from None
            found = find_idx_dir([tv_raw])
        if found is None:
            raise DataError(f"Fashion-MNIST is not in {self.root} or {tv_raw}; {HOW_TO_GET}")
        return read_fashion_mnist(found)
