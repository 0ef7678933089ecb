/*
 * Scalewise policy SDK for C: one header, over the bindings `wit-bindgen c`
 * generates from wit/ (`policy.h`).
 *
 * A C policy implements the two exports the bindings declare:
 *
 *   void exports_scalewise_policy_evaluator_describe(sw_info *ret);
 *   bool exports_scalewise_policy_evaluator_evaluate(sw_context *ctx,
 *                                                    sw_decision *ret,
 *                                                    policy_string_t *err);
 *
 * and uses the helpers below for what every policy needs: parameters read
 * from the context's JSON with kind checks, questions about a metric's
 * samples, decisions with formatted reasons, and failures (return
 * `sw_fail(err, ...)`: the scaler holds that tick and the message is
 * journaled).
 *
 * Everything a policy hands back (strings, lists) must be allocated with
 * malloc: the bindings free it after the call. The helpers do that.
 *
 * The helpers use only the C library, so a policy's logic compiles natively
 * too (with `policy.h` on the include path) and can be unit-tested with the
 * system compiler; a native test defines `scalewise_policy_log_log` itself.
 */
#ifndef SCALEWISE_H
#define SCALEWISE_H

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

typedef exports_scalewise_policy_evaluator_context_t sw_context;
typedef exports_scalewise_policy_evaluator_decision_t sw_decision;
typedef exports_scalewise_policy_evaluator_info_t sw_info;
typedef scalewise_policy_types_metric_t sw_metric;
typedef scalewise_policy_types_parameter_t sw_parameter;

enum sw_kind {
  SW_NUMBER = SCALEWISE_POLICY_TYPES_PARAMETER_KIND_NUMBER,
  SW_INTEGER = SCALEWISE_POLICY_TYPES_PARAMETER_KIND_INTEGER,
  SW_BOOLEAN = SCALEWISE_POLICY_TYPES_PARAMETER_KIND_BOOLEAN,
  SW_TEXT = SCALEWISE_POLICY_TYPES_PARAMETER_KIND_TEXT,
  SW_DURATION = SCALEWISE_POLICY_TYPES_PARAMETER_KIND_DURATION,
  SW_METRIC = SCALEWISE_POLICY_TYPES_PARAMETER_KIND_METRIC,
};

/* --- strings ---------------------------------------------------------------- */

/* A malloc'd copy of `s` (NUL-terminated) as a WIT string. */
static policy_string_t sw_string(const char *s) {
  policy_string_t out;
  out.len = strlen(s);
  out.ptr = (uint8_t *)malloc(out.len ? out.len : 1);
  memcpy(out.ptr, s, out.len);
  return out;
}

/* A malloc'd, printf-formatted WIT string. */
static policy_string_t sw_vformat(const char *fmt, va_list args) {
  va_list again;
  va_copy(again, args);
  int n = vsnprintf(NULL, 0, fmt, args);
  policy_string_t out;
  out.len = n > 0 ? (size_t)n : 0;
  out.ptr = (uint8_t *)malloc(out.len + 1);
  vsnprintf((char *)out.ptr, out.len + 1, fmt, again);
  va_end(again);
  return out;
}

static policy_string_t sw_format(const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  policy_string_t out = sw_vformat(fmt, args);
  va_end(args);
  return out;
}

/* Whether the WIT string `s` equals the C string `c`. */
static bool sw_str_eq(const policy_string_t *s, const char *c) {
  size_t n = strlen(c);
  return s->len == n && memcmp(s->ptr, c, n) == 0;
}

/* --- describe() ------------------------------------------------------------- */

/* Starts `info` with room for `count` parameters. */
static void sw_info_init(sw_info *info, const char *name, const char *version,
                         const char *description, size_t count) {
  info->name = sw_string(name);
  info->version = sw_string(version);
  info->description = sw_string(description);
  info->parameters.len = count;
  info->parameters.ptr = (sw_parameter *)calloc(count ? count : 1, sizeof(sw_parameter));
}

/* Sets parameter `i`. `default_json` is the default as JSON text (`"5m"`
 * with its quotes, `1`), or NULL for a required parameter. */
