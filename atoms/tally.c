/* tally: counts its calls before it calls another atom, for tests of a call caught
 * mid-run (a reentrant or daemon atom checkpointed while one of its calls waits).
 *   tally_then_call [target, method, args] -> the callee's result; the tally is
 *                                             raised before the call is made
 *   tally -> how many tally_then_call calls started
 */
#include "hx.h"

static int64_t tally;

static int32_t tally_then_call(hx_mpr *args) {
    uint32_t n;
    const char *target, *method;
    uint32_t target_len, method_len;
    const uint8_t *call_args = 0;
    uint32_t call_args_len = 0;
    if (!hx_mpr_array(args, &n) || n != 3 || !hx_mpr_str(args, &target, &target_len) ||
        !hx_mpr_str(args, &method, &method_len) ||
        !hx_mpr_raw(args, &call_args, &call_args_len) || !hx_mpr_done(args))
        return hx_fail("tally_then_call: expected [target, method, args]");
    tally++;
    hx_buf out;
    if (hx_call(target, target_len, method, method_len, call_args, call_args_len, &out) != 0)
        return hx_fail("tally_then_call: the call failed");
    if (out.len) hx_reply(out.ptr, out.len);
    else hx_reply_nil();
    return 0;
}

static int32_t get_tally(hx_mpr *args) {
    (void)args;
    hx_reply_int(tally);
    return 0;
}

HX_METHODS(HX_METHOD("tally_then_call", tally_then_call), HX_METHOD("tally", get_tally));
