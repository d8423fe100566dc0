"""Errors a user can act on. Each carries one clear line for the CLI, TUI and API."""

from __future__ import annotations


class LaminaError(Exception):
    """Base of every error lamina reports to a user as a single line."""

    exit_code = 1


class UsageError(LaminaError):
    """The request itself is wrong (bad argument, unknown option value)."""

    exit_code = 2


class RepositoryNotFound(LaminaError):
    pass


class RepositoryExists(LaminaError):
    pass


class WrongPassword(LaminaError):
    pass


class PasswordRequired(LaminaError):
    pass


class UnsupportedFormat(LaminaError):
    pass


class PointNotFound(LaminaError):
    pass


class CorruptObject(LaminaError):
    """An object exists but its content does not check out (hash, tag or structure)."""


class MissingObject(LaminaError):
    """An object a restore point references is not in the repository."""


class SourceError(LaminaError):
    """The volume being backed up cannot be read as asked."""


class ChangedRangesError(LaminaError):
    """Changed-block ranges that cannot be trusted (overlap, order, bounds)."""


class Cancelled(LaminaError):
    """A job was cancelled by its user; nothing of it was committed."""

    exit_code = 130


class StorageUnavailable(LaminaError):
    """The storage endpoint cannot be reached or refuses every attempt."""
