"""vidcolor: colourise black-and-white film from one colour reference still."""

__version__ = "0.1.0"
