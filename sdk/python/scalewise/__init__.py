"""Scalewise policy SDK for Python.

A Python policy is a Wasm component built with componentize-py against the
`scalewise:policy@0.1.0` world in `wit/`. componentize-py generates the
bindings (the `wit_world` package); this module adds what a policy needs
again and again on top of them:

- `Param` and `read_params`: declare parameters once, for `describe()` and
  for reading `ctx.parameters` (JSON) with defaults and type checks;
- `metric`, `latest`, `window`, `mean_over`, `max_over`, `min_over`,
  `percentile_over`, `above_for`, `below_for`, `held_for`: questions about
  a metric's samples;
- `hold`, `scale_to`, `scale_or_hold`, `state_json`, `json_state`: building a
  decision and keeping state between ticks;
- `log`: the host's logger;
- `evaluator(info, decide)`: the exported `Evaluator` class, so `app.py` is
  two lines and the policy's logic is a plain function that unit-tests
  natively with `python -m unittest` (bindings from
  `componentize-py -d wit -w policy bindings DIR` on `PYTHONPATH`).

`decide(ctx)` returns a decision or raises `PolicyError` (the scaler holds
this tick, and the message is journaled). Any other exception is turned into
an error too, naming its type, so a bug never traps the module.
"""

import json
import math
import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log as _log
from wit_world.imports import types

__all__ = [
    "Param",
    "PolicyError",
    "above_for",
    "below_for",
    "duration_ms",
    "evaluator",
    "format_number",
    "held_for",
    "hold",
    "info",
    "json_state",
    "latest",
    "log",
    "max_over",
    "mean_over",
    "metric",
    "min_over",
    "percentile_over",
    "read_params",
    "scale_or_hold",
    "scale_to",
    "state_json",
    "types",
    "window",
]


class PolicyError(Exception):
    """A reason this tick cannot be decided: the scaler holds, and the
    message is journaled as the policy's error."""


# --- describe() and parameters ---------------------------------------------

_KINDS = {
    "number": types.ParameterKind.NUMBER,
    "integer": types.ParameterKind.INTEGER,
    "boolean": types.ParameterKind.BOOLEAN,
    "text": types.ParameterKind.TEXT,
    "duration": types.ParameterKind.DURATION,
    "metric": types.ParameterKind.METRIC,
}


class Param:
    """A parameter the policy accepts.

    `kind` is one of number, integer, boolean, text, duration, metric. A
    parameter without a default is required. Durations are read as whole
    milliseconds by `read_params`.
    """

    def __init__(self, name, kind, description, default=None):
        if kind not in _KINDS:
            raise ValueError(f"parameter {name!r}: unknown kind {kind!r}")
        self.name = name
        self.kind = kind
        self.description = description
        self.default = default

    @property
    def required(self):
        return self.default is None

    def to_wit(self):
        return types.Parameter(
            name=self.name,
            description=self.description,
            kind=_KINDS[self.kind],
            required=self.required,
            default=None if self.default is None else json.dumps(self.default),
        )


def info(name, version, description, params):
    """The policy's `describe()` answer."""
    return types.Info(
        name=name,
        version=version,
        description=description,
        parameters=[p.to_wit() for p in params],
    )


def read_params(ctx, params):
    """`ctx.parameters` (a JSON object) read against `params`: a dict of
    every parameter, defaults filled in, durations in milliseconds.

    The host checked the values against `describe()` when it loaded the
    config; this checks again, so `scalewise eval` with hand-written
    parameters gets a clear error too.
    """
    try:
        given = json.loads(ctx.parameters or "{}")
    except ValueError as e:
        raise PolicyError(f"parameters are not JSON: {e}") from None
    if not isinstance(given, dict):
        raise PolicyError("parameters are not a JSON object")
    known = {p.name for p in params}
    unknown = sorted(set(given) - known)
    if unknown:
        raise PolicyError(f"unknown parameter {unknown[0]!r}")
    values = {}
    for p in params:
        # An explicit null is not given, as in the Rust SDK: the default.
        value = given.get(p.name)
        if value is None:
            value = p.default
        if value is None:
            raise PolicyError(f"parameter {p.name!r} is required")
        values[p.name] = _check(p, value)
    return values


def _check(p, value):
    def wrong(expected):
        return PolicyError(f"parameter {p.name!r} must be {expected}, not {json.dumps(value)}")

    if p.kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if p.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise wrong("an integer")
        return int(value)
    if p.kind == "boolean":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if not isinstance(value, str):
        raise wrong("a string")
    if p.kind == "duration":
        try:
            return duration_ms(value)
        except ValueError as e:
            raise PolicyError(f"parameter {p.name!r}: {e}") from None
    return value


