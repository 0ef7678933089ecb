/* The component's exports: the generated bindings call these. */
#include "error_guard.h"

void exports_scalewise_policy_evaluator_describe(sw_info *ret) { error_guard_describe(ret); }

bool exports_scalewise_policy_evaluator_evaluate(sw_context *ctx, sw_decision *ret, policy_string_t *err) {
  return error_guard_decide(ctx, ret, err);
}
