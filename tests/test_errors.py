"""The error tree: domain errors carry no HTTP status; the web layer maps them in one table;
an error sent over the API comes back as the same class through its own constructor."""

from __future__ import annotations

import pytest

from asyncjobs import errors
from asyncjobs.errors import (
    ERRORS_BY_CODE,
    AsyncJobsError,
    InvalidField,
    JobNotFound,
    NotAllowed,
    WrongState,
    from_wire,
)
from asyncjobs.web.responses import STATUS, status_of


@pytest.mark.parametrize("error", [
    InvalidField("priority", "must be 'high', 'medium' or 'low'"),
    JobNotFound(17),
    NotAllowed("class 'os' is not in the allow-list"),
    WrongState("job 3 is completed"),
])
def test_an_error_survives_the_wire_with_its_attributes(error: AsyncJobsError) -> None:
    back = from_wire(error.code, error.message, error.wire_args())
    assert type(back) is type(error)
    assert back.message == error.message
    assert vars(back) == vars(error)


def test_an_unknown_code_or_missing_details_still_gives_an_error() -> None:
    unknown = from_wire("brand_new", "something new")
    assert type(unknown) is AsyncJobsError and unknown.code == "brand_new"
    older_host = from_wire("not_found", "no job with id 5")  # no details
    assert isinstance(older_host, AsyncJobsError) and older_host.message == "no job with id 5"
    assert type(from_wire("not_found", "x", {"nope": 1})) is AsyncJobsError


def test_no_error_class_knows_http_and_every_wire_class_has_a_status() -> None:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, AsyncJobsError)]
    assert not any("status" in vars(c) for c in classes)
    client_side = {"unreachable"}
    for code, cls in ERRORS_BY_CODE.items():
        assert code in client_side or any(c in STATUS for c in cls.__mro__), code
    assert status_of(JobNotFound(1)) == 404
    assert status_of(InvalidField("f", "p")) == 422
