"""What NATS accepts as a subject or a JetStream name, and which of them natsflow keeps for itself.

Each check returns the reason a value is refused (with the rule), or None when it is fine.
"""

from __future__ import annotations

from framework.isb import names as isb_names

# JetStream's limit on stream and consumer names (each names a directory of the file store).
MAX_NAME_LENGTH = 255
# natsflow's buffers publish on nf.<pipeline>.<vertex>.<from>, its dead letters on
# nfdlq.<pipeline>.<vertex>; its streams and KV buckets are named nf_<pipeline>_... (isb/names.py)
RESERVED_SUBJECTS = isb_names.RESERVED_SUBJECTS
RESERVED_STREAM_PREFIX = isb_names.RESERVED_PREFIX
_NOT_IN_NAMES = ".*>/\\"


def _bad_char(text: str) -> str | None:
    return next((c for c in text if c.isspace() or not c.isprintable()), None)


def subject_problem(subject: str, *, wildcards: bool) -> str | None:
    """`wildcards`: a subscription may use `*` and `>`; a subject published to may not."""
    if not subject:
        return "a subject cannot be empty"
    bad = _bad_char(subject)
    if bad is not None:
        return f"a NATS subject cannot contain whitespace or control characters (found {bad!r})"
    tokens = subject.split(".")
    if "" in tokens:
        return f"{subject[:80]!r} has an empty token: a NATS subject is tokens joined by single dots"
    for i, token in enumerate(tokens):
        if token == ">" and i != len(tokens) - 1:
            return f"{subject[:80]!r}: the wildcard '>' can only be the last token"
        if token not in ("*", ">") and ("*" in token or ">" in token):
            return f"{subject[:80]!r}: the wildcards '*' and '>' must be whole tokens (e.g. orders.*)"
    if not wildcards and any(t in ("*", ">") for t in tokens):
        return (f"{subject[:80]!r} has a wildcard, but a sink publishes to one subject "
                "(wildcards only match when subscribing)")
    return None


def overlaps(a: str, b: str) -> bool:
    """Whether some subject matches both patterns (both valid subjects)."""
    left, right = a.split("."), b.split(".")
    for x, y in zip(left, right, strict=False):
        if x == ">" or y == ">":
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(left) == len(right)


def reserved_subject_problem(subject: str) -> str | None:
    clash = [r for r in RESERVED_SUBJECTS if overlaps(subject, r)]
    if clash:
        return (f"{subject[:80]!r} overlaps {' and '.join(clash)}, which natsflow keeps for its buffers, "
                "dead letters and archives (a source there would read them, a sink would write into them): use another "
                "subject")
    return None


def queue_group_problem(queue: str) -> str | None:
    if not queue:
        return "a queue group name cannot be empty (leave queue out for none)"
    bad = _bad_char(queue)
    if bad is not None:
        return f"a NATS queue group name cannot contain whitespace or control characters (found {bad!r})"
    return None


def jetstream_name_problem(name: str, what: str = "stream") -> str | None:
    """Stream and consumer names: what nats-server accepts for either."""
    if not name:
        return f"a {what} name cannot be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"a {what} name is at most {MAX_NAME_LENGTH} characters (JetStream's limit); this one has {len(name)}"
    bad = _bad_char(name) or next((c for c in name if c in _NOT_IN_NAMES), None)
    if bad is not None:
        return (f"{name[:80]!r}: a JetStream {what} name cannot contain whitespace, control characters, "
                f"'.', '*', '>', '/' or '\\' (found {bad!r})")
    return None
