/* echo: hands arguments back, and shows the identity syscalls.
 *   echo x  -> x (the raw argument bytes; nil when there are none)
 *   info    -> {"guid": ..., "node": ...}
 *   log str -> nil (the line goes to the node's log at level info)
 */
#include "hx.h"

static int32_t echo(hx_mpr *args) {
    if (args->len == 0) hx_reply_nil();
    else hx_reply(args->p, args->len);
    return 0;
}

static int32_t info(hx_mpr *args) {
    (void)args;
    hx_buf guid, node;
    if (!hx_self_guid_scratch(&guid) || !hx_node_name_scratch(&node))
        return hx_fail("info: cannot read the atom's identity");
    hx_mpw w;
    hx_mpw_scratch(&w, guid.len + node.len + 32);
    hx_mpw_map(&w, 2);
    hx_mpw_str(&w, HX_S("guid"));
    hx_mpw_str(&w, (const char *)guid.ptr, guid.len);
    hx_mpw_str(&w, HX_S("node"));
    hx_mpw_str(&w, (const char *)node.ptr, node.len);
    return hx_reply_mpw(&w);
}

static int32_t log_line(hx_mpr *args) {
    const char *s;
    uint32_t n;
    hx_mpr_unwrap1(args);
    if (!hx_mpr_str(args, &s, &n)) return hx_fail("log: expected a str");
    hx_log(HX_LOG_INFO, s, n);
    hx_reply_nil();
    return 0;
}

HX_METHODS(HX_METHOD("echo", echo), HX_METHOD("info", info), HX_METHOD("log", log_line));
