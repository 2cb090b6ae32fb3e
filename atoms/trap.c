/* trap: a misbehaving atom for tests. `boom` executes `unreachable`; the call
 * must fail with a trap error while the atom stays usable (`ok` -> 1). */
#include "hx.h"

static int32_t boom(hx_mpr *args) {
    (void)args;
    __builtin_trap();
}

static int32_t ok(hx_mpr *args) {
    (void)args;
    hx_reply_int(1);
    return 0;
}

HX_METHODS(HX_METHOD("boom", boom), HX_METHOD("ok", ok));
