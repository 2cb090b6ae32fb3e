/* counter: the smallest stateful atom. The value is a C global, so it lives
 * in linear memory and moves and checkpoints with the atom.
 *   hx_init([start])  start defaults to 0
 *   incr([n])  -> new value   (n defaults to 1)
 *   get        -> value
 */
#include "hx.h"

static int64_t value;

/* An optional int argument, given as `n` or `[n]`; nil or nothing = default. */
static bool optional_int(hx_mpr *args, int64_t fallback, int64_t *out) {
    *out = fallback;
    hx_mpr_unwrap1(args);
    hx_mp_type t = hx_mpr_peek(args);
    if (t == HX_MP_END) return true;
    if (t == HX_MP_NIL) return hx_mpr_nil(args);
    if (t == HX_MP_ARRAY) { /* [] */
        uint32_t n;
        return hx_mpr_array(args, &n) && n == 0;
    }
    return hx_mpr_int(args, out);
}

static int32_t init(hx_mpr *args) {
    if (!optional_int(args, 0, &value)) return hx_fail("counter init: expected an int start value");
    return 0;
}

static int32_t incr(hx_mpr *args) {
    int64_t n, sum;
    if (!optional_int(args, 1, &n)) return hx_fail("incr: expected an int");
    if (__builtin_add_overflow(value, n, &sum)) return hx_fail("incr: counter would overflow");
    value = sum;
    hx_reply_int(value);
    return 0;
}

static int32_t get(hx_mpr *args) {
    (void)args;
    hx_reply_int(value);
    return 0;
}

HX_INIT(init);
HX_METHODS(HX_METHOD("incr", incr), HX_METHOD("get", get));
