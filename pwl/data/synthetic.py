"""A deterministic, learnable synthetic image set for tests and quick runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from pwl.data.datamodule import ImageDataArgs, ImageDataModule, Images, Split, register_data


def make_synthetic(num: int, num_classes: int, in_chans: int, size: int, noise: float,
                   seed: int) -> Split:
    """Images = a smooth per-class pattern + per-image noise, as uint8.

    The class patterns come from ``seed`` only, so train and test share them;
    each split draws its own noise and labels from its own generator.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=torch.Generator().manual_seed(1234))
    patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.randint(0, num_classes, (num,), generator=g)
    x = patterns[labels] + noise * torch.randn(num, in_chans, size, size, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return Split(images, labels)


class SyntheticArgs(ImageDataArgs):
    num_train: Images = 2048
    num_test: Images = 512
    noise: float = Field(0.3, ge=0.0, le=100.0)
    data_seed: int = 0


@register_data(SyntheticArgs, name="synthetic")
class SyntheticDataModule(ImageDataModule):
    """Class-dependent patterns plus noise; any size, channels, classes and count."""

    name = "synthetic"

    def __init__(self, num_train: int = 2048, num_test: int = 512, image_size: int = 16,
                 in_chans: int = 3, num_classes: int = 10, noise: float = 0.3,
                 data_seed: int = 0, **kwargs) -> None:
        kwargs.setdefault("val_size", min(512, num_train // 4))
        super().__init__(image_size=image_size, **kwargs)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_train = num_train
        self.num_test = num_test
        self.noise = noise
        self.data_seed = data_seed
        self.mean = (0.5,) * in_chans
        self.std = (0.3,) * in_chans

    def load(self) -> tuple[Split, Split]:
        args = (self.num_classes, self.in_chans, self.image_size, self.noise)
        return (make_synthetic(self.num_train, *args, seed=self.data_seed),
                make_synthetic(self.num_test, *args, seed=self.data_seed + 1))
