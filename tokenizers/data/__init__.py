"""Datasets: what a recipe's ``[data]`` table and ``tok encode SRC`` can name.

Every dataset is preloaded (or read shard by shard) into uint8 tensors
``(n, c, h, w)`` — videos ``(n, c, t, h, w)``; training samples batches from
that tensor, so data loading is never the bottleneck on small datasets.
"""

from .base import Dataset, Samples, data_root
from .folder import IMAGE_EXTENSIONS, ImageFolder, ImageSkippedWarning
from .mnist import MNIST
from .moving_mnist import MovingMNIST
from .shards import ImageShards
from .video import VIDEO_EXTENSIONS, VideoFolder, VideoShards, VideoSkippedWarning

__all__ = [
    "Dataset",
    "Samples",
    "data_root",
    "ImageFolder",
    "ImageShards",
    "ImageSkippedWarning",
    "IMAGE_EXTENSIONS",
    "MNIST",
    "MovingMNIST",
    "VideoFolder",
    "VideoShards",
    "VideoSkippedWarning",
    "VIDEO_EXTENSIONS",
]
