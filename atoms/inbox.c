/* inbox: receives messages, for ordering tests. Every message (any code)
 * carries an int payload that is appended, in arrival order, to a list kept
 * in linear memory (so it moves and checkpoints with the atom).
 *   received -> array of ints in arrival order
 *   count    -> how many messages arrived (malformed payloads included)
 *   bad      -> how many payloads were not ints
 */
#include "hx.h"

static int64_t *items;
static uint32_t item_count, item_cap, bad_count;
static int64_t first_items[256];

static void on_message(int32_t code, const uint8_t *ptr, uint32_t len) {
    (void)code;
    hx_mpr r;
    int64_t v;
    hx_mpr_init(&r, ptr, len);
    if (!hx_mpr_int(&r, &v) || !hx_mpr_done(&r)) {
        bad_count++;
        return;
    }
    if (!items) {
        items = first_items;
        item_cap = sizeof first_items / sizeof first_items[0];
    }
    if (item_count == item_cap) {
        /* Doubling through hx_keep: the old list stays allocated, so at most
         * half the memory it took is unused. */
        int64_t *bigger = (int64_t *)hx_keep(item_cap * 2u * sizeof(int64_t));
        if (!bigger) {
            bad_count++;
            hx_log_cstr(HX_LOG_ERROR, "inbox: out of memory, message dropped");
            return;
        }
        memcpy(bigger, items, item_count * sizeof(int64_t));
        items = bigger;
        item_cap *= 2u;
    }
    items[item_count++] = v;
}

static int32_t received(hx_mpr *args) {
    (void)args;
    hx_mpw w;
    hx_mpw_scratch(&w, 5 + 9 * item_count);
    hx_mpw_array(&w, item_count);
    for (uint32_t i = 0; i < item_count; i++) hx_mpw_int(&w, items[i]);
    return hx_reply_mpw(&w);
}

static int32_t count(hx_mpr *args) {
    (void)args;
    hx_reply_int((int64_t)item_count + bad_count);
    return 0;
}

static int32_t bad(hx_mpr *args) {
    (void)args;
    hx_reply_int(bad_count);
    return 0;
}

HX_INTERRUPTS(HX_ON_ANY_INTERRUPT(on_message));
HX_METHODS(HX_METHOD("received", received), HX_METHOD("count", count), HX_METHOD("bad", bad));
