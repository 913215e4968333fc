import gzip
from pathlib import Path

import pytest
import torch

from pwl.data import FashionMNISTDataModule, SyntheticDataModule
from pwl.data.augment import random_crop, random_hflip
from pwl.data.fashion_mnist import DEBIAN_DIR, read_fashion_mnist, read_idx
from pwl.errors import ConfigError, DataError

HAVE_FMNIST = Path(DEBIAN_DIR, "train-images-idx3-ubyte.gz").exists()


@pytest.mark.skipif(not HAVE_FMNIST, reason=f"Debian's dataset-fashion-mnist is not in "
                    f"{DEBIAN_DIR} (make install puts it there)")
def test_fashion_mnist_reader_counts():
    train, test = read_fashion_mnist(DEBIAN_DIR)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_val_split_is_fixed_by_seed():
    a = FashionMNISTDataModule(val_size=1000, seed=3)
    b = FashionMNISTDataModule(val_size=1000, seed=3)
    a.setup(), b.setup()
    assert len(a.splits["train"]) == 59000 and len(a.splits["val"]) == 1000
    assert torch.equal(a.splits["val"].labels, b.splits["val"].labels)
    x, y = next(iter(a.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (128,)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    dm = FashionMNISTDataModule(root=str(tmp_path / "none"), data_dir=str(tmp_path),
                                download=False)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        dm.setup()


def test_corrupt_idx_file_is_named(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                + b"\x00" * 100)
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(bad)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=str(bad)):
        read_idx(bad)


def test_synthetic_is_deterministic_and_configurable():
    a = SyntheticDataModule(num_train=300, num_test=50, image_size=12, in_chans=2,
                            num_classes=4, val_size=60)
    b = SyntheticDataModule(num_train=300, num_test=50, image_size=12, in_chans=2,
                            num_classes=4, val_size=60)
    a.setup(), b.setup()
    assert a.splits["train"].images.shape == (240, 2, 12, 12)
    assert torch.equal(a.splits["train"].images, b.splits["train"].images)
    assert set(a.splits["test"].labels.tolist()) <= set(range(4))
    assert not torch.equal(a.splits["train"].images[:50], a.splits["test"].images)


def test_preprocess_normalises_and_augments_only_in_training():
    dm = SyntheticDataModule(num_train=64, num_test=16, image_size=8, in_chans=1,
                             crop_padding=2, hflip=0.5, val_size=8)
    dm.setup()
    x = dm.splits["train"].images[:32]
    ev = dm.preprocess(x, train=False)
    assert ev.dtype == torch.float32 and torch.equal(ev, dm.preprocess(x, train=False))
    torch.manual_seed(1)
    assert not torch.equal(dm.preprocess(x, train=True), ev)


def test_random_crop_shifts_each_image():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    torch.manual_seed(0)
    y = random_crop(x, 1)
    assert y.shape == x.shape
    for i in range(2):
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        windows = [padded[:, r:r + 4, c:c + 4] for r in range(3) for c in range(3)]
        assert any(torch.equal(y[i], w) for w in windows)


def test_hflip_flips_exactly_the_chosen_images():
    x = torch.randn(64, 1, 3, 3)
    y = random_hflip(x, 0.5)
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 64


def test_channel_override_is_checked():
    with pytest.raises(ConfigError, match="data.in_chans=3 but fashion_mnist has 1"):
        FashionMNISTDataModule(in_chans=3)
