"""`capacity`: size a load-balanced service for the requests it has in flight.

Each replica serves `capacity` requests at once. The policy sizes the service
for the peak of the metric (requests in flight across the whole service) over
the last `peak_over`, keeping `headroom` of every replica free:

    needed = ceil(peak / (capacity * (1 - headroom)))

Scale-out goes straight to `needed`. Scale-in is gradual: only when `needed`
is below the current count, and by at most `step_down` replicas per tick, so
the replicas that stay serve the requests in flight before the next one
goes. The host's envelope still applies its bounds, stabilisation windows
and rate limits on top.

| name | kind | default | meaning |
|---|---|---|---|
| `metric` | metric | required | requests in flight across the service |
| `capacity` | number | required | requests one replica serves at once |
| `headroom` | number | 0.2 | fraction of each replica kept free (0 to < 1) |
| `peak_over` | duration | "1m" | how far back the peak is taken |
| `step_down` | integer | 1 | most replicas removed per tick |
"""

import math

import scalewise
from scalewise import Param, PolicyError, format_number

PARAMS = [
    Param("metric", "metric", "Requests in flight across the whole service."),
    Param("capacity", "number", "Requests one replica serves at once (above 0)."),
    Param("headroom", "number", "Fraction of each replica kept free, 0 to below 1.", 0.2),
    Param("peak_over", "duration", "How far back the peak of the metric is taken.", "1m"),
    Param("step_down", "integer", "Most replicas removed in one tick (at least 1).", 1),
]

INFO = scalewise.info(
    "capacity",
    "0.1.0",
    "Sizes a service for the peak of its requests in flight, each replica serving "
    "`capacity` at once with `headroom` kept free; scales in one step at a time.",
    PARAMS,
)


def decide(ctx):
    p = scalewise.read_params(ctx, PARAMS)
    if p["capacity"] <= 0:
        raise PolicyError("parameter 'capacity' must be above 0")
    if not 0 <= p["headroom"] < 1:
        raise PolicyError("parameter 'headroom' must be at least 0 and below 1")
    if p["step_down"] < 1:
        raise PolicyError("parameter 'step_down' must be at least 1")

    m = scalewise.metric(ctx, p["metric"])
    peak = scalewise.max_over(m, ctx.now_ms, p["peak_over"])
    if peak is None:
        raise PolicyError(f"metric {m.name}: no sample in the last {_span(p['peak_over'])}")

    per_replica = p["capacity"] * (1 - p["headroom"])
    needed = max(math.ceil(peak / per_replica - 1e-9), 1 if peak > 0 else 0)
    current = ctx.target.current
    what = (
        f"{m.name} peak {format_number(peak)} over {_span(p['peak_over'])} "
        f"at {format_number(per_replica)} per replica needs {needed}"
    )
    # Within max: the host would clamp an answer above it all the same;
    # clamped here, the reason says so.
    if needed > ctx.target.max:
        needed = ctx.target.max
        what = f"{what} (max {needed})"
    if needed > current:
        return scalewise.scale_to(needed, f"{what}: {current} → {needed}")
    if needed < current:
        to = max(needed, current - p["step_down"])
        step = "" if to == needed else f" (at most {p['step_down']} fewer per tick)"
        return scalewise.scale_to(to, f"{what}: {current} → {to}{step}")
    return scalewise.hold(f"{what}: hold at {current}")


def _span(ms):
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
