"""In-memory image data modules.

Every split is held as a uint8 tensor (N, C, H, W) with int64 labels. A batch
is sliced from it in one indexing operation (no per-image Python work); the
conversion to float, augmentation and normalisation run after the batch is on
its device, so they use the GPU when there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import lightning as L
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader, Dataset

from pwl.config import Schema
from pwl.data.augment import PAD_MODES, random_crop, random_hflip, random_rotate
from pwl.errors import ConfigError
from pwl.registry import Registry

# Far above real datasets; they keep a stored config from asking for unbounded memory.
MAX_IMAGES = 1 << 24
MAX_BATCH = 1 << 16

Batch = Annotated[int, Field(ge=1, le=MAX_BATCH)]
Images = Annotated[int, Field(ge=1, le=MAX_IMAGES)]
PathStr = Annotated[str, Field(max_length=4096)]

DATA_MODULES: Registry[type[DataModule]] = Registry(
    "data module", package="pwl.data",
    fix="a stored data config may only name a registered data module; pass data=<name> instead")
register_data = DATA_MODULES.register


class DataModule(L.LightningDataModule):
    """What every pwl data module gives: batches of (inputs, targets) from raw loader
    batches (``preprocess``) and the shape of one input without the batch dim.

    Image modules give images (B, C, H, W) and labels (B,); text modules give tokens
    (B, L) and the next tokens (B, L).
    """

    name = "data"

    @property
    def input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def preprocess(self, inputs: torch.Tensor, train: bool) -> torch.Tensor:
        """A raw batch's inputs, on any device -> what the model takes."""
        raise NotImplementedError

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        inputs, targets = batch
        training = self.trainer is not None and self.trainer.training
        return self.preprocess(inputs, train=training), targets


class ImageDataArgs(Schema):
    """The arguments every ``ImageDataModule`` takes."""

    batch_size: Batch = 128
    eval_batch_size: Batch | None = None
    val_size: int = Field(5000, ge=0, le=MAX_IMAGES)
    seed: int = 0
    crop_padding: int = Field(0, ge=0, le=1024)
    crop_padding_mode: Literal["zeros", "reflect"] = "zeros"
    hflip: float = Field(0.0, ge=0.0, le=1.0)
    rotate_degrees: float = Field(0.0, ge=0.0, le=180.0)
    image_size: int | None = Field(None, ge=1, le=4096)
    in_chans: int | None = Field(None, ge=1, le=64)
    num_classes: int | None = Field(None, ge=1, le=1 << 20)
    num_workers: int = Field(0, ge=0, le=256)
    limit_train: Images | None = None


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


class TensorBatchDataset(Dataset):
    """A dataset that returns whole batches: the DataLoader passes all indices at once."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split.images[index], self.split.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.split.images[idx], self.split.labels[idx]


def _whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


class ImageDataModule(DataModule):
    """Base class: subclasses implement ``load()`` returning uint8 train and test splits.

    Args:
        batch_size: per-device batch size.
        eval_batch_size: batch size for validation and test (default ``batch_size``).
        val_size: images carved from the training split for validation (fixed seed).
        seed: seed of that carve-out.
        crop_padding: random-crop padding in pixels during training (0: off).
        crop_padding_mode: what fills that padding: ``zeros`` or ``reflect``.
        hflip: probability of a horizontal flip during training (0: off).
        rotate_degrees: random rotation in [-rotate_degrees, rotate_degrees] during
            training, applied before the crop (0: off).
        image_size: resize images to this size after loading (default: native size).
        num_workers: DataLoader workers (0 is right for in-memory tensors).
        limit_train: keep only this many training images (for quick runs).
    """

    name = "images"
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)
    native_size: int | None = None
    native_chans: int | None = None
    native_classes: int | None = None

    def __init__(self, batch_size: int = 128, eval_batch_size: int | None = None,
                 val_size: int = 5000, seed: int = 0, crop_padding: int = 0,
                 hflip: float = 0.0, image_size: int | None = None, in_chans: int | None = None,
                 num_classes: int | None = None, num_workers: int = 0,
                 limit_train: int | None = None, crop_padding_mode: str = "zeros",
                 rotate_degrees: float = 0.0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.seed = seed
        if crop_padding_mode not in PAD_MODES:
            raise ConfigError(f"data.crop_padding_mode={crop_padding_mode!r} is unknown; "
                              f"use one of {list(PAD_MODES)}")
        self.crop_padding = crop_padding
        self.crop_padding_mode = crop_padding_mode
        self.hflip = hflip
        self.rotate_degrees = rotate_degrees
        self.image_size = image_size or self.native_size
        self.num_workers = num_workers
        self.limit_train = limit_train
        for key, given, native in (("in_chans", in_chans, self.native_chans),
                                   ("num_classes", num_classes, self.native_classes)):
            if given is not None and native is not None and given != native:
                raise ConfigError(f"data.{key}={given} but {self.name} has {native}; "
                                  f"remove the override or set data.{key}={native}")
        self.in_chans = in_chans or self.native_chans
        self.num_classes = num_classes or self.native_classes
        self.splits: dict[str, Split] = {}

    def load(self) -> tuple[Split, Split]:
        """Returns the (train, test) splits as uint8 tensors."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train, test = self.load()
        if not 0 <= self.val_size < len(train):
            raise ConfigError(f"data.val_size={self.val_size} must be in [0, {len(train)})")
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = perm[:self.val_size], perm[self.val_size:]
        if self.limit_train:
            train_idx = train_idx[:self.limit_train]
        self.splits = {
            "train": Split(train.images[train_idx], train.labels[train_idx]),
            "val": Split(train.images[val_idx], train.labels[val_idx]),
            "test": test,
        }
        self._mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        self._std = torch.tensor(self.std).view(1, -1, 1, 1)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.image_size, self.image_size)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        if split == "val" and not len(self.splits["val"]):
            split = "test"
        return DataLoader(TensorBatchDataset(self.splits[split]),
                          batch_size=self.batch_size if shuffle else self.eval_batch_size,
                          shuffle=shuffle, drop_last=shuffle, collate_fn=_whole_batch,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def preprocess(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 (B, C, H, W) on any device -> normalised float, augmented if ``train``."""
        if train:
            # Rotation first, as in the reference code; flip and crop commute, so only the
            # rotation's place in the order changes the result.
            images = random_rotate(images, self.rotate_degrees)
            images = random_crop(images, self.crop_padding, self.crop_padding_mode)
            images = random_hflip(images, self.hflip)
        x = images.float().div_(255)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        mean, std = self._mean.to(x.device), self._std.to(x.device)
        return (x - mean) / std
