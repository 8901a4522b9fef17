"""Datasets: what a recipe's ``[data]`` table and ``tok encode SRC`` can name.

A dataset reads its items by key into uint8 tensors ``(n, c, h, w)`` — videos
``(n, c, t, h, w)``. Training either preloads the whole split (small datasets:
``Dataset.preload``) or streams each step's items through DataLoader workers
(:mod:`tok.data.batches`).
"""

from .base import Dataset, Samples, data_root
from .crops import ImageCrops
from .folder import IMAGE_EXTENSIONS, ImageFolder, ImageSkippedWarning
from .mnist import MNIST, FashionMNIST
from .moving_mnist import MovingMNIST
from .shards import ImageShards
from .video import VIDEO_EXTENSIONS, VideoFolder, VideoShards, VideoSkippedWarning
from .video_crops import VideoCrops

__all__ = [
    "Dataset",
    "Samples",
    "data_root",
    "ImageCrops",
    "ImageFolder",
    "ImageShards",
    "ImageSkippedWarning",
    "IMAGE_EXTENSIONS",
    "MNIST",
    "FashionMNIST",
    "MovingMNIST",
    "VideoCrops",
    "VideoFolder",
    "VideoShards",
    "VideoSkippedWarning",
    "VIDEO_EXTENSIONS",
]
