"""vidcolor: colourise black-and-white film from one colour reference still.

Public API: `colorize_video` (a film or still file in, a file out), `colorize_image` (one picture
in memory), and the reusable `Colorizer` with `load_model` (encode a reference once, colourise
many frames). Options are frozen dataclasses; every error is a `VidcolorError`.
"""

__version__ = "0.1.0"

# First, before anything imports torch: OpenMP reads its wait policy only when it loads.
from .runtime import PROCESS_TUNING  # noqa: F401  # isort: skip
from .colorize import ColorizeOptions, Colorizer
from .encode import EncodeOptions
from .errors import (
    EncodeError,
    OptionsError,
    ReferenceImageError,
    VidcolorError,
    VideoOpenError,
    WeightsError,
)
from .pipeline import PipelineOptions, colorize_image, colorize_video, preset_options
from .temporal import TemporalOptions
from .weights import available_models, load_model

__all__ = [
    "ColorizeOptions", "Colorizer", "EncodeError", "EncodeOptions", "OptionsError",
    "PipelineOptions", "ReferenceImageError", "TemporalOptions", "VidcolorError", "VideoOpenError",
    "WeightsError", "__version__", "available_models", "colorize_image", "colorize_video",
    "load_model", "preset_options",
]
