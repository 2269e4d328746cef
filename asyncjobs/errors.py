"""The one error tree of asyncjobs, plus the two exceptions job code raises on purpose.

Every error a user can meet derives from :class:`AsyncJobsError` and carries a stable
``code`` (the ``error.code`` of the HTTP API).  These are domain errors: none knows about
HTTP.  The web layer maps each class to a status code in one table
(:data:`asyncjobs.web.responses.STATUS`) and sends ``wire_args()`` along; the client rebuilds
the same class from them with :func:`from_wire`, which calls the class's own constructor,
so a library user catches the same exception, with the same attributes, the CLI prints.
"""

from __future__ import annotations

from typing import Any


class AsyncJobsError(Exception):
    """Root of every asyncjobs error."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def wire_args(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this error with its constructor: sent in the
        API's error JSON as ``details`` (empty: the constructor takes only the message)."""
        return {}


class ConfigError(AsyncJobsError):
    """The configuration file or an override is invalid; the message names the key path."""

    code = "config_error"

    def __init__(self, path: str, expected: str, found: object) -> None:
        self.path = path
        self.expected = expected
        self.found = found
        super().__init__(f"config {path}: expected {expected}, found {found!r}")


class BadRequest(AsyncJobsError):
    """The request could not be parsed at all (malformed JSON, wrong content)."""

    code = "bad_request"


class InvalidField(AsyncJobsError):
    """A field of a well-formed request has the wrong type or value."""

    code = "invalid_field"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")

    def wire_args(self) -> dict[str, Any]:
        return {"field": self.field, "problem": self.problem}


class Unauthorized(AsyncJobsError):
    code = "unauthorized"


class NotAllowed(AsyncJobsError):
    """A class or method outside the allow-list; raised before anything is imported."""

    code = "not_allowed"


class BadOrigin(AsyncJobsError):
    code = "bad_origin"


class BadHost(AsyncJobsError):
    code = "bad_host"


class JobNotFound(AsyncJobsError):
    code = "not_found"

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id}")

    def wire_args(self) -> dict[str, Any]:
        return {"job_id": self.job_id}


class WrongState(AsyncJobsError):
    """The job is not in a state that allows the operation (e.g. cancelling a finished job)."""

    code = "wrong_state"


class TooLarge(AsyncJobsError):
    code = "too_large"


class Unavailable(AsyncJobsError):
    """The host is shutting down or its storage cannot be written."""

    code = "unavailable"


class HostLocked(AsyncJobsError):
    """Another host already owns the data directory."""

    code = "host_locked"


class HostUnreachable(AsyncJobsError):
    """Client side: no host answered at the configured URL."""

    code = "unreachable"


class BadResponse(AsyncJobsError):
    """Client side: the URL answered, but not with an asyncjobs API answer."""

    code = "bad_response"

    def __init__(self, url: str, status: int) -> None:
        self.url = url
        self.status = status
        super().__init__(f"{url} answered HTTP {status} without an asyncjobs error; "
                         "is it really an asyncjobs host?")


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


def from_wire(code: str, message: str, details: dict[str, Any] | None = None) -> AsyncJobsError:
    """The error an API error JSON describes, built by its class's own constructor.

    ``details`` are the class's ``wire_args()``; without them (or when they do not fit,
    e.g. an older host) the class is built from the message alone, or the root class is
    used for a code this version does not know.
    """
    cls = ERRORS_BY_CODE.get(code)
    if cls is not None and details:
        try:
            return cls(**details)
        except TypeError:
            pass
    if cls is not None and cls.wire_args is AsyncJobsError.wire_args:
        return cls(message)
    error = AsyncJobsError(message)  # unknown code, or a constructor we cannot satisfy
    error.code = code
    return error