# The host's units (humantime's), so that every duration the host accepts
# for a `duration` parameter reads here too.
_UNITS_MS = {
    **dict.fromkeys(("nanos", "nsec", "ns"), 1e-6),
    **dict.fromkeys(("usec", "us", "\u00b5s"), 1e-3),
    **dict.fromkeys(("millis", "msec", "ms"), 1),
    **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), 1000),
    **dict.fromkeys(("minutes", "minute", "min", "mins", "m"), 60_000),
    **dict.fromkeys(("hours", "hour", "hr", "hrs", "h"), 3_600_000),
    **dict.fromkeys(("days", "day", "d"), 86_400_000),
    **dict.fromkeys(("weeks", "week", "wk", "wks", "w"), 7 * 86_400_000),
    **dict.fromkeys(("months", "month", "M"), 2_630_016_000),
    **dict.fromkeys(("years", "year", "yr", "yrs", "y"), 31_557_600_000),
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z\u00b5]+)")


def duration_ms(text):
    """A duration such as "30s", "5m", "1h 30m", "10 minutes" or "250ms", in
    milliseconds: the units the host accepts (humantime's), and "0".
    Raises ValueError naming the text."""
    total, pos = 0.0, 0
    text = text.strip()
    if text == "0":
        return 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m or m.group(2) not in _UNITS_MS:
            raise ValueError(f"invalid duration {text!r} (e.g. 30s, 5m, 1h 30m)")
        total += float(m.group(1)) * _UNITS_MS[m.group(2)]
        pos = m.end()
    if not text:
        raise ValueError("empty duration")
    return int(total)


# --- metrics ----------------------------------------------------------------


def metric(ctx, name):
    """The metric `name`; PolicyError when the scaler's config does not
    define it or it could not be read this tick."""
    for m in ctx.metrics:
        if m.name == name:
            if m.error is not None:
                raise PolicyError(f"metric {name}: {m.error}")
            return m
    raise PolicyError(f"no metric named {name!r} in the context")


def latest(m):
    """The newest sample's value, or None."""
    return m.values[-1] if m.values else None


def window(m, now_ms, duration_ms):
    """The (timestamp_ms, value) samples of the last `duration_ms` before
    `now_ms` (the window's start included), oldest first."""
    start = now_ms - duration_ms
    return [(t, v) for t, v in zip(m.timestamps_ms, m.values) if start <= t <= now_ms]


def mean_over(m, now_ms, duration_ms):
    """Mean of the window's samples, or None when it holds none."""
    values = [v for _, v in window(m, now_ms, duration_ms)]
    return sum(values) / len(values) if values else None


def max_over(m, now_ms, duration_ms):
    """Largest sample in the window, or None."""
    return max((v for _, v in window(m, now_ms, duration_ms)), default=None)


def min_over(m, now_ms, duration_ms):
    """Smallest sample in the window, or None."""
    return min((v for _, v in window(m, now_ms, duration_ms)), default=None)


