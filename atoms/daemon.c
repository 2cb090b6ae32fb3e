/* daemon: an atom with hx_main, run on its own thread. The main loop blocks
 * in recv; every interrupt (any code) is counted by its handler.
 *   count -> interrupts received so far
 *   loops -> times recv returned to the main loop
 */
#include "hx.h"

static int64_t interrupts, loops;

static void on_any(int32_t code, const uint8_t *ptr, uint32_t len) {
    (void)code, (void)ptr, (void)len;
    interrupts++;
}

static void run(void) {
    for (;;) {
        int32_t n = hx_recv(-1);
        if (n < 0) break; /* the atom is stopping */
        loops++;
    }
    hx_log_cstr(HX_LOG_INFO, "daemon: stopping");
}

static int32_t count(hx_mpr *args) {
    (void)args;
    hx_reply_int(interrupts);
    return 0;
}

static int32_t loop_count(hx_mpr *args) {
    (void)args;
    hx_reply_int(loops);
    return 0;
}

HX_MAIN(run);
HX_INTERRUPTS(HX_ON_ANY_INTERRUPT(on_any));
HX_METHODS(HX_METHOD("count", count), HX_METHOD("loops", loop_count));
