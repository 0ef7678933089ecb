"""Native unit tests of the `capacity` policy (`scripts/test-native-policies`)."""

import json
import unittest

from capacity import decide
from scalewise import PolicyError
from wit_world.imports import types

T0 = 1_700_000_000_000


def ctx(current, values, **params):
    n = len(values)
    return types.Context(
        now_ms=T0,
        scaler="api",
        target=types.Target(kind="simulator", name="api", current=current, ready=current, min=1, max=50),
        metrics=[
            types.Metric(
                name="inflight",
                timestamps_ms=[T0 - (n - 1 - i) * 15_000 for i in range(n)],
                values=list(values),
                error=None,
            )
        ],
        events=[],
        parameters=json.dumps({"metric": "inflight", "capacity": 100.0, **params}),
        state=None,
    )


def desired(decision):
    return getattr(decision.action, "value", None)


class Capacity(unittest.TestCase):
    def test_scales_out_to_what_the_peak_needs(self):
        d = decide(ctx(2, [100, 400, 150]))
        self.assertEqual(desired(d), 5)  # 400 / 80
        self.assertEqual(d.reason, "inflight peak 400.0 over 1m at 80.0 per replica needs 5: 2 → 5")

    def test_a_surge_past_max_asks_for_max(self):
        d = decide(ctx(2, [10_000_000.0]))
        self.assertEqual(desired(d), 50)
        self.assertEqual(
            d.reason,
            "inflight peak 10000000 over 1m at 80.0 per replica needs 125000 (max 50): 2 → 50",
        )

    def test_exactly_at_capacity_needs_no_extra_replica(self):
        self.assertIsNone(desired(decide(ctx(5, [400.0]))))

    def test_scales_in_by_at_most_step_down(self):
        self.assertEqual(desired(decide(ctx(10, [80.0]))), 9)
        self.assertEqual(desired(decide(ctx(10, [80.0], step_down=20))), 1)

    def test_no_load_needs_no_replica_and_the_host_keeps_its_minimum(self):
        self.assertEqual(desired(decide(ctx(1, [0.0]))), 0)

    def test_headroom_and_peak_over(self):
        self.assertEqual(desired(decide(ctx(1, [400.0], headroom=0.5))), 8)
        # 800 is 75s old: outside 1m, inside 2m.
        values = [800, 100, 100, 100, 100, 100]
        self.assertIsNone(desired(decide(ctx(2, values))))  # needs 2: hold
        self.assertEqual(desired(decide(ctx(2, values, peak_over="2m"))), 10)

    def test_refusals(self):
        for params, message in [
            ({"capacity": -1}, "'capacity' must be above 0"),
            ({"headroom": 1}, "'headroom' must be at least 0 and below 1"),
            ({"step_down": 0}, "'step_down' must be at least 1"),
        ]:
            with self.assertRaises(PolicyError) as e:
                decide(ctx(3, [10.0], **params))
            self.assertIn(message, str(e.exception))


if __name__ == "__main__":
    unittest.main()
