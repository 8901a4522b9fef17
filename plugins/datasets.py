"""The built-in datasets: ``mnist``, ``fashionmnist``, ``movingmnist``, ``imagefolder``,
``imageshards``, ``videofolder``, ``videoshards``, ``image_crops`` and ``video_crops``."""

from __future__ import annotations

from tok import hookimpl
from tok.data import (
    MNIST,
    FashionMNIST,
    ImageCrops,
    ImageFolder,
    ImageShards,
    MovingMNIST,
    VideoCrops,
    VideoFolder,
    VideoShards,
)


@hookimpl
def register_datasets(register):
    register(MNIST, name="mnist")
    register(FashionMNIST, name="fashionmnist", aliases=("fashion-mnist",))
    register(MovingMNIST, name="movingmnist", aliases=("moving-mnist",))
    register(ImageFolder, name="imagefolder", aliases=("folder",))
    register(ImageShards, name="imageshards")
    register(VideoFolder, name="videofolder", aliases=("videos",))
    register(VideoShards, name="videoshards", aliases=("webdataset",))
    register(ImageCrops, name="image_crops", aliases=("crops",))
    register(VideoCrops, name="video_crops")
