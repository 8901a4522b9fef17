"""Errors a user can cause. Every one is a :class:`TokError`.

The CLI (``tok.cli``) is the only place that turns these into exit codes: it
prints ``tok: error: <message>`` and exits non-zero. Messages name the bad
thing and say what to do about it.
"""

from __future__ import annotations

__all__ = [
    "TokError",
    "PluginError",
    "UnknownNameError",
    "DuplicateNameError",
    "ConfigError",
    "RecipeError",
    "DatasetError",
    "DatasetMissingError",
    "ImageError",
    "IndexRangeError",
    "TokenFileError",
    "TokenizerMismatchError",
    "OutputDirError",
    "FolderInUseError",
    "FileAccessError",
    "CheckpointError",
    "TrainingError",
]


class TokError(Exception):
    """Base class of every error a user of tok should see."""

    exit_code = 1


class PluginError(TokError):
    """A plugin failed to load or to register what it provides."""


class UnknownNameError(TokError, KeyError):
    """A registry look-up found no such name (the message suggests the closest)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(TokError):
    """Two plugins registered the same name; the message names both owners."""


class ConfigError(TokError):
    """Arguments to a component (quantizer, architecture, dataset) are invalid."""


class RecipeError(ConfigError):
    """A recipe has one or more problems; ``problems`` lists them all."""

    def __init__(self, problems: list[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            message = f"recipe problem{where}: {self.problems[0]}"
        else:
            message = f"{len(self.problems)} recipe problems{where}: " + "; ".join(self.problems)
        super().__init__(message)


class DatasetError(TokError):
    """A dataset or image folder cannot be used as it is."""


class DatasetMissingError(DatasetError):
    """A dataset is not on disk and could not be downloaded."""


class ImageError(DatasetError):
    """An image file cannot be decoded or does not fit the tokenizer."""


class IndexRangeError(TokError, ValueError):
    """Token indices outside a quantizer's codebook."""


class TokenFileError(TokError):
    """A token file or token folder is missing, malformed or of the wrong format."""


class TokenizerMismatchError(TokenFileError):
    """Tokens were produced by a different tokenizer than the one given."""


class OutputDirError(TokError):
    """An output folder holds something tok must not overwrite."""


class FolderInUseError(OutputDirError):
    """Another tok process is writing the same run or token folder (:mod:`tok.locks`)."""


class FileAccessError(TokError):
    """The operating system or a file-format library could not read or write a user's file
    (a full disk, a read-only folder …); the message names the path and the cause."""


class CheckpointError(TokError):
    """A run folder or checkpoint is missing, incomplete or unreadable."""


class TrainingError(TokError):
    """Training cannot go on (a non-finite loss): the run keeps its last checkpoint."""

    @classmethod
    def diverged(
        cls, run: object, *, step: int, what: str, saved: int | None, lr: float
    ) -> TrainingError:
        """The one-line error for the run folder ``run`` that diverged at (1-based)
        ``step``: ``what`` went non-finite; ``saved``: the step of the checkpoint on disk
        (``None``: none); ``lr``: the recipe's ``train.lr``."""
        if saved is None:
            kept = (
                f"nothing was saved (no checkpoint before step {step}; the run folder is removed)"
            )
            how = f"rerun with a lower train.lr (now {lr:g}) or train.grad_clip"
        else:
            kept = f"the checkpoint of step {saved} is kept"
            how = f"resume with a lower learning rate: tok train --resume {run} --set train.lr="
            how += f"{lr / 10:g}"
        return cls(f"training diverged at step {step}: {what}; {kept}; {how}")