static void sw_info_param(sw_info *info, size_t i, const char *name, enum sw_kind kind,
                          const char *default_json, const char *description) {
  sw_parameter *p = &info->parameters.ptr[i];
  p->name = sw_string(name);
  p->description = sw_string(description);
  p->kind = (scalewise_policy_types_parameter_kind_t)kind;
  p->required = default_json == NULL;
  p->default_.is_some = default_json != NULL;
  if (default_json) p->default_.val = sw_string(default_json);
}

/* --- decisions and failures --------------------------------------------------- */

/* Keep the current count, with a formatted reason. */
static void sw_hold(sw_decision *ret, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  ret->action.tag = SCALEWISE_POLICY_TYPES_ACTION_HOLD;
  ret->reason = sw_vformat(fmt, args);
  ret->state.is_some = false;
  va_end(args);
}

/* `count` as a replica count: false when it is not a whole number from 0
 * to UINT32_MAX (NaN from 0/0, a negative, a fraction), which a plain
 * conversion would turn into 0 (a scale-in to min) or cut. Round first:
 * `if (!sw_replicas(ceil(load / per), &n)) return sw_fail(err, ...);` */
static bool sw_replicas(double count, uint32_t *out) {
  if (!(count >= 0 && count <= 4294967295.0) || count != (double)(uint64_t)count) return false;
  *out = (uint32_t)count;
  return true;
}

/* Run `replicas` replicas, with a formatted reason. */
static void sw_scale_to(sw_decision *ret, uint32_t replicas, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  ret->action.tag = SCALEWISE_POLICY_TYPES_ACTION_SCALE_TO;
  ret->action.val.scale_to = replicas;
  ret->reason = sw_vformat(fmt, args);
  ret->state.is_some = false;
  va_end(args);
}

/* The call's error: `return sw_fail(err, "...", ...);` from evaluate. */
static bool sw_fail(policy_string_t *err, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  *err = sw_vformat(fmt, args);
  va_end(args);
  return false;
}

/* The host's logger. */
static void sw_log(scalewise_policy_log_level_t level, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  policy_string_t message = sw_vformat(fmt, args);
  va_end(args);
  scalewise_policy_log_log(level, &message);
  free(message.ptr);
}

/* --- durations -------------------------------------------------------------- */

/* The host's units (humantime's), so that every duration the host accepts
 * for a `duration` parameter reads here too. */
static const struct {
  const char *name;
  double ms;
} sw_duration_units[] = {
    {"nanos", 1e-6},   {"nsec", 1e-6},   {"ns", 1e-6},     {"usec", 1e-3},   {"us", 1e-3},
    {"\xc2\xb5s", 1e-3}, {"millis", 1},    {"msec", 1},      {"ms", 1},        {"seconds", 1e3},
    {"second", 1e3},   {"secs", 1e3},    {"sec", 1e3},     {"s", 1e3},       {"minutes", 6e4},
    {"minute", 6e4},   {"min", 6e4},     {"mins", 6e4},    {"m", 6e4},       {"hours", 3.6e6},
    {"hour", 3.6e6},   {"hr", 3.6e6},    {"hrs", 3.6e6},   {"h", 3.6e6},     {"days", 8.64e7},
    {"day", 8.64e7},   {"d", 8.64e7},    {"weeks", 6.048e8}, {"week", 6.048e8}, {"wk", 6.048e8},
    {"wks", 6.048e8},  {"w", 6.048e8},   {"months", 2.630016e9}, {"month", 2.630016e9},
    {"M", 2.630016e9}, {"years", 3.15576e10}, {"year", 3.15576e10}, {"yr", 3.15576e10},
    {"yrs", 3.15576e10}, {"y", 3.15576e10},
};

/* Parses "30s", "5m", "1h 30m", "10 minutes", "250ms" (the units the host
 * accepts, and "0") into milliseconds; false if it is not a duration. */
