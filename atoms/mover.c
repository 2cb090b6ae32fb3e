/* mover: an atom that moves itself, carrying its state.
 *   go node -> name of the node it is on now (the move happens after the call)
 *   where   -> name of the node it is on
 *   bump    -> counter + 1 (the counter travels with the atom)
 */
#include "hx.h"

static int64_t bumps;

static int32_t reply_node(void) {
    hx_buf node;
    if (!hx_node_name_scratch(&node)) return hx_fail("cannot read the node name");
    return hx_reply_str((const char *)node.ptr, node.len);
}

static int32_t go(hx_mpr *args) {
    const char *node;
    uint32_t len;
    hx_mpr_unwrap1(args);
    if (!hx_mpr_str(args, &node, &len) || !hx_mpr_done(args))
        return hx_fail("go: expected a node name");
    if (hx_move_to(node, len) != 0) return hx_failn("go: move refused to node ", node, len);
    return reply_node();
}

static int32_t where(hx_mpr *args) {
    (void)args;
    return reply_node();
}

static int32_t bump(hx_mpr *args) {
    (void)args;
    hx_reply_int(++bumps);
    return 0;
}

HX_METHODS(HX_METHOD("go", go), HX_METHOD("where", where), HX_METHOD("bump", bump));