def percentile_over(m, now_ms, duration_ms, q):
    """The q-th percentile (0-100) of the window's samples, interpolating
    linearly between the closest ranks; None when the window is empty."""
    values = sorted(v for _, v in window(m, now_ms, duration_ms))
    if not values:
        return None
    rank = min(max(q, 0.0), 100.0) / 100.0 * (len(values) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (rank - lo)


def above_for(m, threshold, now_ms, duration_ms):
    """Whether every sample of the last `duration_ms` is above `threshold`
    and the samples cover that duration (see `held_for`)."""
    return held_for(m, now_ms, duration_ms, lambda v: v > threshold)


def below_for(m, threshold, now_ms, duration_ms):
    """Whether every sample of the last `duration_ms` is below `threshold`,
    with the same coverage rule as `above_for`."""
    return held_for(m, now_ms, duration_ms, lambda v: v < threshold)


def held_for(m, now_ms, duration_ms, holds):
    """Whether `holds(value)` has been true for the last `duration_ms`.

    It has when every sample of that duration satisfies it and the samples
    reach back to its start: the sample before it (the value in effect when
    the duration began) satisfies it too and is no further from the next
    one than the duration (or the gap before it); or, with no sample before
    it, the first lies within one sample interval (told by three samples at
    least) of the start. A series
    that began a minute ago is not "above for five minutes". A duration of
    0: the newest sample alone. The same rule as the Rust SDK's.
    """
    points = [(t, v) for t, v in zip(m.timestamps_ms, m.values) if t <= now_ms]
    if not points:
        return False
    if duration_ms <= 0:
        return holds(points[-1][1])
    start = now_ms - duration_ms
    inside = [(t, v) for t, v in points if t >= start]
    if not inside or not all(holds(v) for _, v in inside):
        return False
    # The step (shortest spacing), not the widest gap: a gap must not stand
    # for a stretch missing at the start.
    # Two samples tell no step (at -60 s and 0 they would cover 2 minutes).
    interval = 0
    if len(inside) >= 3:
        interval = min((b[0] - a[0] for a, b in zip(inside, inside[1:]) if b[0] > a[0]), default=0)
    first = inside[0][0]
    if first <= start:
        return True
    before = [(t, v) for t, v in points if t < start]
    if not before:
        return first <= start + max(interval, 1)
    if not holds(before[-1][1]):
        return False
    gap = first - before[-1][0]
    gap_before = before[-1][0] - before[-2][0] if len(before) >= 2 else 0
    return gap <= max(duration_ms, interval, gap_before)


# --- decisions and state ------------------------------------------------------


def hold(reason, state=None):
    """Keep the current replica count."""
    return types.Decision(action=types.Action_Hold(), reason=reason, state=state)


def scale_to(replicas, reason, state=None):
    """Run `replicas` replicas (the host clamps to the scaler's bounds).

    A count that is not a whole number from 0 to 2**32-1 (NaN from an empty
    window, 4.7, a negative) is a PolicyError, so the scaler holds: `int()`
    would truncate a fraction, and a count out of range fails the call
    where the decision is handed to the host."""
    whole = isinstance(replicas, int) and not isinstance(replicas, bool)
    if isinstance(replicas, float) and replicas.is_integer():
        replicas, whole = int(replicas), True
    if not whole or not 0 <= replicas <= 0xFFFFFFFF:
        raise PolicyError(
            f"scale_to({replicas!r}): a replica count is a whole number from 0 to 4294967295"
        )
    return types.Decision(
        action=types.Action_ScaleTo(replicas), reason=reason, state=state
    )


def scale_or_hold(current, desired, reason, state=None):
    """`hold` when `desired == current`, else `scale_to(desired)`."""
    if desired == current:
        return hold(reason, state)
    return scale_to(desired, reason, state)


def state_json(ctx):
    """The state this policy returned last time, read as JSON; None on the
    first evaluation or when it is not JSON."""
    if ctx.state is None:
        return None
    try:
        return json.loads(bytes(ctx.state))
    except ValueError:
        return None


def json_state(value):
    """`value` as state for a decision (JSON bytes)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def format_number(value):
    """A metric value for a reason: one decimal from 1 up, three significant
    digits below 1, an exponent beyond 10^15 or below 10^-6."""
    magnitude = abs(value)
    if not math.isfinite(value):
        return str(value)
    if magnitude >= 1e15 or 0 < magnitude < 1e-6:
        # As the Rust SDK writes it: 1.00e20, 4.50e-9 (no "+", no padding).
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    if magnitude >= 100_000:
        return f"{value:.0f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{value:.1f}"
    decimals = min(max(2 - math.floor(math.log10(magnitude)), 1), 9)
    return f"{value:.{decimals}f}"


# --- the host's logger ----------------------------------------------------------


class _Log:
    """The host's logger (`log.info("...")`). Outside Wasm (native unit
    tests) the messages go to stderr."""

    @staticmethod
    def _write(level, message):
        try:
            _log.log(level, str(message))
        except NotImplementedError:
            import sys

            print(f"[{level.name.lower()}] {message}", file=sys.stderr)

    def debug(self, message):
        self._write(types.Level.DEBUG, message)

    def info(self, message):
        self._write(types.Level.INFO, message)

    def warn(self, message):
        self._write(types.Level.WARN, message)

    def error(self, message):
        self._write(types.Level.ERROR, message)


log = _Log()


# --- the export ---------------------------------------------------------------


def evaluator(policy_info, decide):
    """The class componentize-py exports: `Evaluator = evaluator(INFO,
    decide)` in `app.py`. `decide(ctx)` returns a decision; a
    `PolicyError` (or any other exception) becomes the call's error."""

    class Evaluator(exports.Evaluator):
        def describe(self):
            return policy_info

        def evaluate(self, ctx):
            try:
                return decide(ctx)
            except PolicyError as e:
                raise Err(str(e)) from None
            except Exception as e:  # a bug: an error for this tick, not a trap
                raise Err(f"{type(e).__name__}: {e}") from None

    return Evaluator