static bool sw_parse_duration_ms(const char *text, int64_t *out) {
  double total = 0;
  const char *p = text;
  bool any = false;
  while (*p == ' ') p++;
  if (p[0] == '0' && (p[1] == 0 || p[1] == ' ')) {
    const char *rest = p + 1;
    while (*rest == ' ') rest++;
    if (!*rest) {
      *out = 0;
      return true;
    }
  }
  while (*p) {
    while (*p == ' ') p++;
    if (!*p) break;
    if (*p < '0' || *p > '9') return false;
    char *end;
    double n = strtod(p, &end);
    if (end == p || n < 0) return false;
    p = end;
    while (*p == ' ') p++;
    const char *unit = p;
    while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (unsigned char)*p >= 0x80) p++;
    size_t len = (size_t)(p - unit);
    double scale = -1;
    for (size_t i = 0; i < sizeof sw_duration_units / sizeof sw_duration_units[0]; i++) {
      if (strlen(sw_duration_units[i].name) == len && !strncmp(unit, sw_duration_units[i].name, len)) {
        scale = sw_duration_units[i].ms;
        break;
      }
    }
    if (scale < 0) return false;
    total += n * scale;
    any = true;
  }
  if (!any) return false;
  *out = (int64_t)total;
  return true;
}

/* A metric value for a reason, as the Rust SDK's `format_number`: one
 * decimal from 1 up (83.0), none from 100,000 up, three significant digits
 * below 1 (0.0425), an exponent beyond 1e15 or below 1e-6. */
static const char *sw_number_text(double v, char *buf, size_t cap) {
  double a = fabs(v);
  if (!isfinite(v)) snprintf(buf, cap, "%g", v);
  else if (a >= 1e15 || (a > 0 && a < 1e-6)) {
    /* As the Rust SDK writes it: 1.00e20, 4.50e-9 (printf's 1.00e+20 and
     * 4.50e-09 have a sign and padding it does not). */
    char e[32];
    snprintf(e, sizeof e, "%.2e", v);
    char *x = strchr(e, 'e');
    int exponent = x ? atoi(x + 1) : 0;
    if (x) *x = 0;
    snprintf(buf, cap, "%se%d", e, exponent);
  }
  else if (a >= 100000) snprintf(buf, cap, "%.0f", v);
  else if (a >= 1 || a == 0) snprintf(buf, cap, "%.1f", v);
  else {
    int decimals = 2 - (int)floor(log10(a));
    snprintf(buf, cap, "%.*f", decimals < 1 ? 1 : decimals > 9 ? 9 : decimals, v);
  }
  return buf;
}

/* A duration for a reason: "5m", "90s", "1h", "250ms", into `buf`. */
static const char *sw_duration_text(int64_t ms, char *buf, size_t cap) {
  if (ms > 0 && ms % 3600000 == 0) snprintf(buf, cap, "%lldh", (long long)(ms / 3600000));
  else if (ms > 0 && ms % 60000 == 0) snprintf(buf, cap, "%lldm", (long long)(ms / 60000));
  else if (ms > 0 && ms % 1000 == 0) snprintf(buf, cap, "%llds", (long long)(ms / 1000));
  else snprintf(buf, cap, "%lldms", (long long)ms);
  return buf;
}

/* --- parameters: the context's flat JSON object ------------------------------- */

enum sw_param_result { SW_PARAM_OK = 0, SW_PARAM_MISSING, SW_PARAM_WRONG_KIND };

typedef struct {
  const char *p, *end;
} sw_json;

static void sw_json_ws(sw_json *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\t' || *j->p == '\r')) j->p++;
}

/* Skips a JSON string at j->p (which is at its opening quote); copies up to
 * `cap - 1` bytes of its (unescaped) text into `buf` when given. */
static bool sw_json_string(sw_json *j, char *buf, size_t cap) {
  if (j->p >= j->end || *j->p != '"') return false;
  j->p++;
  size_t n = 0;
  while (j->p < j->end && *j->p != '"') {
    char c = *j->p++;
    if (c == '\\' && j->p < j->end) {
      char e = *j->p++;
      c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == 'b' ? '\b' : e == 'f' ? '\f' : e;
      if (e == 'u') { /* non-ASCII escapes: kept as '?' */
        j->p += (j->end - j->p >= 4) ? 4 : (j->end - j->p);
        c = '?';
      }
    }
    if (buf && n + 1 < cap) buf[n++] = c;
  }
  if (buf && cap) buf[n] = 0;
  if (j->p >= j->end) return false;
  j->p++;
  return true;
}

