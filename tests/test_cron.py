"""Five-field cron: parsing errors and next firing times (pure, no clock needed)."""

from __future__ import annotations

import datetime as dt

import pytest

from asyncjobs.cron import CronError, CronExpr


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


SUNDAY_10_07 = at("2026-11-22T10:07:30")


@pytest.mark.parametrize(("expr", "expected"), [
    ("* * * * *", "2026-11-22T10:08:00"),
    ("*/15 * * * *", "2026-11-22T10:15:00"),
    ("0 3 * * *", "2026-11-23T03:00:00"),
    ("0 9-17 * * mon-fri", "2026-11-23T09:00:00"),
    ("30 4 1,15 * 5", "2026-11-27T04:30:00"),  # day 1 or 15, *or* a Friday (Vixie rule)
    ("0 0 * * 7", "2026-11-29T00:00:00"),  # 7 is Sunday too
    ("@monthly", "2026-12-01T00:00:00"),
    ("@hourly", "2026-11-22T11:00:00"),
    ("0 0 29 2 *", "2028-02-29T00:00:00"),
    ("5-20/5 10 * nov *", "2026-11-22T10:10:00"),
])
def test_next_after(expr: str, expected: str) -> None:
    assert CronExpr.parse(expr).next_after(SUNDAY_10_07) == at(expected)


def test_next_after_is_strictly_later() -> None:
    on_the_minute = at("2026-11-22T10:15:00")
    assert CronExpr.parse("*/15 * * * *").next_after(on_the_minute) == at("2026-11-22T10:30:00")


@pytest.mark.parametrize(("expr", "message"), [
    ("* * * *", "expected 5"),
    ("61 * * * *", "outside 0-59"),
    ("* 24 * * *", "outside 0-23"),
    ("* * 0 * *", "outside 1-31"),
    ("* * * 13 *", "outside 1-12"),
    ("*/0 * * * *", "bad step"),
    ("* * * * funday", "not a number"),
    ("5-1 * * * *", "outside"),
])
def test_invalid_expressions_say_why(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        CronExpr.parse(expr)


def test_impossible_date_never_fires() -> None:
    with pytest.raises(CronError, match="never fires"):
        CronExpr.parse("0 0 31 2 *").next_after(SUNDAY_10_07)
