"""The error classes of the toolkit: one base for a user's mistake, so a CLI can tell bad input from a bug.

Every ``main`` catches :class:`InputError` alone and prints its one line; any other exception is a bug and
keeps its traceback.

>>> from ood.errors import InputError, FeatureFileError
>>> issubclass(FeatureFileError, InputError)
True
"""
from __future__ import annotations


class InputError(ValueError):
    """A user's mistake (a bad file, parameter or list); the message names it and says what was expected."""


class FeatureFileError(InputError):
    """A feature, head or store file that cannot be used; the message names the file and the problem."""


class ListFormatError(InputError):
    """A list file that cannot be read in the asked format; the message names the file and the line."""


class ImageError(InputError):
    """An image that cannot be read or decoded; the message names its path."""


class ParameterError(InputError):
    """A hyperparameter or option with a value outside what it allows; the message names it and the range."""


class NotFittedError(InputError, AttributeError):
    """A detector used before ``fit`` (as scikit-learn's ``NotFittedError``)."""
