// Scalewise policy SDK for JavaScript: one ES module, no dependencies.
//
// A JavaScript policy is a Wasm component built with componentize-js against
// the `scalewise:policy@0.1.0` world in `wit/`. Keep this file beside the
// policy (a copy or a link) and import it as `./scalewise.js`. It gives what
// a policy needs again and again:
//
// - `param`, `info`, `readParams`: declare parameters once, for `describe()`
//   and for reading `ctx.parameters` (JSON) with defaults and type checks;
// - `metric`, `latest`, `window`, `meanOver`, `maxOver`, `minOver`,
//   `percentileOver`, `aboveFor`, `belowFor`, `heldFor`: questions about a
//   metric's samples;
// - `hold`, `scaleTo`, `scaleOrHold`, `stateJson`, `jsonState`: building a
//   decision and keeping state between ticks;
// - `evaluator(info, decide, log)`: the object the component exports.
//
// This module imports nothing from the host, so a policy's logic unit-tests
// natively with `node --test`. The policy's entry file imports the host's
// logger (`import { log } from 'scalewise:policy/log@0.1.0'`) and hands it
// to `evaluator`.
//
// Types as componentize-js gives them: record fields in camelCase; `s64`
// values are BigInt (`ctx.nowMs`, `metric.timestampsMs` is a BigInt64Array);
// `metric.values` is a Float64Array; state is a Uint8Array or undefined.
// The helpers take times in milliseconds as plain numbers and accept BigInt
// too.

/** A reason this tick cannot be decided: the scaler holds and the message
 * is journaled as the policy's error. */
export class PolicyError extends Error {}

const KINDS = ['number', 'integer', 'boolean', 'text', 'duration', 'metric'];

/** A parameter the policy accepts; without a default it is required.
 * `kind`: number, integer, boolean, text, duration or metric. */
export function param(name, kind, description, defaultValue) {
  if (!KINDS.includes(kind)) {
    throw new Error(`parameter ${name}: unknown kind ${kind}`);
  }
  return { name, kind, description, defaultValue };
}

/** The policy's `describe()` answer. */
export function info(name, version, description, params) {
  return {
    name,
    version,
    description,
    parameters: params.map((p) => ({
      name: p.name,
      description: p.description,
      kind: p.kind,
      required: p.defaultValue === undefined,
      default: p.defaultValue === undefined ? undefined : JSON.stringify(p.defaultValue),
    })),
  };
}

/** `ctx.parameters` read against `params`: an object of every parameter,
 * defaults filled in, durations in milliseconds. */
export function readParams(ctx, params) {
  let given;
  try {
    given = JSON.parse(ctx.parameters || '{}');
  } catch (e) {
    throw new PolicyError(`parameters are not JSON: ${e.message}`);
  }
  if (given === null || typeof given !== 'object' || Array.isArray(given)) {
    throw new PolicyError('parameters are not a JSON object');
  }
  const known = new Set(params.map((p) => p.name));
  const unknown = Object.keys(given).filter((k) => !known.has(k)).sort();
  if (unknown.length > 0) {
    throw new PolicyError(`unknown parameter '${unknown[0]}'`);
  }
  const values = {};
  for (const p of params) {
    // An explicit null is not given, as in the Rust SDK: the default.
    const value = (Object.hasOwn(given, p.name) ? given[p.name] : undefined) ?? p.defaultValue;
    if (value === undefined || value === null) {
      throw new PolicyError(`parameter '${p.name}' is required`);
    }
    values[p.name] = check(p, value);
  }
  return values;
}

function check(p, value) {
  const wrong = (expected) =>
    new PolicyError(`parameter '${p.name}' must be ${expected}, not ${JSON.stringify(value)}`);
  switch (p.kind) {
    case 'number':
      if (typeof value !== 'number') throw wrong('a number');
      return value;
    case 'integer':
      if (!Number.isInteger(value)) throw wrong('an integer');
      return value;
    case 'boolean':
      if (typeof value !== 'boolean') throw wrong('true or false');
      return value;
    default:
      if (typeof value !== 'string') throw wrong('a string');
      if (p.kind === 'duration') {
        try {
          return durationMs(value);
        } catch (e) {
          throw new PolicyError(`parameter '${p.name}': ${e.message}`);
        }
      }
      return value;
  }
}

/** The host's units (humantime's), so that every duration the host accepts
 * for a `duration` parameter reads here too. */
