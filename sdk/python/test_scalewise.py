"""Native unit tests of the Python SDK: `scripts/test-native-policies`
runs them with the bindings componentize-py generates on PYTHONPATH."""

import json
import unittest

import scalewise
from scalewise import Param, PolicyError
from wit_world.imports import types

T0 = 1_700_000_000_000


def series(values, step_ms=15_000, name="m"):
    n = len(values)
    return types.Metric(
        name=name,
        timestamps_ms=[T0 - (n - 1 - i) * step_ms for i in range(n)],
        values=list(values),
        error=None,
    )


def context(params, metrics=(), state=None):
    return types.Context(
        now_ms=T0,
        scaler="svc",
        target=types.Target(kind="simulator", name="svc", current=3, ready=3, min=1, max=10),
        metrics=list(metrics),
        events=[],
        parameters=json.dumps(params),
        state=state,
    )


class Exports(unittest.TestCase):
    def test_every_public_helper_is_exported(self):
        public = {
            name
            for name, value in vars(scalewise).items()
            if not name.startswith("_") and callable(value) and value.__module__ == "scalewise"
        }
        self.assertEqual(public - set(scalewise.__all__), set())
        for name in scalewise.__all__:
            self.assertTrue(hasattr(scalewise, name), name)


class Durations(unittest.TestCase):
    def test_units_and_sums(self):
        self.assertEqual(scalewise.duration_ms("250ms"), 250)
        self.assertEqual(scalewise.duration_ms("30s"), 30_000)
        self.assertEqual(scalewise.duration_ms("1h 30m"), 5_400_000)
        self.assertEqual(scalewise.duration_ms("1.5m"), 90_000)

    def test_every_unit_the_host_accepts(self):
        host = {"0": 0, "10 minutes": 600_000, "2 hours": 7_200_000, "1w": 604_800_000,
                "30secs": 30_000, "5mins": 300_000, "1day": 86_400_000,
                "1M": 2_630_016_000, "1y": 31_557_600_000}
        for text, ms in host.items():
            self.assertEqual(scalewise.duration_ms(text), ms, text)

    def test_refusals_name_the_text(self):
        for text in ["", "5", "5 parsecs", "m5"]:
            with self.assertRaises(ValueError) as e:
                scalewise.duration_ms(text)
            self.assertIn("duration", str(e.exception))


class Params(unittest.TestCase):
    SPECS = [
        Param("metric", "metric", "m"),
        Param("target", "number", "t"),
        Param("steps", "integer", "s", 1),
        Param("window", "duration", "w", "1m"),
        Param("strict", "boolean", "b", False),
    ]

    def test_defaults_fill_in_and_durations_become_ms(self):
        got = scalewise.read_params(context({"metric": "cpu", "target": 60}), self.SPECS)
        self.assertEqual(
            got, {"metric": "cpu", "target": 60.0, "steps": 1, "window": 60_000, "strict": False}
        )
        # An explicit null is not given (the Rust SDK's rule): the default.
        got = scalewise.read_params(
            context({"metric": "cpu", "target": 60, "steps": None}), self.SPECS
        )
        self.assertEqual(got["steps"], 1)

    def test_each_refusal_names_the_parameter(self):
        cases = [
            ({"target": 60}, "parameter 'metric' is required"),
            ({"metric": "cpu", "target": "60"}, "parameter 'target' must be a number"),
            ({"metric": "cpu", "target": 1, "steps": 1.5}, "parameter 'steps' must be an integer"),
            ({"metric": "cpu", "target": 1, "strict": 1}, "parameter 'strict' must be true or false"),
            ({"metric": "cpu", "target": 1, "window": "later"}, "parameter 'window': invalid duration"),
            ({"metric": "cpu", "target": 1, "extra": 1}, "unknown parameter 'extra'"),
        ]
        for params, expected in cases:
            with self.assertRaises(PolicyError) as e:
                scalewise.read_params(context(params), self.SPECS)
            self.assertIn(expected, str(e.exception), params)

    def test_describe_carries_defaults_as_json(self):
        info = scalewise.info("p", "1.0.0", "d", self.SPECS)
        by_name = {p.name: p for p in info.parameters}
        self.assertTrue(by_name["metric"].required)
        self.assertEqual(by_name["metric"].kind, types.ParameterKind.METRIC)
        self.assertEqual(by_name["window"].default, '"1m"')
        self.assertFalse(by_name["window"].required)


