"""The built-in datasets: ``mnist`` and ``imagefolder``."""

from __future__ import annotations

from tok import hookimpl
from tok.data import MNIST, ImageFolder


@hookimpl
def register_datasets(register):
    register(MNIST, name="mnist")
    register(ImageFolder, name="imagefolder", aliases=("folder",))
