"""The one error tree of asyncjobs, plus the two exceptions job code raises on purpose.

Every error a user can meet derives from :class:`AsyncJobsError` and carries a stable
``code`` (the ``error.code`` of the HTTP API) and an HTTP ``status``.  The API maps an
exception to its JSON error in one place; the client maps the code back to the class, so a
library user catches the same exception the CLI prints.
"""

from __future__ import annotations


class AsyncJobsError(Exception):
    """Root of every asyncjobs error."""

    code = "error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ConfigError(AsyncJobsError):
    """The configuration file or an override is invalid; the message names the key path."""

    code = "config_error"
    status = 500

    def __init__(self, path: str, expected: str, found: object) -> None:
        self.path = path
        self.expected = expected
        self.found = found
        super().__init__(f"config {path}: expected {expected}, found {found!r}")


class BadRequest(AsyncJobsError):
    """The request could not be parsed at all (malformed JSON, wrong content)."""

    code = "bad_request"
    status = 400


class InvalidField(AsyncJobsError):
    """A field of a well-formed request has the wrong type or value."""

    code = "invalid_field"
    status = 422

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class Unauthorized(AsyncJobsError):
    code = "unauthorized"
    status = 401


class NotAllowed(AsyncJobsError):
    """A class or method outside the allow-list; raised before anything is imported."""

    code = "not_allowed"
    status = 403


class BadOrigin(AsyncJobsError):
    code = "bad_origin"
    status = 403


class BadHost(AsyncJobsError):
    code = "bad_host"
    status = 403


class JobNotFound(AsyncJobsError):
    code = "not_found"
    status = 404

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id}")


class WrongState(AsyncJobsError):
    """The job is not in a state that allows the operation (e.g. cancelling a finished job)."""

    code = "wrong_state"
    status = 409


class TooLarge(AsyncJobsError):
    code = "too_large"
    status = 413


class Unavailable(AsyncJobsError):
    """The host is shutting down or its storage cannot be written."""

    code = "unavailable"
    status = 503


class HostLocked(AsyncJobsError):
    """Another host already owns the data directory."""

    code = "host_locked"
    status = 503


class HostUnreachable(AsyncJobsError):
    """Client side: no host answered at the configured URL."""

    code = "unreachable"
    status = 503


class Retry(Exception):
    """Raised by job code to ask for another attempt, optionally after ``delay`` seconds.

    It still counts as an attempt, so ``max_attempts`` bounds it like any failure.
    """

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class Fail(Exception):
    """Raised by job code to fail the job at once, whatever attempts remain."""


ERRORS_BY_CODE: dict[str, type[AsyncJobsError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        InvalidField,
        Unauthorized,
        NotAllowed,
        BadOrigin,
        BadHost,
        JobNotFound,
        WrongState,
        TooLarge,
        Unavailable,
        HostLocked,
        HostUnreachable,
    )
}
