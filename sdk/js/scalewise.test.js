// Native unit tests of the JavaScript SDK (`scripts/test-native-policies`).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import * as sdk from './scalewise.js';

const T0 = 1700000000000n;

/** A metric as componentize-js hands it over: BigInt64Array timestamps. */
function series(values, stepMs = 15000, name = 'm') {
  const n = values.length;
  return {
    name,
    timestampsMs: BigInt64Array.from(values, (_, i) => T0 - BigInt((n - 1 - i) * stepMs)),
    values: Float64Array.from(values),
    error: undefined,
  };
}

const context = (params, metrics = [], state = undefined) => ({
  nowMs: T0,
  scaler: 'svc',
  target: { kind: 'simulator', name: 'svc', current: 3, ready: 3, min: 1, max: 10 },
  metrics,
  events: [],
  parameters: JSON.stringify(params),
  state,
});

test('durations', () => {
  assert.equal(sdk.durationMs('250ms'), 250);
  assert.equal(sdk.durationMs('1h 30m'), 5400000);
  assert.equal(sdk.durationMs('1.5m'), 90000);
  // Every unit the host accepts for a duration parameter (humantime's).
  const host = { '0': 0, '10 minutes': 600000, '2 hours': 7200000, '1w': 604800000,
    '30secs': 30000, '5mins': 300000, '1day': 86400000, '1M': 2630016000, '1y': 31557600000 };
  for (const [text, ms] of Object.entries(host)) assert.equal(sdk.durationMs(text), ms, text);
  for (const bad of ['', '5', '5 parsecs', 'm5']) {
    assert.throws(() => sdk.durationMs(bad), /duration/);
  }
});

test('parameters: defaults, kinds, and refusals that name the parameter', () => {
  const specs = [
    sdk.param('metric', 'metric', 'm'),
    sdk.param('target', 'number', 't'),
    sdk.param('steps', 'integer', 's', 1),
    sdk.param('window', 'duration', 'w', '1m'),
  ];
  assert.deepEqual(sdk.readParams(context({ metric: 'cpu', target: 60 }), specs), {
    metric: 'cpu',
    target: 60,
    steps: 1,
    window: 60000,
  });
  // An explicit null is not given (the Rust SDK's rule): the default.
  assert.equal(sdk.readParams(context({ metric: 'cpu', target: 60, steps: null }), specs).steps, 1);
  const cases = [
    [{ target: 60 }, "parameter 'metric' is required"],
    [{ metric: 'cpu', target: '60' }, "parameter 'target' must be a number"],
    [{ metric: 'cpu', target: 1, steps: 1.5 }, "parameter 'steps' must be an integer"],
    [{ metric: 'cpu', target: 1, window: 'later' }, "parameter 'window': invalid duration"],
    [{ metric: 'cpu', target: 1, extra: 1 }, "unknown parameter 'extra'"],
  ];
  for (const [params, message] of cases) {
    assert.throws(() => sdk.readParams(context(params), specs), (e) => e instanceof sdk.PolicyError && e.message.includes(message));
  }
  const info = sdk.info('p', '1.0.0', 'd', specs);
  assert.deepEqual(
    info.parameters.map((p) => [p.name, p.kind, p.required, p.default]),
    [
      ['metric', 'metric', true, undefined],
      ['target', 'number', true, undefined],
      ['steps', 'integer', false, '1'],
      ['window', 'duration', false, '"1m"'],
    ],
  );
});

test('windows and aggregates over BigInt timestamps', () => {
  const m = series([1, 2, 3, 4, 5]);
  assert.deepEqual(sdk.window(m, T0, 60000).map(([, v]) => v), [1, 2, 3, 4, 5]);
  assert.deepEqual(sdk.window(m, T0, 59999).map(([, v]) => v), [2, 3, 4, 5]);
  assert.equal(sdk.meanOver(m, T0, 30000), 4);
  assert.equal(sdk.maxOver(m, T0, 60000), 5);
  assert.equal(sdk.minOver(m, T0, 60000), 1);
  assert.equal(sdk.latest(m), 5);
  assert.equal(sdk.percentileOver(series([10, 20, 30, 40]), T0, 3600000, 50), 25);
  assert.equal(sdk.meanOver(m, T0 - 120000n, 10000), undefined);
});

