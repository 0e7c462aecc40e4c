"""Typed errors of vidcolor.

The library raises these; only `cli.py` turns them into one-line messages and exit codes.
This module imports nothing from the package so every layer can use it.
"""


class VidcolorError(Exception):
    """Base class for every error vidcolor raises on purpose (a user-facing, one-line message)."""


class VideoOpenError(VidcolorError):
    """The input film or image cannot be opened or decoded."""


class ReferenceImageError(VidcolorError):
    """The colour reference still is missing, unreadable or unusable."""


class WeightsError(VidcolorError):
    """A model checkpoint is unknown, missing, corrupted or does not fit its architecture."""


class EncodeError(VidcolorError):
    """The output cannot be written: bad path, unsupported codec/container, disk full."""


class OptionsError(VidcolorError, ValueError):
    """An option has a value outside its allowed range or set."""


class QueueError(VidcolorError):
    """The reel queue is unreachable, or a queue request cannot be met (unknown job, bad URL)."""
