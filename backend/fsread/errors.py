"""Errors of the filesystem readers. Each carries one clear line and the errno a FUSE view uses."""

from __future__ import annotations

import errno as _errno

from ..errors import LaminaError


class FsReadError(LaminaError):
    """Base of every error raised while reading a filesystem inside a volume image."""

    errno = _errno.EIO


class UnsupportedFilesystem(FsReadError):
    """No readable filesystem, or one that uses a feature these readers do not implement."""

    errno = _errno.EOPNOTSUPP


class CorruptFilesystem(FsReadError):
    """An on-disk structure is damaged, inconsistent, or lies beyond the end of the image."""

    errno = _errno.EIO


class FileNotFound(FsReadError):
    errno = _errno.ENOENT


class NotADirectory(FsReadError):
    errno = _errno.ENOTDIR


class NotASymlink(FsReadError):
    errno = _errno.EINVAL


class NotARegularFile(FsReadError):
    """Contents were asked of a directory, symlink or special file."""

    errno = _errno.EISDIR


class InvalidRange(FsReadError):
    """A negative offset or length was asked for."""

    errno = _errno.EINVAL
