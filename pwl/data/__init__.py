"""Data modules: Fashion-MNIST (Debian's dataset-fashion-mnist), CIFAR-10/100 (torchvision),
synthetic images (tests), and character-level text (the KJV from Debian's bible-kjv)."""

from pwl.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from pwl.data.datamodule import DataModule, ImageDataModule, Split
from pwl.data.fashion_mnist import FashionMNISTDataModule
from pwl.data.kjv import TextDataModule
from pwl.data.synthetic import SyntheticDataModule

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "DataModule", "FashionMNISTDataModule",
           "ImageDataModule", "Split", "SyntheticDataModule", "TextDataModule"]
