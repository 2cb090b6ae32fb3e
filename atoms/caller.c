/* caller: calls other atoms, for atom-to-atom tests.
 *   call [target, method, args]       -> result (blocking invoke)
 *   call_async [target, method, args] -> result (invoke_async, then recv until
 *                                        the future handler has run)
 *   send_many [target, code, n]       -> n   sends payloads 0..n-1 in order
 *   lookup [mode, scope, pattern]     -> array of GUIDs; mode "exact" | "any" |
 *                                        "all" (or 0/1/2), scope nil = names
 * A failed call fails with the callee's message.
 */
#include "hx.h"

typedef struct {
    const char *target, *method;
    uint32_t target_len, method_len;
    const uint8_t *args;
    uint32_t args_len;
} call_spec;

static bool read_call(hx_mpr *args, call_spec *c) {
    uint32_t n;
    if (!hx_mpr_array(args, &n) || (n != 2 && n != 3)) return false;
    if (!hx_mpr_str(args, &c->target, &c->target_len)) return false;
    if (!hx_mpr_str(args, &c->method, &c->method_len)) return false;
    c->args = 0;
    c->args_len = 0;
    if (n == 3 && !hx_mpr_raw(args, &c->args, &c->args_len)) return false;
    return hx_mpr_done(args);
}

static int32_t finish(int32_t status, hx_buf *out) {
    if (status == 0) {
        if (out->len) hx_reply(out->ptr, out->len);
        else hx_reply_nil();
        return 0;
    }
    if (status < 0 && out->len == 0) return hx_fail("call not allowed here");
    hx_reply(out->ptr, out->len); /* the callee's error message */
    return 1;
}

static int32_t call(hx_mpr *args) {
    call_spec c;
    if (!read_call(args, &c)) return hx_fail("call: expected [target, method, args]");
    hx_buf out;
    int32_t s = hx_call(c.target, c.target_len, c.method, c.method_len, c.args, c.args_len, &out);
    return finish(s, &out);
}

static int32_t call_async(hx_mpr *args) {
    call_spec c;
    if (!read_call(args, &c)) return hx_fail("call_async: expected [target, method, args]");
    int32_t id = hx_call_async(c.target, c.target_len, c.method, c.method_len, c.args,
                               c.args_len);
    if (id <= 0) return hx_fail("call_async: the call could not start");
    hx_buf out;
    int32_t s = hx_await(id, &out);
    if (s == -1 && out.len == 0) return hx_fail("call_async: atom stopping before the reply");
    return finish(s, &out);
}

static int32_t send_many(hx_mpr *args) {
    uint32_t n;
    const char *target;
    uint32_t target_len;
    int64_t code, count;
    if (!hx_mpr_array(args, &n) || n != 3 || !hx_mpr_str(args, &target, &target_len) ||
        !hx_mpr_int(args, &code) || !hx_mpr_int(args, &count) || count < 0 ||
        code < INT32_MIN || code > INT32_MAX)
        return hx_fail("send_many: expected [target, code, n]");
    for (int64_t i = 0; i < count; i++) {
        uint8_t buf[9];
        hx_mpw w;
        hx_mpw_init(&w, buf, sizeof buf);
        hx_mpw_int(&w, i);
        if (hx_send(target, target_len, (int32_t)code, buf, w.len) != 0)
            return hx_fail("send_many: send failed");
    }
    hx_reply_int(count);
    return 0;
}

static int32_t lookup(hx_mpr *args) {
    uint32_t n;
    int64_t mode = -1;
    const char *scope = 0, *pattern, *m;
    uint32_t scope_len = 0, pattern_len, m_len;
    if (!hx_mpr_array(args, &n) || n != 3)
        return hx_fail("lookup: expected [mode, scope, pattern]");
    if (hx_mpr_peek(args) == HX_MP_STR) {
        hx_mpr_str(args, &m, &m_len);
        if (hx_eq(m, m_len, HX_S("exact"))) mode = HX_LOOKUP_EXACT;
        else if (hx_eq(m, m_len, HX_S("any"))) mode = HX_LOOKUP_ANY;
        else if (hx_eq(m, m_len, HX_S("all"))) mode = HX_LOOKUP_ALL;
    } else {
        hx_mpr_int(args, &mode);
    }
    if (mode < 0 || mode > 2) return hx_fail("lookup: mode must be exact, any or all");
    if (hx_mpr_peek(args) == HX_MP_NIL) hx_mpr_nil(args);
    else hx_mpr_str(args, &scope, &scope_len);
    if (!hx_mpr_str(args, &pattern, &pattern_len) || !hx_mpr_done(args))
        return hx_fail("lookup: expected [mode, scope, pattern]");
    hx_buf out;
    int32_t s = hx_lookup((int32_t)mode, scope, scope_len, pattern, pattern_len, &out);
    return finish(s, &out);
}

HX_METHODS(HX_METHOD("call", call), HX_METHOD("call_async", call_async),
           HX_METHOD("send_many", send_many), HX_METHOD("lookup", lookup));
