"""CIFAR-10 and CIFAR-100 through torchvision, held in memory as uint8."""

from __future__ import annotations

import torch

from pwl.data.datamodule import ImageDataArgs, ImageDataModule, PathStr, Split, register_data
from pwl.errors import DataError


class CIFARArgs(ImageDataArgs):
    data_dir: PathStr = "data"
    download: bool = False


class _CIFARDataModule(ImageDataModule):
    native_size = 32
    native_chans = 3
    dataset_cls_name = ""

    def __init__(self, data_dir: str = "data", download: bool = False, **kwargs) -> None:
        kwargs.setdefault("crop_padding", 4)
        kwargs.setdefault("hflip", 0.5)
        super().__init__(**kwargs)
        self.data_dir = data_dir
        self.download = download

    def load(self) -> tuple[Split, Split]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.dataset_cls_name)
        splits = []
        for train in (True, False):
            try:
                ds = cls(self.data_dir, train=train, download=self.download)
            except Exception as e:  # torchvision raises RuntimeError or URLError
                raise DataError(
                    f"{self.name} is not in data.data_dir={self.data_dir!r} ({e}); put the "
                    f"python-version archive there, or run with internet and "
                    "data.download=true") from None
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            splits.append(Split(images, torch.tensor(ds.targets, dtype=torch.int64)))
        return splits[0], splits[1]


@register_data(CIFARArgs, name="cifar10")
class CIFAR10DataModule(_CIFARDataModule):
    name = "cifar10"
    dataset_cls_name = "CIFAR10"
    native_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


@register_data(CIFARArgs, name="cifar100")
class CIFAR100DataModule(_CIFARDataModule):
    name = "cifar100"
    dataset_cls_name = "CIFAR100"
    native_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
