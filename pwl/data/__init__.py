"""Data modules: Fashion-MNIST (Debian's dataset-fashion-mnist), CIFAR-10/100 (torchvision), synthetic (tests)."""

from pwl.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from pwl.data.datamodule import ImageDataModule, Split
from pwl.data.fashion_mnist import FashionMNISTDataModule
from pwl.data.synthetic import SyntheticDataModule

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "FashionMNISTDataModule",
           "ImageDataModule", "Split", "SyntheticDataModule"]