const UNITS_MS = Object.fromEntries(
  [
    [['nanos', 'nsec', 'ns'], 1e-6],
    [['usec', 'us', '\u00b5s'], 1e-3],
    [['millis', 'msec', 'ms'], 1],
    [['seconds', 'second', 'secs', 'sec', 's'], 1000],
    [['minutes', 'minute', 'min', 'mins', 'm'], 60000],
    [['hours', 'hour', 'hr', 'hrs', 'h'], 3600000],
    [['days', 'day', 'd'], 86400000],
    [['weeks', 'week', 'wk', 'wks', 'w'], 7 * 86400000],
    [['months', 'month', 'M'], 2630016000],
    [['years', 'year', 'yr', 'yrs', 'y'], 31557600000],
  ].flatMap(([names, ms]) => names.map((n) => [n, ms])),
);

/** A duration such as "30s", "5m", "1h 30m", "10 minutes" or "250ms", in
 * milliseconds: the units the host accepts (humantime's), and "0". */
export function durationMs(text) {
  const trimmed = text.trim();
  if (trimmed === '0') return 0;
  const part = /\s*(\d+(?:\.\d+)?)\s*([a-zA-Z\u00b5]+)/y;
  let total = 0;
  let pos = 0;
  while (pos < trimmed.length) {
    part.lastIndex = pos;
    const m = part.exec(trimmed);
    if (!m || !Object.hasOwn(UNITS_MS, m[2])) {
      throw new Error(`invalid duration ${JSON.stringify(text)} (e.g. 30s, 5m, 1h 30m)`);
    }
    total += Number(m[1]) * UNITS_MS[m[2]];
    pos = part.lastIndex;
  }
  if (trimmed.length === 0) throw new Error('empty duration');
  return Math.trunc(total);
}

// --- metrics ----------------------------------------------------------------

/** The metric `name`; PolicyError when the context lacks it or it could
 * not be read this tick. */
export function metric(ctx, name) {
  const m = ctx.metrics.find((x) => x.name === name);
  if (!m) throw new PolicyError(`no metric named '${name}' in the context`);
  if (m.error !== undefined && m.error !== null) {
    throw new PolicyError(`metric ${name}: ${m.error}`);
  }
  return m;
}

/** The samples as [timestampMs, value] pairs (numbers), oldest first. */
export function points(m) {
  const out = [];
  for (let i = 0; i < m.values.length; i++) {
    out.push([Number(m.timestampsMs[i]), m.values[i]]);
  }
  return out;
}

/** The newest sample's value, or undefined. */
export function latest(m) {
  return m.values.length > 0 ? m.values[m.values.length - 1] : undefined;
}

/** The [timestampMs, value] samples of the last `durationMs` before
 * `nowMs` (the window's start included), oldest first. */
export function window(m, nowMs, durationMs) {
  const now = Number(nowMs);
  const start = now - Number(durationMs);
  return points(m).filter(([t]) => t >= start && t <= now);
}

const valuesIn = (m, nowMs, durationMs) => window(m, nowMs, durationMs).map(([, v]) => v);

/** Mean of the window's samples, or undefined when it holds none. */
export function meanOver(m, nowMs, durationMs) {
  const v = valuesIn(m, nowMs, durationMs);
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : undefined;
}

/** Largest sample in the window, or undefined. */
export function maxOver(m, nowMs, durationMs) {
  const v = valuesIn(m, nowMs, durationMs);
  return v.length ? Math.max(...v) : undefined;
}

/** Smallest sample in the window, or undefined. */
export function minOver(m, nowMs, durationMs) {
  const v = valuesIn(m, nowMs, durationMs);
  return v.length ? Math.min(...v) : undefined;
}

/** The q-th percentile (0-100) of the window's samples, interpolating
 * between the closest ranks; undefined when the window is empty. */
