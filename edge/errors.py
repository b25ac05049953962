"""One exception family for the whole project.

The CLIs turn a ``FeatherFaceError`` into a single line on stderr and its ``exit_code``;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FeatherFaceError(Exception):
    """Base of every error a user can act on. ``str(err)`` is the one-line message."""

    exit_code: int = 1


class ConfigError(FeatherFaceError):
    """A config file, table or key is missing or malformed (the message names the key)."""

    exit_code = 2


class ModelError(FeatherFaceError):
    """A model file is missing, corrupt, or lacks the FeatherFace metadata contract."""

    exit_code = 2


class SourceError(FeatherFaceError):
    """A frame source could not be opened or read."""

    exit_code = 3


class DatasetError(FeatherFaceError):
    """A dataset is empty, unreadable, or in an unknown layout."""

    exit_code = 2