test('aboveFor needs the samples to reach back', () => {
  const m = series([90, 90, 90, 90, 90]);
  assert.equal(sdk.aboveFor(m, 80, T0, 60000), true);
  assert.equal(sdk.aboveFor(m, 80, T0, 300000), false, 'a minute is not five');
  assert.equal(sdk.aboveFor(series([90, 70, 90]), 80, T0, 60000), false);
  // The first sample stands for one step (told by three samples) before
  // it; two samples tell no step: 50 s is not 60.
  assert.equal(sdk.aboveFor(series([90, 90, 90], 25000), 80, T0, 60000), true);
  assert.equal(sdk.aboveFor(series([90, 90], 50000), 80, T0, 60000), false);
  assert.equal(sdk.belowFor(m, 80, T0, 0), false);
  // The Rust SDK's rule: the value in effect at the start must hold...
  const at = (pts) => ({ timestampsMs: pts.map(([t]) => T0 + BigInt(t)), values: pts.map(([, v]) => v) });
  assert.equal(sdk.aboveFor(at([[-130000, 50], [-61000, 85], [0, 85]]), 70, T0, 120000), false);
  // ...and an hour-old sample does not vouch for the hour since.
  assert.equal(sdk.belowFor(at([[-3600000, 10], [-20000, 10], [0, 10]]), 30, T0, 300000), false);
  assert.equal(sdk.belowFor(at([[-330000, 10], [-20000, 10], [0, 10]]), 30, T0, 300000), false);
  assert.equal(sdk.belowFor(at([[-310000, 10], [-10000, 10], [0, 10]]), 30, T0, 300000), true);
  // Samples since -30 s and one at -165 s do not cover 5 minutes: the gap
  // does not stand for the stretch missing at the start; one step does.
  const gapped = at([[-165000, 80], [-30000, 80], [-15000, 80], [0, 80]]);
  assert.equal(sdk.aboveFor(gapped, 70, T0, 300000), false);
  const stepped = at(Array.from({ length: 20 }, (_, i) => [-300000 + (i + 1) * 15000, 80]));
  assert.equal(sdk.aboveFor(stepped, 70, T0, 300000), true);
});

test('metrics that cannot be read are policy errors', () => {
  const ctx = context({}, [{ ...series([]), name: 'q', error: 'source down' }]);
  assert.throws(() => sdk.metric(ctx, 'q'), { message: 'metric q: source down' });
  assert.throws(() => sdk.metric(ctx, 'cpu'), sdk.PolicyError);
});

test('decisions, state and numbers', () => {
  assert.deepEqual(sdk.hold('r').action, { tag: 'hold' });
  const d = sdk.scaleTo(4, 'r', sdk.jsonState({ a: 1 }));
  assert.deepEqual(d.action, { tag: 'scale-to', val: 4 });
  assert.deepEqual(sdk.stateJson(context({}, [], d.state)), { a: 1 });
  assert.equal(sdk.stateJson(context({}, [], new Uint8Array([0xff]))), undefined);
  assert.deepEqual(sdk.scaleOrHold(3, 3, 'r').action, { tag: 'hold' });
  // NaN (an empty window's mean) would be lowered as 0 replicas.
  for (const bad of [NaN, undefined, Infinity, -1, 4.7, 2 ** 32]) {
    assert.throws(() => sdk.scaleTo(bad, 'r'), sdk.PolicyError, String(bad));
  }
  assert.equal(sdk.formatNumber(83), '83.0');
  assert.equal(sdk.formatNumber(0.0425), '0.0425');
  assert.equal(sdk.formatNumber(123456.7), '123457');
  assert.equal(sdk.formatNumber(1e20), '1.00e20');
  assert.equal(sdk.formatNumber(-4.5e-9), '-4.50e-9');
});

test('the export turns every thrown value into the error payload', () => {
  const info = sdk.info('p', '1', 'd', []);
  const bug = sdk.evaluator(info, () => null.x, () => {});
  assert.throws(() => bug.evaluate(context({})), (e) => e.payload.startsWith('TypeError: '));
  const refuses = sdk.evaluator(info, () => { throw new sdk.PolicyError('no data'); }, () => {});
  assert.throws(() => refuses.evaluate(context({})), (e) => e.payload === 'no data');
  assert.equal(refuses.describe(), info);
});
