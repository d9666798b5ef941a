"""When a side input's handler runs: `@every <duration>` or a 5-field cron expression (UTC).

`@every` takes Go-style durations (`500ms`, `10s`, `1m30s`, `2h`), as Numaflow's triggers do.
Cron fields are minute, hour, day of month, month, day of week; each is `*`, a number, a range
`a-b`, a step `*/n`, `a-b/n` or `a/n`, or a comma-separated list of those; months and weekdays may
be written by name (`jan`, `mon`). As in Vixie cron, when both day fields are restricted a day
matching either one fires. `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly` are shorthands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
# (name, low, high, names for low..)
_FIELDS = (("minute", 0, 59, None), ("hour", 0, 23, None), ("day of month", 1, 31, None),
           ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))
_SEARCH_YEARS = 5  # a day-of-month/month pair that never meets (Feb 30) is caught by this bound


class Schedule(Protocol):
    def next_after(self, t: float) -> float:
        """The first firing time (epoch seconds) strictly after `t`."""
        ...


@dataclass(frozen=True)
class Every:
    seconds: float

    def next_after(self, t: float) -> float:
        return t + self.seconds


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day-of-month field started with `*`
    any_weekday: bool  # day-of-week field started with `*`

    def _day_matches(self, dt: datetime) -> bool:
        dom = dt.day in self.days
        dow = (dt.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def next_after(self, t: float) -> float:
        dt = datetime.fromtimestamp(t, tz=timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = dt.replace(year=dt.year + _SEARCH_YEARS, day=1)
        # Skip whole months, days and hours that cannot match, so a search costs few steps.
        while dt < limit:
            if dt.month not in self.months:
                dt = (dt.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(dt):
                dt = dt.replace(hour=0, minute=0) + timedelta(days=1)
            elif dt.hour not in self.hours:
                dt = dt.replace(minute=0) + timedelta(hours=1)
            elif dt.minute not in self.minutes:
                dt += timedelta(minutes=1)
            else:
                return dt.timestamp()
        raise ValueError("the cron expression never fires")


def parse_duration(text: str) -> float:
    """Go-style duration: one or more `<number><unit>` parts, units ms, s, m, h."""
    compact = text.replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration (use e.g. 500ms, 10s, 1m30s, 2h)")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _value(token: str, name: str, low: int, high: int, names: list[str] | None) -> int:
    if names and token.lower() in names:
        return names.index(token.lower()) + low
    if not token.isdigit():
        raise ValueError(f"cron {name} field: {token!r} is not a number" + (f" or a name ({', '.join(names)})" if names else ""))
    n = int(token)
    if not low <= n <= high:
        raise ValueError(f"cron {name} field: {n} is out of range {low}-{high}")
    return n


def _field(text: str, name: str, low: int, high: int, names: list[str] | None) -> frozenset[int]:
    out: set[int] = set()
    for item in text.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"cron {name} field: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _value(a, name, low, high, names), _value(b, name, low, high, names)
            if first > last:
                raise ValueError(f"cron {name} field: range {base!r} runs backwards")
        else:
            first = _value(base, name, low, high, names)
            last = high if step_text else first
        out.update(range(first, last + 1, step))
    return frozenset(out)


def parse_cron(expr: str) -> Cron:
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expr!r} must have 5 fields (minute hour day-of-month month "
                         f"day-of-week), found {len(fields)}")
    sets = [_field(text, *spec) for text, spec in zip(fields, _FIELDS)]
    weekdays = frozenset(d % 7 for d in sets[4])  # 7 is Sunday too
    # Vixie cron: a day field starting with `*` (`*`, `*/2`) counts as unrestricted for the OR rule.
    return Cron(sets[0], sets[1], sets[2], sets[3], weekdays, any_day=fields[2].startswith("*"),
                any_weekday=fields[4].startswith("*"))


def parse_schedule(text: str) -> Schedule:
    """`@every <duration>`, a cron shorthand such as `@hourly`, or a 5-field cron expression."""
    text = text.strip()
    if text.startswith("@every"):
        seconds = parse_duration(text[len("@every"):].strip())
        if seconds <= 0:
            raise ValueError("@every needs a positive duration")
        return Every(seconds)
    if text.startswith("@"):
        if text not in _ALIASES:
            raise ValueError(f"unknown schedule {text!r} (use @every <duration>, {', '.join(_ALIASES)} "
                             "or a 5-field cron expression)")
        text = _ALIASES[text]
    cron = parse_cron(text)
    cron.next_after(0)  # raises for an expression that never fires, e.g. Feb 30
    return cron
