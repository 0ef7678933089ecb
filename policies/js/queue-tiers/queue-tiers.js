// `queue-tiers`: the queue-depth tiers of runbooks. A table says how many
// replicas each depth of a queue needs ("0:1, 100:2, 500:4, 2000:8": from
// 500 queued messages on, run at least 4). Scale-out goes to the tier of the
// newest depth at once; scale-in goes down to a lower tier only once the
// depth has stayed below the threshold of the tier above it for `down_for`
// (the lowest such tier from the newest depth's up: a queue at 400 for five
// minutes that just fell to 50 goes to 400's tier), so a queue that drains
// in bursts does not flap.
//
// | name | kind | default | meaning |
// |---|---|---|---|
// | `metric` | metric | required | queue depth (give it a window as long as `down_for`) |
// | `tiers` | text | required | `depth:replicas` pairs, comma-separated, depths rising from 0 |
// | `down_for` | duration | "5m" | how long the depth stays below a tier before scaling in |

import * as sdk from './scalewise.js';

export const PARAMS = [
  sdk.param('metric', 'metric', 'Queue depth. Give it a window in the config at least as long as down_for.'),
  sdk.param(
    'tiers',
    'text',
    'depth:replicas pairs, comma-separated, depths rising from 0, e.g. "0:1, 100:2, 500:4".',
  ),
  sdk.param('down_for', 'duration', 'How long the depth must stay below a tier before scaling in.', '5m'),
];

export const INFO = sdk.info(
  'queue-tiers',
  '0.1.0',
  'Replicas by queue-depth tiers: scales out to the tier of the newest depth at once, ' +
    'and in only after the depth has stayed below the tier for down_for.',
  PARAMS,
);

/** Parses "0:1, 100:2, 500:4" into [{depth, replicas}], checked. */
export function parseTiers(text) {
  const tiers = text.split(',').map((part, i) => {
    const m = /^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+)\s*$/.exec(part);
    if (!m) {
      throw new sdk.PolicyError(
        `parameter 'tiers': tier ${i + 1} (${JSON.stringify(part.trim())}) is not depth:replicas`,
      );
    }
    return { depth: Number(m[1]), replicas: Number(m[2]) };
  });
  if (tiers[0].depth !== 0) {
    throw new sdk.PolicyError(`parameter 'tiers': the first tier must start at depth 0, not ${tiers[0].depth}`);
  }
  for (let i = 1; i < tiers.length; i++) {
    if (tiers[i].depth <= tiers[i - 1].depth) {
      throw new sdk.PolicyError(`parameter 'tiers': depths must rise, but tier ${i + 1} (${tiers[i].depth}) does not`);
    }
    if (tiers[i].replicas < tiers[i - 1].replicas) {
      throw new sdk.PolicyError(
        `parameter 'tiers': replicas must not fall, but tier ${i + 1} (${tiers[i].replicas}) does`,
      );
    }
  }
  return tiers;
}

/** The policy: a context in, a decision out (or a thrown PolicyError). */
export function decide(ctx) {
  const p = sdk.readParams(ctx, PARAMS);
  const tiers = parseTiers(p.tiers);
  const m = sdk.metric(ctx, p.metric);
  const depth = sdk.latest(m);
  if (depth === undefined) {
    throw new sdk.PolicyError(`metric ${m.name}: no samples`);
  }
  let tier = 0;
  while (tier + 1 < tiers.length && depth >= tiers[tier + 1].depth) tier++;
  const wanted = tiers[tier].replicas;
  const current = ctx.target.current;
  const at = `${m.name} ${sdk.formatNumber(depth)} is in tier ${tier + 1} (from ${tiers[tier].depth}: ${wanted} replicas)`;
  if (wanted > current) {
    return sdk.scaleTo(wanted, `${at}: ${current} → ${wanted}`);
  }
  if (wanted === current) {
    return sdk.hold(`${at}: hold at ${current}`);
  }
  if (tier + 1 === tiers.length) {
    // More replicas than the top tier asks for: nothing to wait for.
    return sdk.scaleTo(wanted, `${at}, the top tier: ${current} → ${wanted}`);
  }
  // Scale in to the lowest tier whose next threshold up the depth has
  // stayed below for down_for, from the newest depth's tier up; the top
  // tier has no threshold above it to stay below.
  const since = spanText(p.down_for);
  for (let t = tier; t < tiers.length && tiers[t].replicas < current; t++) {
    const to = tiers[t].replicas;
    const which = t === tier ? '' : ` (tier ${t + 1}, from ${tiers[t].depth}: ${to} replicas)`;
    if (t + 1 === tiers.length) {
      return sdk.scaleTo(to, `${at}; the top tier${which} asks for fewer: ${current} → ${to}`);
    }
    const above = tiers[t + 1].depth;
    if (!sdk.belowFor(m, above, ctx.nowMs, p.down_for)) continue;
    return sdk.scaleTo(to, `${at}, below ${above} for ${since}${which}: ${current} → ${to}`);
  }
  const above = tiers[tier + 1].depth;
  return sdk.hold(`${at}, but not below ${above} for ${since} yet: hold at ${current}`);
}

function spanText(ms) {
  for (const [unit, size] of [['h', 3600000], ['m', 60000], ['s', 1000]]) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