/* Skips any JSON value. */
static bool sw_json_skip(sw_json *j) {
  sw_json_ws(j);
  if (j->p >= j->end) return false;
  if (*j->p == '"') return sw_json_string(j, NULL, 0);
  if (*j->p == '{' || *j->p == '[') {
    int depth = 0;
    while (j->p < j->end) {
      if (*j->p == '"') {
        if (!sw_json_string(j, NULL, 0)) return false;
        continue;
      }
      if (*j->p == '{' || *j->p == '[') depth++;
      if (*j->p == '}' || *j->p == ']') depth--;
      j->p++;
      if (depth == 0) return true;
    }
    return false;
  }
  while (j->p < j->end && *j->p != ',' && *j->p != '}' && *j->p != ']') j->p++;
  return true;
}

/* Finds `name` among the top-level keys of the context's parameters; on
 * success j->p is at its value. */
static bool sw_json_find(const sw_context *ctx, const char *name, sw_json *j) {
  j->p = (const char *)ctx->parameters.ptr;
  j->end = j->p + ctx->parameters.len;
  sw_json_ws(j);
  if (j->p >= j->end || *j->p != '{') return false;
  j->p++;
  char key[128];
  for (;;) {
    sw_json_ws(j);
    if (j->p >= j->end || *j->p == '}') return false;
    if (!sw_json_string(j, key, sizeof key)) return false;
    sw_json_ws(j);
    if (j->p >= j->end || *j->p != ':') return false;
    j->p++;
    sw_json_ws(j);
    if (!strcmp(key, name)) return true;
    if (!sw_json_skip(j)) return false;
    sw_json_ws(j);
    if (j->p < j->end && *j->p == ',') j->p++;
  }
}

/* The number parameter `name` (a JSON number). */
static enum sw_param_result sw_param_number(const sw_context *ctx, const char *name, double *out) {
  sw_json j;
  if (!sw_json_find(ctx, name, &j) || !strncmp(j.p, "null", 4)) return SW_PARAM_MISSING;
  char buf[64];
  size_t n = 0;
  while (j.p < j.end && n + 1 < sizeof buf && strchr("+-0123456789.eE", *j.p)) buf[n++] = *j.p++;
  buf[n] = 0;
  char *end;
  double v = strtod(buf, &end);
  if (n == 0 || *end) return SW_PARAM_WRONG_KIND;
  *out = v;
  return SW_PARAM_OK;
}

/* The integer parameter `name`. */
static enum sw_param_result sw_param_integer(const sw_context *ctx, const char *name, int64_t *out) {
  double v;
  enum sw_param_result r = sw_param_number(ctx, name, &v);
  if (r != SW_PARAM_OK) return r;
  if (v != floor(v) || fabs(v) > 9e15) return SW_PARAM_WRONG_KIND;
  *out = (int64_t)v;
  return SW_PARAM_OK;
}

/* The text (or metric name) parameter `name`, NUL-terminated into `buf`. */
static enum sw_param_result sw_param_text(const sw_context *ctx, const char *name, char *buf, size_t cap) {
  sw_json j;
  if (!sw_json_find(ctx, name, &j) || !strncmp(j.p, "null", 4)) return SW_PARAM_MISSING;
  return sw_json_string(&j, buf, cap) ? SW_PARAM_OK : SW_PARAM_WRONG_KIND;
}

/* The duration parameter `name`, in milliseconds. */
static enum sw_param_result sw_param_duration_ms(const sw_context *ctx, const char *name, int64_t *out) {
  char text[64];
  enum sw_param_result r = sw_param_text(ctx, name, text, sizeof text);
  if (r != SW_PARAM_OK) return r;
  return sw_parse_duration_ms(text, out) ? SW_PARAM_OK : SW_PARAM_WRONG_KIND;
}

/* --- metrics ------------------------------------------------------------------ */

/* The metric `name`, or NULL when the context has none of that name. */
static const sw_metric *sw_metric_named(const sw_context *ctx, const char *name) {
  for (size_t i = 0; i < ctx->metrics.len; i++) {
    if (sw_str_eq(&ctx->metrics.ptr[i].name, name)) return &ctx->metrics.ptr[i];
  }
  return NULL;
}

/* The newest sample's value; false when there is none. */
static bool sw_latest(const sw_metric *m, double *out) {
  if (m->values.len == 0) return false;
  *out = m->values.ptr[m->values.len - 1];
  return true;
}

/* The value of the newest sample at or before `now_ms` (samples dated
 * after it, from a source whose clock runs ahead, are left out, as the
 * Rust SDK's `newest` leaves them); false when there is none. */
