import gzip
from pathlib import Path

import pytest
import torch

from pwl.data import FashionMNISTDataModule, SyntheticDataModule
from pwl.data.augment import random_crop, random_hflip, random_rotate, rotate
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


def test_reflect_crop_takes_windows_of_the_mirrored_image():
    x = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=torch.uint8).view(1, 1, 3, 3)
    # Mirrored about the edge pixels, which are not repeated (torchvision's "reflect").
    padded = torch.tensor([[5, 4, 5, 6, 5],
                           [2, 1, 2, 3, 2],
                           [5, 4, 5, 6, 5],
                           [8, 7, 8, 9, 8],
                           [5, 4, 5, 6, 5]], dtype=torch.uint8)
    windows = [padded[r:r + 3, c:c + 3] for r in range(3) for c in range(3)]
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        y = random_crop(x, 1, "reflect")[0, 0]
        matches = [i for i, w in enumerate(windows) if torch.equal(y, w)]
        assert matches, y
        seen.update(matches)
    assert seen == set(range(9))
    assert y.dtype == torch.uint8


def test_crop_padding_mode_is_checked():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ConfigError, match="data.crop_padding_mode='mirror'.*zeros"):
        random_crop(x, 1, "mirror")
    with pytest.raises(ConfigError, match="data.crop_padding=4 must be smaller"):
        random_crop(x, 4, "reflect")
    with pytest.raises(ConfigError, match="data.crop_padding_mode='mirror'"):
        SyntheticDataModule(crop_padding_mode="mirror")


def test_rotation_by_zero_is_the_identity():
    x = torch.randint(0, 256, (4, 3, 5, 7), dtype=torch.uint8)
    assert torch.equal(rotate(x, torch.zeros(4)), x)
    assert random_rotate(x, 0) is x


def test_rotation_by_quarter_turns_matches_rot90_per_image():
    x = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=torch.uint8).view(1, 1, 3, 3)
    # Counter-clockwise, as torchvision's rotate: the top row becomes the left column.
    assert torch.equal(rotate(x, torch.tensor([90.0]))[0, 0],
                       torch.tensor([[3, 6, 9], [2, 5, 8], [1, 4, 7]], dtype=torch.uint8))
    batch = torch.randint(0, 256, (4, 2, 4, 4), dtype=torch.uint8)
    y = rotate(batch, torch.tensor([0.0, 90.0, 180.0, -90.0]))
    for i, k in enumerate((0, 1, 2, -1)):
        assert torch.equal(y[i], torch.rot90(batch[i], k, dims=(-2, -1)))


def test_random_rotation_stays_within_its_degrees():
    # A single bright pixel off the centre lands at angle a on a circle; corners move most.
    x = torch.zeros(256, 1, 21, 21, dtype=torch.uint8)
    x[:, :, 10, 20] = 255  # right edge, on the centre row
    torch.manual_seed(0)
    y = random_rotate(x, 15)
    rows = torch.stack([torch.nonzero(img[0])[0, 0] for img in y]).float()
    # sin(15 deg) * 10 pixels = 2.6: the pixel moves at most 3 rows, and both ways.
    assert rows.min() >= 7 and rows.max() <= 13 and rows.min() < 10 < rows.max()


def test_hflip_flips_exactly_the_chosen_images():
    x = torch.randn(64, 1, 3, 3)
    y = random_hflip(x, 0.5)
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 64


def test_rotation_and_reflect_crop_reach_the_batches_only_in_training():
    dm = SyntheticDataModule(num_train=64, num_test=16, image_size=8, val_size=8,
                             rotate_degrees=15, crop_padding=2, crop_padding_mode="reflect")
    dm.setup()
    x = dm.splits["train"].images[:32]
    plain = SyntheticDataModule(num_train=64, num_test=16, image_size=8, val_size=8)
    plain.setup()
    ev = dm.preprocess(x, train=False)
    assert torch.equal(ev, plain.preprocess(x, train=False))
    torch.manual_seed(1)
    assert not torch.equal(dm.preprocess(x, train=True), ev)


def test_channel_override_is_checked():
    with pytest.raises(ConfigError, match="data.in_chans=3 but fashion_mnist has 1"):
        FashionMNISTDataModule(in_chans=3)
