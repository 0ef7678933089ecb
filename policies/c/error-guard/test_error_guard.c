/* Native unit tests of `error-guard`: built with the system's C compiler
 * against the generated policy.h and run by tests/languages.rs. */
#include <assert.h>

#include "error_guard.h"

static int logged;
void scalewise_policy_log_log(scalewise_policy_log_level_t level, policy_string_t *message) {
  (void)level;
  (void)message;
  logged++;
}

#define T0 1700000000000LL

/* A context at T0 with `n` error-rate samples 15 s apart, the newest at T0. */
static sw_context ctx(uint32_t current, const double *values, size_t n, const char *params) {
  static int64_t ts[64];
  static double vs[64];
  static sw_metric metric;
  for (size_t i = 0; i < n; i++) {
    ts[i] = T0 - (int64_t)(n - 1 - i) * 15000;
    vs[i] = values[i];
  }
  metric = (sw_metric){.name = sw_string("errors"),
                       .timestamps_ms = {ts, n},
                       .values = {vs, n},
                       .error = {.is_some = false}};
  sw_context c = {0};
  c.now_ms = T0;
  c.target.current = current;
  c.target.ready = current;
  c.target.min = 2;
  c.target.max = 20;
  c.metrics.ptr = &metric;
  c.metrics.len = 1;
  c.parameters = sw_string(params);
  return c;
}

#define PARAMS "{\"metric\":\"errors\",\"limit\":1.0,\"quiet_for\":\"1m\"}"

static int desired(const sw_decision *d) {
  return d->action.tag == SCALEWISE_POLICY_TYPES_ACTION_SCALE_TO ? (int)d->action.val.scale_to : -1;
}

static bool reason_is(const sw_decision *d, const char *text) {
  return sw_str_eq(&d->reason, text);
}

