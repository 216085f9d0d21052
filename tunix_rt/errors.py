"""Errors a user can cause, each a message they can act on; and which errors are transient."""

from __future__ import annotations


class TunixRtError(Exception):
    """Base class: the message says what was wrong, where, and what to do."""


class NotFoundError(TunixRtError):
    """A run, evaluation or baseline that does not exist."""


class InvalidInputError(TunixRtError, ValueError):
    """Input that cannot be accepted, with the field or line named.

    ``field``, when given, is the field's name as the caller knows it (``data.name``),
    so that an HTTP answer can name it without reading it back out of the message.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RunNotEvaluableError(TunixRtError):
    """A run that is pending, failed or a dry run cannot be judged."""


class PredictionsError(TunixRtError):
    """A predictions file that is missing or malformed; the message names the line."""


class DatabaseNotMigratedError(TunixRtError):
    """The database schema is behind this version of tunix-rt."""


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: lost database connections and I/O hiccups.

    Bad input, a missing file and a judge's verdict are not transient: retrying
    them only delays the same error.
    """
    if isinstance(exc, TunixRtError):
        return False
    # Imported here so callers that never hit this path don't pay for SQLAlchemy.
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
    if isinstance(exc, sa_exc.DisconnectionError):
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError,
                        NotADirectoryError)):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))
