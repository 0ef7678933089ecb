/* Native unit tests of the C SDK's helpers (scalewise.h): built with the
 * system's C compiler against the generated policy.h and run by
 * tests/languages.rs. Every check runs; failures are listed, exit 1. */
#include "scalewise.h"

void scalewise_policy_log_log(scalewise_policy_log_level_t level, policy_string_t *message) {
  (void)level;
  (void)message;
}

static int failures;
#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                       \
    }                                                                   \
  } while (0)

#define T0 1700000000000LL

static sw_context with_params(const char *json) {
  sw_context c = {0};
  c.now_ms = T0;
  c.parameters = sw_string(json);
  return c;
}

/* A metric of `n` samples 15 s apart, the newest at T0 + `shift_ms`. */
static sw_metric series(const double *values, size_t n, int64_t shift_ms) {
  static int64_t ts[8][64];
  static double vs[8][64];
  static int slot;
  int s = slot++ % 8;
  for (size_t i = 0; i < n; i++) {
    ts[s][i] = T0 + shift_ms - (int64_t)(n - 1 - i) * 15000;
    vs[s][i] = values[i];
  }
  return (sw_metric){.name = sw_string("m"),
                     .timestamps_ms = {ts[s], n},
                     .values = {vs[s], n},
                     .error = {.is_some = false}};
}

/* A metric of `n` samples at the given times. */
static sw_metric at(int64_t *ts, const double *values, size_t n) {
  return (sw_metric){.name = sw_string("m"),
                     .timestamps_ms = {ts, n},
                     .values = {(double *)values, n},
                     .error = {.is_some = false}};
}

static void durations(void) {
  int64_t ms = -1;
  CHECK(sw_parse_duration_ms("30s", &ms) && ms == 30000);
  CHECK(sw_parse_duration_ms("1h 30m", &ms) && ms == 5400000);
  CHECK(sw_parse_duration_ms("10 minutes", &ms) && ms == 600000);
  CHECK(sw_parse_duration_ms("250ms", &ms) && ms == 250);
  CHECK(sw_parse_duration_ms("2d", &ms) && ms == 172800000);
  CHECK(sw_parse_duration_ms("0", &ms) && ms == 0);
  CHECK(sw_parse_duration_ms(" 5m ", &ms) && ms == 300000);
  CHECK(!sw_parse_duration_ms("5", &ms));
  CHECK(!sw_parse_duration_ms("soon", &ms));
  CHECK(!sw_parse_duration_ms("-5s", &ms));
  CHECK(!sw_parse_duration_ms("", &ms));
  CHECK(!sw_parse_duration_ms("5 parsecs", &ms));
  char buf[32];
  CHECK(!strcmp(sw_duration_text(300000, buf, sizeof buf), "5m"));
  CHECK(!strcmp(sw_duration_text(90000, buf, sizeof buf), "90s"));
  CHECK(!strcmp(sw_duration_text(3600000, buf, sizeof buf), "1h"));
  CHECK(!strcmp(sw_duration_text(250, buf, sizeof buf), "250ms"));
}

/* As the Rust SDK's format_number writes them. */
static void numbers(void) {
  char buf[64];
  uint32_t n = 7;
  CHECK(sw_replicas(4, &n) && n == 4);
  CHECK(sw_replicas(4294967295.0, &n) && n == 4294967295u);
  CHECK(!sw_replicas(0.0 / 0.0, &n) && !sw_replicas(-1, &n) && !sw_replicas(4.7, &n));
  CHECK(!sw_replicas(1.0 / 0.0, &n) && !sw_replicas(5e9, &n) && n == 4294967295u);
  CHECK(!strcmp(sw_number_text(83, buf, sizeof buf), "83.0"));
  CHECK(!strcmp(sw_number_text(0, buf, sizeof buf), "0.0"));
  CHECK(!strcmp(sw_number_text(0.0425, buf, sizeof buf), "0.0425"));
  CHECK(!strcmp(sw_number_text(123456.7, buf, sizeof buf), "123457"));
  CHECK(!strcmp(sw_number_text(1e20, buf, sizeof buf), "1.00e20"));
  CHECK(!strcmp(sw_number_text(-4.5e-9, buf, sizeof buf), "-4.50e-9"));
  policy_string_t s = sw_format("%s at %d", "cpu", 42);
  CHECK(s.len == 9 && sw_str_eq(&s, "cpu at 42"));
  free(s.ptr);
}