export function percentileOver(m, nowMs, durationMs, q) {
  const v = valuesIn(m, nowMs, durationMs).sort((a, b) => a - b);
  if (!v.length) return undefined;
  const rank = (Math.min(Math.max(q, 0), 100) / 100) * (v.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.min(lo + 1, v.length - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - lo);
}

/** Whether every sample of the last `durationMs` is above `threshold` and
 * the samples cover that duration (see `heldFor`). */
export function aboveFor(m, threshold, nowMs, durationMs) {
  return heldFor(m, nowMs, durationMs, (v) => v > threshold);
}

/** Whether every sample of the last `durationMs` is below `threshold`,
 * with the same coverage rule as `aboveFor`. */
export function belowFor(m, threshold, nowMs, durationMs) {
  return heldFor(m, nowMs, durationMs, (v) => v < threshold);
}

/** Whether `holds(value)` has been true for the last `durationMs`: every
 * sample of that duration satisfies it and the samples reach back to its
 * start (the sample before it, the value in effect when the duration began,
 * satisfies it too and is no further from the next one than the duration
 * or the gap before it; with no sample before it, the first lies within one
 * sample interval, told by three samples at least, of the start). A series that began a minute ago is not
 * "above for five minutes". A duration of 0: the newest sample alone. The
 * same rule as the Rust SDK's. */
export function heldFor(m, nowMs, durationMs, holds) {
  const now = Number(nowMs);
  const duration = Number(durationMs);
  const all = points(m).filter(([t]) => t <= now);
  if (!all.length) return false;
  if (duration <= 0) return holds(all[all.length - 1][1]);
  const start = now - duration;
  const inside = all.filter(([t]) => t >= start);
  if (!inside.length || !inside.every(([, v]) => holds(v))) return false;
  // The step (shortest spacing), not the widest gap: a gap must not stand
  // for a stretch missing at the start.
  // Two samples tell no step (at -60 s and 0 they would cover 2 minutes).
  let interval = 0;
  for (let i = 1; inside.length >= 3 && i < inside.length; i++) {
    const d = inside[i][0] - inside[i - 1][0];
    if (d > 0 && (interval === 0 || d < interval)) interval = d;
  }
  const first = inside[0][0];
  if (first <= start) return true;
  const before = all.filter(([t]) => t < start);
  if (!before.length) return first <= start + Math.max(interval, 1);
  const [prev, prevValue] = before[before.length - 1];
  if (!holds(prevValue)) return false;
  const gapBefore = before.length >= 2 ? prev - before[before.length - 2][0] : 0;
  return first - prev <= Math.max(duration, interval, gapBefore);
}

// --- decisions and state ------------------------------------------------------

/** Keep the current replica count. */
export function hold(reason, state) {
  return { action: { tag: 'hold' }, reason, state };
}

/** Run `replicas` replicas (the host clamps to the scaler's bounds). A
 * count that is not a whole number from 0 to 2^32-1 (NaN from an empty
 * window, a fraction, a negative) is a PolicyError, so the scaler holds:
 * lowered as it is, NaN would become 0 replicas. */
export function scaleTo(replicas, reason, state) {
  if (!Number.isInteger(replicas) || replicas < 0 || replicas > 0xffffffff) {
    throw new PolicyError(
      `scaleTo(${replicas}): a replica count is a whole number from 0 to 4294967295`,
    );
  }
  return { action: { tag: 'scale-to', val: replicas }, reason, state };
}

/** `hold` when `desired === current`, else `scaleTo(desired)`. */
export function scaleOrHold(current, desired, reason, state) {
  return desired === current ? hold(reason, state) : scaleTo(desired, reason, state);
}

/** The state this policy returned last time, read as JSON; undefined on the
 * first evaluation or when it is not JSON. */
export function stateJson(ctx) {
  if (!ctx.state) return undefined;
  try {
    return JSON.parse(new TextDecoder().decode(ctx.state));
  } catch {
    return undefined;
  }
}

/** `value` as state for a decision (JSON bytes). */
export function jsonState(value) {
  return new TextEncoder().encode(JSON.stringify(value));
}

/** A metric value for a reason: one decimal from 1 up, three significant
 * digits below 1, an exponent beyond 10^15 or below 10^-6. */
export function formatNumber(value) {
  const magnitude = Math.abs(value);
  if (!Number.isFinite(value)) return String(value);
  // As the Rust SDK writes it: 1.00e20, 4.50e-9 (no "+").
  if (magnitude >= 1e15 || (magnitude > 0 && magnitude < 1e-6)) return value.toExponential(2).replace('e+', 'e');
  if (magnitude >= 100000) return value.toFixed(0);
  if (magnitude >= 1 || magnitude === 0) return value.toFixed(1);
  const decimals = Math.min(Math.max(2 - Math.floor(Math.log10(magnitude)), 1), 9);
  return value.toFixed(decimals);
}

// --- the export ---------------------------------------------------------------

/** The object the component exports as `evaluator`: `export const evaluator
 * = sdk.evaluator(INFO, decide, log)`. `decide(ctx)` returns a decision; a
 * thrown PolicyError (or any other error) becomes the call's error, and the
 * scaler holds. `log` is the host's logger, `(level, message)`. */
export function evaluator(policyInfo, decide, log) {
  return {
    describe() {
      return policyInfo;
    },
    evaluate(ctx) {
      try {
        return decide(ctx, log);
      } catch (e) {
        const message = e instanceof PolicyError ? e.message : `${e?.name ?? 'Error'}: ${e?.message ?? e}`;
        // componentize-js turns a thrown value into the result's `err`:
        // its `payload` when it has one.
        const err = new Error(message);
        err.payload = message;
        throw err;
      }
    },
  };
}
