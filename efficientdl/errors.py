"""User-facing errors.

Every error that a user can cause with bad input (a wrong path, a corrupt file, a
bad recipe, a shape mismatch) is raised as an :class:`EdlError`.  The command line
prints its message on one line and exits with status 2; the Python API lets it
propagate so that callers can catch it.
"""


class EdlError(Exception):
    """Base class of all errors caused by bad input; the message is one line."""


class DataError(EdlError):
    """A data directory or data file is missing or malformed."""


class FormatError(EdlError):
    """A compressed file is truncated, corrupted, of another version or not a container."""


class RecipeError(EdlError):
    """A compression recipe is malformed or names something that does not exist."""


class ModelError(EdlError):
    """An unknown model name or a model whose parameters do not match."""


class DependencyError(EdlError):
    """An optional package that the requested feature needs is not installed (the message says how to install it)."""
