"""The built-in datasets: ``mnist``, ``movingmnist``, ``imagefolder``, ``imageshards``,
``videofolder``, ``videoshards`` and ``image_crops``."""

from __future__ import annotations

from tok import hookimpl
from tok.data import (
    MNIST,
    ImageCrops,
    ImageFolder,
    ImageShards,
    MovingMNIST,
    VideoFolder,
    VideoShards,
)


@hookimpl
def register_datasets(register):
    register(MNIST, name="mnist")
    register(MovingMNIST, name="movingmnist", aliases=("moving-mnist",))
    register(ImageFolder, name="imagefolder", aliases=("folder",))
    register(ImageShards, name="imageshards")
    register(VideoFolder, name="videofolder", aliases=("videos",))
    register(VideoShards, name="videoshards", aliases=("webdataset",))
    register(ImageCrops, name="image_crops", aliases=("crops",))