static bool sw_latest_at(const sw_metric *m, int64_t now_ms, double *out) {
  for (size_t i = m->timestamps_ms.len; i > 0; i--) {
    if (m->timestamps_ms.ptr[i - 1] <= now_ms) {
      *out = m->values.ptr[i - 1];
      return true;
    }
  }
  return false;
}

/* The index range [*first, *last) of the samples of the last `duration_ms`
 * before `now_ms`, the window's start included. */
static void sw_window(const sw_metric *m, int64_t now_ms, int64_t duration_ms, size_t *first, size_t *last) {
  int64_t start = now_ms - duration_ms;
  size_t i = 0, n = m->timestamps_ms.len;
  while (i < n && m->timestamps_ms.ptr[i] < start) i++;
  size_t k = i;
  while (k < n && m->timestamps_ms.ptr[k] <= now_ms) k++;
  *first = i;
  *last = k;
}

/* Mean of the window's samples; false when it holds none. */
static bool sw_mean_over(const sw_metric *m, int64_t now_ms, int64_t duration_ms, double *out) {
  size_t a, b;
  sw_window(m, now_ms, duration_ms, &a, &b);
  if (a == b) return false;
  double sum = 0;
  for (size_t i = a; i < b; i++) sum += m->values.ptr[i];
  *out = sum / (double)(b - a);
  return true;
}

/* Largest sample in the window; false when it holds none. */
static bool sw_max_over(const sw_metric *m, int64_t now_ms, int64_t duration_ms, double *out) {
  size_t a, b;
  sw_window(m, now_ms, duration_ms, &a, &b);
  if (a == b) return false;
  double best = m->values.ptr[a];
  for (size_t i = a + 1; i < b; i++) best = m->values.ptr[i] > best ? m->values.ptr[i] : best;
  *out = best;
  return true;
}

/* Whether every sample of the last `duration_ms` is at most (`above` false)
 * or above (`above` true) `threshold`, and the samples reach back to the
 * duration's start: the sample before it (the value in effect when the
 * duration began) satisfies the condition too and is no further from the
 * next one than the duration (or the gap before it); with no sample before
 * it, the first lies within one sample interval (told by three samples at
 * least) of the start. A series
 * that began a minute ago has not been quiet "for five minutes". 0: the
 * newest sample. The same rule as the Rust SDK's. */
static bool sw_held_for(const sw_metric *m, int64_t now_ms, int64_t duration_ms, double threshold, bool above) {
#define SW_HOLDS(v) (above ? (v) > threshold : (v) <= threshold)
  size_t a, b;
  sw_window(m, now_ms, duration_ms > 0 ? duration_ms : 0, &a, &b);
  if (duration_ms <= 0) {
    sw_window(m, now_ms, INT64_MAX / 2, &a, &b);
    return b > a && SW_HOLDS(m->values.ptr[b - 1]);
  }
  if (a == b) return false;
  /* The step (shortest spacing), not the widest gap: a gap must not stand
     for a stretch missing at the start. */
  int64_t interval = 0;
  for (size_t i = a; i < b; i++) {
    if (!SW_HOLDS(m->values.ptr[i])) return false;
    int64_t d = i > a ? m->timestamps_ms.ptr[i] - m->timestamps_ms.ptr[i - 1] : 0;
    if (d > 0 && (interval == 0 || d < interval)) interval = d;
  }
  /* Two samples tell no step (at -60 s and 0 they would cover 2 minutes). */
  if (b - a < 3 || interval == 0) interval = 1;
  int64_t start = now_ms - duration_ms, first = m->timestamps_ms.ptr[a];
  if (first <= start) return true;
  if (a == 0) return first <= start + interval;
  if (!SW_HOLDS(m->values.ptr[a - 1])) return false;
  int64_t gap = first - m->timestamps_ms.ptr[a - 1];
  int64_t gap_before = a >= 2 ? m->timestamps_ms.ptr[a - 1] - m->timestamps_ms.ptr[a - 2] : 0;
  int64_t allowed = duration_ms > interval ? duration_ms : interval;
  return gap <= (gap_before > allowed ? gap_before : allowed);
#undef SW_HOLDS
}

#endif /* SCALEWISE_H */
