/*
 * `error-guard`: gradual scale-in that stops when the error rate rises.
 *
 * Pair it with a policy that sizes the service (target-tracking, say). The
 * host combines a scaler's policies with scale-out winning and a hold
 * voting for the current count, so this policy decides how fast the
 * service may shrink, never how large it must be:
 *
 * - while the error rate is above `limit`, it holds, which blocks every
 *   scale-in (a scale-out asked by the other policy still goes ahead);
 * - once the error rate has stayed at or below `limit` for `quiet_for`, it
 *   asks for `step_down` fewer replicas, so the other policy's scale-in
 *   goes ahead that far and no further in one tick.
 *
 * | name | kind | default | meaning |
 * |---|---|---|---|
 * | `metric` | metric | required | the error rate (give it a window as long as `quiet_for`) |
 * | `limit` | number | required | the highest error rate at which scale-in may go on |
 * | `quiet_for` | duration | "5m" | how long the rate must stay at or below `limit` |
 * | `step_down` | integer | 1 | most replicas removed per tick |
 */
#include "error_guard.h"

void error_guard_describe(sw_info *ret) {
  sw_info_init(ret, "error-guard", "0.1.0",
               "Gradual scale-in that stops when the error rate rises: holds while the rate is "
               "above limit, else allows step_down fewer replicas per tick. Pair it with a "
               "policy that sizes the service.",
               4);
  sw_info_param(ret, 0, "metric", SW_METRIC, NULL,
                "The error rate. Give it a window in the config at least as long as quiet_for.");
  sw_info_param(ret, 1, "limit", SW_NUMBER, NULL,
                "The highest error rate at which scale-in may go on.");
  sw_info_param(ret, 2, "quiet_for", SW_DURATION, "\"5m\"",
                "How long the error rate must stay at or below limit before a step down.");
  sw_info_param(ret, 3, "step_down", SW_INTEGER, "1", "Most replicas removed in one tick (at least 1).");
}

static const char *const problem[] = {"", "is required", "has the wrong kind"};

bool error_guard_decide(const sw_context *ctx, sw_decision *ret, policy_string_t *err) {
  char name[128];
  double limit;
  int64_t quiet_for = 5 * 60000, step_down = 1;
  enum sw_param_result r;
  if ((r = sw_param_text(ctx, "metric", name, sizeof name)))
    return sw_fail(err, "parameter 'metric' %s", problem[r]);
  if ((r = sw_param_number(ctx, "limit", &limit)))
    return sw_fail(err, "parameter 'limit' %s", problem[r]);
  if ((r = sw_param_duration_ms(ctx, "quiet_for", &quiet_for)) == SW_PARAM_WRONG_KIND)
    return sw_fail(err, "parameter 'quiet_for' must be a duration such as \"5m\"");
  if ((r = sw_param_integer(ctx, "step_down", &step_down)) == SW_PARAM_WRONG_KIND || step_down < 1)
    return sw_fail(err, "parameter 'step_down' must be an integer of at least 1");

  const sw_metric *m = sw_metric_named(ctx, name);
  if (!m) return sw_fail(err, "no metric named '%s' in the context", name);
  if (m->error.is_some)
    return sw_fail(err, "metric %s: %.*s", name, (int)m->error.val.len, (const char *)m->error.val.ptr);
  double rate;
  if (!sw_latest(m, &rate)) return sw_fail(err, "metric %s: no samples", name);

  uint32_t current = ctx->target.current, min = ctx->target.min;
  char quiet[32], now[32], max[32];
  sw_duration_text(quiet_for, quiet, sizeof quiet);
  sw_number_text(rate, now, sizeof now);
  sw_number_text(limit, max, sizeof max);
  if (rate > limit) {
    sw_hold(ret, "%s %s above %s: no scale-in; hold at %u", name, now, max, current);
    return true;
  }
  if (!sw_held_for(m, ctx->now_ms, quiet_for, limit, false)) {
    sw_hold(ret, "%s %s within %s, but not for %s yet: hold at %u", name, now, max, quiet, current);
    return true;
  }
  if (current <= min) {
    sw_hold(ret, "%s at most %s for %s; at the minimum: hold at %u", name, max, quiet, current);
    return true;
  }
  uint32_t to = (int64_t)current - step_down > (int64_t)min ? current - (uint32_t)step_down : min;
  sw_scale_to(ret, to, "%s at most %s for %s: scale-in allowed to %u (%u → %u)", name, max, quiet, to,
              current, to);
  return true;
}
