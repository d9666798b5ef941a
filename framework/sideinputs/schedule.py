"""When a side input's handler runs: `@every <duration>` or a 5-field cron expression (UTC).

`@every` takes Go-style durations (`500ms`, `10s`, `1m30s`, `2h`), as Numaflow's triggers do:
one or more parts, each a duration in the spec's own grammar. Cron fields are minute, hour, day
of month, month, day of week; each is `*`, a number, a range `a-b`, a step `*/n`, `a-b/n` or
`a/n`, or a comma-separated list of those; months and weekdays may be written by name (`jan`,
`mon`). As in Vixie cron, when both day fields are restricted a day matching either one fires.
`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly` are shorthands.

The firing times come from cronsim (a maintained cron library); this module only checks that an
expression stays within the grammar above (cronsim also takes seconds, `L`, `#`) and says what
is wrong with one that does not, field by field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from cronsim import CronSim, CronSimError

# The spec's duration grammar (`500ms`, `2s`, `5m`, `1h`): one grammar for every duration.
# The spec module imports this one lazily (to validate schedules), never at import time.
from framework.spec.types import parse_duration as spec_duration

_DURATION_PART = re.compile(r"\d+(?:\.\d+)?(?:ms|s|m|h)")
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
# (name, low, high, names for low..)
_FIELDS = (("minute", 0, 59, None), ("hour", 0, 23, None), ("day of month", 1, 31, None),
           ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))


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
    expr: str  # 5 fields, within the grammar above

    def next_after(self, t: float) -> float:
        # cronsim starts strictly after the (whole-second) time it is given.
        return next(CronSim(self.expr, datetime.fromtimestamp(t, tz=UTC))).timestamp()


def parse_duration(text: str) -> float:
    """Go-style duration: one or more `<number><unit>` parts, units ms, s, m, h."""
    compact = text.replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(parts) != compact:
        raise ValueError(f"{text!r} is not a duration (use e.g. 500ms, 10s, 1m30s, 2h)")
    return sum(spec_duration(part) for part in parts)


def _check_value(token: str, name: str, low: int, high: int, names: list[str] | None) -> int:
    if names and token.lower() in names:
        return names.index(token.lower()) + low
    if not token.isdigit():
        named = f" or a name ({', '.join(names)})" if names else ""
        raise ValueError(f"cron {name} field: {token!r} is not a number{named}")
    n = int(token)
    if not low <= n <= high:
        raise ValueError(f"cron {name} field: {n} is out of range {low}-{high}")
    return n


def _check_field(text: str, name: str, low: int, high: int, names: list[str] | None) -> None:
    """Raises naming the first item of the field outside the grammar."""
    for item in text.split(","):
        base, _, step = item.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"cron {name} field: step {step!r} must be a positive number")
        if base == "*":
            continue
        if "-" in base:
            a, _, b = base.partition("-")
            if _check_value(a, name, low, high, names) > _check_value(b, name, low, high, names):
                raise ValueError(f"cron {name} field: range {base!r} runs backwards")
        else:
            _check_value(base, name, low, high, names)


def parse_cron(expr: str) -> Cron:
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expr!r} must have 5 fields (minute hour day-of-month month "
                         f"day-of-week), found {len(fields)}")
    for text, spec in zip(fields, _FIELDS, strict=True):
        _check_field(text, *spec)
    cron = Cron(" ".join(fields))
    try:
        # Within the grammar, the one expression cronsim refuses is a day that never comes (Feb 30).
        cron.next_after(0)
    except (CronSimError, StopIteration):
        raise ValueError("the cron expression never fires") from None
    return cron


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
    return parse_cron(text)
