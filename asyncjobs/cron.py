"""Five-field cron expressions (minute hour day-of-month month day-of-week), in UTC.

Pure functions only: ``CronExpr.parse("*/15 9-17 * * mon-fri").next_after(ts)``.  Supports
``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, lists ``a,b``, month and weekday
names, and ``@hourly`` / ``@daily`` / ``@weekly`` / ``@monthly`` / ``@yearly``.  As in Vixie
cron, when both day-of-month and day-of-week are restricted a day matching either fires.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

_NAMES = {
    3: {m: i for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
        start=1)},
    4: {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
_BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
            "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
            "@hourly": "0 * * * *"}
_SEARCH_DAYS = 366 * 5  # every valid expression fires within a few years (Feb 29 included)


class CronError(ValueError):
    """The expression is not valid five-field cron."""


def _value(field: int, text: str) -> int:
    text = text.lower()
    if text in _NAMES.get(field, {}):
        return _NAMES[field][text]
    if not text.isdigit():
        raise CronError(f"{text!r} is not a number or a name")
    return int(text)


def _field(field: int, text: str) -> frozenset[int]:
    low, high = _BOUNDS[field]
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise CronError(f"bad step in {part!r}")
        if body == "*":
            start, end = low, high
        elif "-" in body:
            a, b = body.split("-", 1)
            start, end = _value(field, a), _value(field, b)
        else:
            start = end = _value(field, body)
            if step is not None:
                end = high
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise CronError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step or 1))
    if field == 4 and 7 in values:  # both 0 and 7 mean Sunday
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class CronExpr:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> CronExpr:
        expanded = _ALIASES.get(text.strip().lower(), text)
        fields = expanded.split()
        if len(fields) != 5:
            raise CronError(f"{text!r} has {len(fields)} fields; expected 5 "
                            "(minute hour day month weekday)")
        minutes, hours, days, months, weekdays = (_field(i, f) for i, f in enumerate(fields))
        return cls(text, minutes, hours, days, months, weekdays,
                   any_day=fields[2] == "*", any_weekday=fields[4] == "*")

    def _day_matches(self, day: dt.date) -> bool:
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def next_after(self, ts: float) -> float:
        """The first firing time strictly after ``ts`` (epoch seconds), at second 0."""
        start = dt.datetime.fromtimestamp(ts, dt.UTC).replace(second=0, microsecond=0)
        start += dt.timedelta(minutes=1)
        day = start.date()
        for offset in range(_SEARCH_DAYS):
            current = day + dt.timedelta(days=offset)
            if current.month not in self.months or not self._day_matches(current):
                continue
            for hour in sorted(self.hours):
                for minute in sorted(self.minutes):
                    moment = dt.datetime(current.year, current.month, current.day, hour, minute,
                                         tzinfo=dt.UTC)
                    if moment >= start:
                        return moment.timestamp()
        raise CronError(f"{self.text!r} never fires")