static void params(void) {
  sw_context c = with_params(
      "{\"nested\": {\"x\": [1, {\"y\": \"}\"}], \"z\": \"a,b\"}, \"a\": 1.5, "
      "\"b\": \"5m\", \"c\": \"te\\\"xt\\n\", \"n\": null, \"i\": 3, \"f\": 3.5, "
      "\"big\": 1e300, \"last\": \"z\"}");
  double d = 0;
  int64_t i = 0;
  char text[32];
  CHECK(sw_param_number(&c, "a", &d) == SW_PARAM_OK && d == 1.5);
  CHECK(sw_param_number(&c, "i", &d) == SW_PARAM_OK && d == 3);
  CHECK(sw_param_number(&c, "b", &d) == SW_PARAM_WRONG_KIND);
  CHECK(sw_param_number(&c, "n", &d) == SW_PARAM_MISSING);
  CHECK(sw_param_number(&c, "absent", &d) == SW_PARAM_MISSING);
  CHECK(sw_param_integer(&c, "i", &i) == SW_PARAM_OK && i == 3);
  CHECK(sw_param_integer(&c, "f", &i) == SW_PARAM_WRONG_KIND);
  CHECK(sw_param_integer(&c, "big", &i) == SW_PARAM_WRONG_KIND);
  CHECK(sw_param_duration_ms(&c, "b", &i) == SW_PARAM_OK && i == 300000);
  CHECK(sw_param_duration_ms(&c, "c", &i) == SW_PARAM_WRONG_KIND);
  CHECK(sw_param_text(&c, "c", text, sizeof text) == SW_PARAM_OK && !strcmp(text, "te\"xt\n"));
  CHECK(sw_param_text(&c, "a", text, sizeof text) == SW_PARAM_WRONG_KIND);
  /* Keys are found past nested values holding braces, commas and quotes,
   * and a nested key of the same name is not a top-level one. */
  CHECK(sw_param_text(&c, "last", text, sizeof text) == SW_PARAM_OK && !strcmp(text, "z"));
  CHECK(sw_param_text(&c, "y", text, sizeof text) == SW_PARAM_MISSING);
  /* Truncated into the buffer, NUL-terminated. */
  char small[4];
  CHECK(sw_param_text(&c, "c", small, sizeof small) == SW_PARAM_OK && !strcmp(small, "te\""));
  free(c.parameters.ptr);
  sw_context empty = with_params("{}");
  CHECK(sw_param_number(&empty, "a", &d) == SW_PARAM_MISSING);
  free(empty.parameters.ptr);
}

static void metrics(void) {
  const double v[] = {10, 20, 30, 40, 50};
  sw_metric m = series(v, 5, 0);
  double out = 0;
  CHECK(sw_latest(&m, &out) && out == 50);
  CHECK(sw_latest_at(&m, T0, &out) && out == 50);
  CHECK(sw_latest_at(&m, T0 - 1, &out) && out == 40);
  CHECK(!sw_latest_at(&m, T0 - 61000, &out));
  /* The last 30 s: samples at -30 s (the start, included), -15 s and 0. */
  CHECK(sw_mean_over(&m, T0, 30000, &out) && out == 40);
  CHECK(sw_max_over(&m, T0, 30000, &out) && out == 50);
  CHECK(!sw_mean_over(&m, T0 - 70000, 1000, &out));
  /* Samples after now are outside every window. */
  sw_metric ahead = series(v, 5, 15000);
  CHECK(sw_max_over(&ahead, T0, 15000, &out) && out == 40);
  sw_metric none = series(v, 0, 0);
  CHECK(!sw_latest(&none, &out) && !sw_max_over(&none, T0, 60000, &out));
}

static void held(void) {
  const double high[] = {80, 85, 90, 95, 99};
  sw_metric m = series(high, 5, 0); /* 60 s of samples, 15 s apart */
  CHECK(sw_held_for(&m, T0, 60000, 70, true));
  CHECK(!sw_held_for(&m, T0, 60000, 70, false));
  CHECK(!sw_held_for(&m, T0, 60000, 85, true)); /* 80 and 85 are not above */
  CHECK(sw_held_for(&m, T0, 0, 98, true));      /* 0: the newest sample */
  /* Two samples (15 s) are not five minutes; nor are two a minute apart
     two minutes (two samples tell no step), where three are. */
  sw_metric short_series = series(high, 2, 0);
  CHECK(!sw_held_for(&short_series, T0, 300000, 70, true));
  int64_t two_ts[] = {T0 - 60000, T0};
  sw_metric two = at(two_ts, high, 2);
  CHECK(!sw_held_for(&two, T0, 120000, 70, true));
  int64_t three_ts[] = {T0 - 120000, T0 - 60000, T0};
  sw_metric three = at(three_ts, high, 3);
  CHECK(sw_held_for(&three, T0, 120000, 70, true));
  /* Three tell the step: the first stands for one step before it. */
  int64_t slack_ts[] = {T0 - 50000, T0 - 25000, T0};
  sw_metric slack = at(slack_ts, high, 3);
  CHECK(sw_held_for(&slack, T0, 60000, 70, true));
  /* The sample before the window, in effect at its start, counts: */
  const double dipped[] = {50, 80, 85, 90, 95};
  sw_metric d = series(dipped, 5, 0);
  CHECK(sw_held_for(&d, T0, 45000, 70, true));  /* -45 s is 80 */
  CHECK(!sw_held_for(&d, T0, 50000, 70, true)); /* -60 s was 50 */
  /* Samples since -30 s and one at -165 s do not cover 5 minutes (the gap
     does not stand for the stretch missing at the start); a series one
     step in does. */
  int64_t gap_ts[] = {T0 - 165000, T0 - 30000, T0 - 15000, T0};
  double gap_vs[] = {80, 80, 80, 80};
  sw_metric gapped = {.name = sw_string("m"),
                      .timestamps_ms = {gap_ts, 4},
                      .values = {gap_vs, 4},
                      .error = {.is_some = false}};
  CHECK(!sw_held_for(&gapped, T0, 300000, 70, true));
  const double steady[] = {80, 80, 80, 80, 80};
  sw_metric stepped = series(steady, 5, 0); /* -60 s .. 0 */
  CHECK(sw_held_for(&stepped, T0, 75000, 70, true));
}

int main(void) {
  durations();
  numbers();
  params();
  metrics();
  held();
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("scalewise.h: all checks passed\n");
  return 0;
}
