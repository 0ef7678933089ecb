// Native unit tests of the `queue-tiers` policy (`scripts/test-native-policies`).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { decide, parseTiers } from './queue-tiers.js';
import { PolicyError } from './scalewise.js';

const T0 = 1700000000000n;

function ctx(current, values, params = {}) {
  const n = values.length;
  return {
    nowMs: T0,
    scaler: 'jobs',
    target: { kind: 'simulator', name: 'jobs', current, ready: current, min: 1, max: 50 },
    metrics: [
      {
        name: 'queue',
        timestampsMs: BigInt64Array.from(values, (_, i) => T0 - BigInt((n - 1 - i) * 15000)),
        values: Float64Array.from(values),
        error: undefined,
      },
    ],
    events: [],
    parameters: JSON.stringify({ metric: 'queue', tiers: '0:1, 100:2, 500:4', down_for: '1m', ...params }),
    state: undefined,
  };
}

const desired = (d) => (d.action.tag === 'scale-to' ? d.action.val : undefined);

test('parses and checks the table', () => {
  assert.deepEqual(parseTiers(' 0 : 1 ,100:2'), [
    { depth: 0, replicas: 1 },
    { depth: 100, replicas: 2 },
  ]);
  assert.throws(() => parseTiers('0:1,,5:2'), PolicyError);
  assert.throws(() => parseTiers('0:2, 5:1'), /must not fall/);
});

test('scales out to the tier of the newest depth, however far', () => {
  assert.equal(desired(decide(ctx(1, [0, 0, 750]))), 4);
  assert.equal(desired(decide(ctx(1, [0, 0, 100]))), 2, 'a tier starts at its depth');
  assert.equal(desired(decide(ctx(2, [0, 0, 99]))), undefined, 'hold at the tier');
});

test('scales in only after down_for below the tier above', () => {
  assert.equal(desired(decide(ctx(4, [600, 90, 80, 70]))), undefined, '45s below is not 1m');
  assert.equal(desired(decide(ctx(4, [600, 90, 80, 70, 60, 50]))), 1);
  // Never above 500 in the last minute, but not below 100 either: tier 2.
  assert.equal(desired(decide(ctx(4, [600, 300, 300, 300, 300, 300]))), 2);
  assert.equal(desired(decide(ctx(4, [50, 50, 50, 50, 50, 50], { down_for: '0s' }))), 1);
  // At 400 for a minute, then 50: down to 400's tier, not held at 4 for
  // the lower depth.
  const fell = decide(ctx(4, [400, 400, 400, 400, 400, 50]));
  assert.equal(desired(fell), 2, fell.reason);
  assert.match(fell.reason, /below 500 for 1m \(tier 2, from 100: 2 replicas\): 4 → 2$/);
  // Above the top tier's count, a depth that fell from the top tier goes
  // to the top tier at once (nothing above it to stay below).
  const top = decide(ctx(8, [600, 600, 600, 600, 600, 50]));
  assert.equal(desired(top), 4, top.reason);
});

test('a depth the policy cannot read is an error', () => {
  assert.throws(() => decide(ctx(2, [])), { message: 'metric queue: no samples' });
});
