/* spin: a misbehaving atom for tests. `spin` never returns, so only the
 * runtime's CPU deadline ends it; afterwards `ok` -> 1. */
#include "hx.h"

static volatile uint64_t turns;

static int32_t spin(hx_mpr *args) {
    (void)args;
    for (;;) turns++; /* volatile: the loop has an effect the compiler keeps */
}

static int32_t ok(hx_mpr *args) {
    (void)args;
    hx_reply_int(1);
    return 0;
}

HX_METHODS(HX_METHOD("spin", spin), HX_METHOD("ok", ok));
