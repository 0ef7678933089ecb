/* `error-guard`: the logic, apart from the exports so it unit-tests natively. */
#ifndef ERROR_GUARD_H
#define ERROR_GUARD_H

#include "scalewise.h"

/* describe()'s answer. */
void error_guard_describe(sw_info *ret);

/* One decision; false with `err` set when the tick cannot be decided. */
bool error_guard_decide(const sw_context *ctx, sw_decision *ret, policy_string_t *err);

#endif