int main(void) {
  sw_decision d;
  policy_string_t err;
  const double quiet[] = {0.2, 0.1, 0.3, 0.2, 0.1};
  const double noisy[] = {0.2, 0.1, 3.0, 0.2, 0.1};
  const double rising[] = {0.2, 0.1, 0.3, 0.2, 2.5};

  sw_context c = ctx(6, quiet, 5, PARAMS);
  assert(error_guard_decide(&c, &d, &err));
  assert(desired(&d) == 5);
  assert(reason_is(&d, "errors at most 1.0 for 1m: scale-in allowed to 5 (6 → 5)"));

  c = ctx(6, rising, 5, PARAMS);
  assert(error_guard_decide(&c, &d, &err));
  assert(desired(&d) == -1);
  assert(reason_is(&d, "errors 2.5 above 1.0: no scale-in; hold at 6"));

  c = ctx(6, noisy, 5, PARAMS);
  assert(error_guard_decide(&c, &d, &err));
  assert(desired(&d) == -1);
  assert(reason_is(&d, "errors 0.100 within 1.0, but not for 1m yet: hold at 6"));

  c = ctx(6, quiet, 2, PARAMS); /* 15 s of samples are not a minute */
  assert(error_guard_decide(&c, &d, &err) && desired(&d) == -1);

  c = ctx(2, quiet, 5, PARAMS); /* at the scaler's minimum */
  assert(error_guard_decide(&c, &d, &err) && desired(&d) == -1);

  c = ctx(6, quiet, 5, "{\"metric\":\"errors\",\"limit\":1,\"quiet_for\":\"1m\",\"step_down\":3}");
  assert(error_guard_decide(&c, &d, &err) && desired(&d) == 3);
  c = ctx(4, quiet, 5, "{\"metric\":\"errors\",\"limit\":1,\"quiet_for\":\"1m\",\"step_down\":3}");
  assert(error_guard_decide(&c, &d, &err) && desired(&d) == 2);

  c = ctx(6, quiet, 5, "{\"metric\":\"errors\"}");
  assert(!error_guard_decide(&c, &d, &err) && sw_str_eq(&err, "parameter 'limit' is required"));
  c = ctx(6, quiet, 5, "{\"metric\":\"errors\",\"limit\":\"low\"}");
  assert(!error_guard_decide(&c, &d, &err) && sw_str_eq(&err, "parameter 'limit' has the wrong kind"));
  c = ctx(6, quiet, 5, "{\"metric\":\"latency\",\"limit\":1}");
  assert(!error_guard_decide(&c, &d, &err) && sw_str_eq(&err, "no metric named 'latency' in the context"));

  /* The JSON reader skips nested values and escaped quotes. */
  c = ctx(6, quiet, 5, "{\"x\":{\"limit\":9,\"y\":[1,\"}\"]},\"s\":\"a\\\"b\",\"metric\":\"errors\",\"limit\":1}");
  assert(error_guard_decide(&c, &d, &err));
  assert(reason_is(&d, "errors 0.100 within 1.0, but not for 5m yet: hold at 6"));

  /* sw_held_for follows the Rust SDK's rule: the value in effect when the
   * duration began must hold, and an old sample does not vouch for a gap. */
  {
    int64_t ts[3];
    double vs[3];
    sw_metric m = {.name = sw_string("m"), .timestamps_ms = {ts, 3}, .values = {vs, 3}};
    const int64_t starts[][3] = {{-130000, -61000, 0}, {-3600000, -20000, 0}, {-330000, -20000, 0}, {-310000, -10000, 0}};
    const double values[][3] = {{50, 85, 85}, {0.1, 0.1, 0.1}, {0.1, 0.1, 0.1}, {0.1, 0.1, 0.1}};
    const int64_t durations[] = {120000, 300000, 300000, 300000};
    const bool above[] = {true, false, false, false};
    const double thresholds[] = {70, 1, 1, 1};
    const bool want[] = {false, false, false, true};
    for (size_t k = 0; k < 4; k++) {
      for (size_t i = 0; i < 3; i++) {
        ts[i] = T0 + starts[k][i];
        vs[i] = values[k][i];
      }
      assert(sw_held_for(&m, T0, durations[k], thresholds[k], above[k]) == want[k]);
    }
  }

  /* Every unit the host accepts for a duration parameter (humantime's). */
  {
    int64_t ms = -1;
    assert(sw_parse_duration_ms("0", &ms) && ms == 0);
    assert(sw_parse_duration_ms("10 minutes", &ms) && ms == 600000);
    assert(sw_parse_duration_ms("2 hours", &ms) && ms == 7200000);
    assert(sw_parse_duration_ms("1w", &ms) && ms == 604800000);
    assert(sw_parse_duration_ms("30secs", &ms) && ms == 30000);
    assert(sw_parse_duration_ms("1M", &ms) && ms == 2630016000LL);
    assert(sw_parse_duration_ms("1h 30m", &ms) && ms == 5400000);
    assert(!sw_parse_duration_ms("5", &ms) && !sw_parse_duration_ms("5 parsecs", &ms));
    assert(!sw_parse_duration_ms("", &ms) && !sw_parse_duration_ms("inf s", &ms));
  }

  char buf[32];
  assert(!strcmp(sw_number_text(83, buf, sizeof buf), "83.0"));
  assert(!strcmp(sw_number_text(123456.7, buf, sizeof buf), "123457"));
  assert(!strcmp(sw_number_text(0.0425, buf, sizeof buf), "0.0425"));
  assert(!strcmp(sw_number_text(1e20, buf, sizeof buf), "1.00e20"));

  int64_t ms;
  assert(sw_parse_duration_ms("1h 30m", &ms) && ms == 5400000);
  assert(sw_parse_duration_ms("250ms", &ms) && ms == 250);
  assert(!sw_parse_duration_ms("soon", &ms) && !sw_parse_duration_ms("", &ms));

  sw_log(SCALEWISE_POLICY_TYPES_LEVEL_INFO, "%d", 1);
  assert(logged == 1);
  puts("error-guard: all native tests passed");
  return 0;
}