class Metrics(unittest.TestCase):
    def test_window_includes_its_start(self):
        m = series([1, 2, 3, 4, 5])  # at -60s .. 0s
        self.assertEqual([v for _, v in scalewise.window(m, T0, 60_000)], [1, 2, 3, 4, 5])
        self.assertEqual([v for _, v in scalewise.window(m, T0, 59_999)], [2, 3, 4, 5])
        self.assertEqual(scalewise.mean_over(m, T0, 30_000), 4)
        self.assertEqual(scalewise.max_over(m, T0, 60_000), 5)
        self.assertEqual(scalewise.min_over(m, T0, 60_000), 1)
        self.assertIsNone(scalewise.mean_over(m, T0 - 120_000, 10_000))

    def test_percentile_interpolates(self):
        m = series([10, 20, 30, 40])
        self.assertEqual(scalewise.percentile_over(m, T0, 3_600_000, 50), 25)
        self.assertEqual(scalewise.percentile_over(m, T0, 3_600_000, 100), 40)
        self.assertEqual(scalewise.percentile_over(m, T0, 3_600_000, 0), 10)

    def test_above_for_needs_the_samples_to_reach_back(self):
        m = series([90, 90, 90, 90, 90])  # 60s of samples
        self.assertTrue(scalewise.above_for(m, 80, T0, 60_000))
        self.assertFalse(scalewise.above_for(m, 80, T0, 5 * 60_000), "a minute is not five")
        self.assertFalse(scalewise.above_for(series([90, 70, 90]), 80, T0, 60_000))
        # The first sample stands for one step (told by three samples) before it...
        self.assertTrue(scalewise.above_for(series([90, 90, 90], step_ms=25_000), 80, T0, 60_000))
        # ...and two samples tell no step: 50 s is not 60.
        self.assertFalse(scalewise.above_for(series([90, 90], step_ms=50_000), 80, T0, 60_000))
        self.assertFalse(scalewise.below_for(m, 80, T0, 0))
        self.assertTrue(scalewise.above_for(m, 80, T0, 0))

    def test_held_for_follows_the_rust_sdks_rule(self):
        def at(points):
            return types.Metric(
                name="m",
                timestamps_ms=[T0 + t for t, _ in points],
                values=[v for _, v in points],
                error=None,
            )

        # The value in effect when the duration began must hold...
        self.assertFalse(
            scalewise.above_for(at([(-130_000, 50), (-61_000, 85), (0, 85)]), 70, T0, 120_000)
        )
        # ...and an hour-old sample does not vouch for the hour since.
        self.assertFalse(
            scalewise.below_for(at([(-3_600_000, 10), (-20_000, 10), (0, 10)]), 30, T0, 300_000)
        )
        self.assertFalse(
            scalewise.below_for(at([(-330_000, 10), (-20_000, 10), (0, 10)]), 30, T0, 300_000)
        )
        self.assertTrue(
            scalewise.below_for(at([(-310_000, 10), (-10_000, 10), (0, 10)]), 30, T0, 300_000)
        )
        # Samples since -30 s and one at -165 s do not cover 5 minutes: the
        # gap does not stand for the stretch missing at the start; one step
        # does.
        gapped = at([(-165_000, 80), (-30_000, 80), (-15_000, 80), (0, 80)])
        self.assertFalse(scalewise.above_for(gapped, 70, T0, 300_000))
        stepped = at([(-300_000 + i * 15_000, 80) for i in range(1, 21)])
        self.assertTrue(scalewise.above_for(stepped, 70, T0, 300_000))

    def test_an_unreadable_metric_is_a_policy_error(self):
        broken = types.Metric(name="q", timestamps_ms=[], values=[], error="source down")
        ctx = context({}, [broken])
        with self.assertRaises(PolicyError) as e:
            scalewise.metric(ctx, "q")
        self.assertEqual(str(e.exception), "metric q: source down")
        with self.assertRaises(PolicyError):
            scalewise.metric(ctx, "cpu")


class Decisions(unittest.TestCase):
    def test_builders_and_state(self):
        self.assertIsInstance(scalewise.hold("r").action, types.Action_Hold)
        d = scalewise.scale_to(4, "r", scalewise.json_state({"b": 1, "a": 2}))
        self.assertEqual(d.action.value, 4)
        self.assertEqual(d.state, b'{"a":2,"b":1}')
        self.assertIsInstance(scalewise.scale_or_hold(3, 3, "r").action, types.Action_Hold)
        self.assertEqual(scalewise.state_json(context({}, state=d.state)), {"a": 2, "b": 1})
        self.assertIsNone(scalewise.state_json(context({}, state=b"\xff")))

    def test_a_count_that_is_not_a_whole_replica_count_is_an_error(self):
        self.assertEqual(scalewise.scale_to(4.0, "r").action.value, 4)
        for bad in (float("nan"), float("inf"), -1, 4.7, 2**32, True, "3"):
            with self.assertRaises(PolicyError, msg=repr(bad)):
                scalewise.scale_to(bad, "r")

    def test_numbers_read_well(self):
        self.assertEqual(scalewise.format_number(83), "83.0")
        self.assertEqual(scalewise.format_number(123456.7), "123457")
        self.assertEqual(scalewise.format_number(0.0425), "0.0425")
        # Written as the Rust SDK writes them.
        self.assertEqual(scalewise.format_number(1e20), "1.00e20")
        self.assertEqual(scalewise.format_number(-4.5e-9), "-4.50e-9")

    def test_the_export_turns_every_exception_into_an_error(self):
        from componentize_py_types import Err

        def bug(ctx):
            return {}["missing"]

        def refuses(ctx):
            raise PolicyError("no data")

        for decide, message in [(bug, "KeyError: 'missing'"), (refuses, "no data")]:
            evaluator = scalewise.evaluator(scalewise.info("p", "1", "d", []), decide)()
            with self.assertRaises(Err) as e:
                evaluator.evaluate(context({}))
            self.assertEqual(e.exception.value, message)


if __name__ == "__main__":
    unittest.main()
