/* memhog: an atom that uses memory on request, for tests and benchmarks.
 *   grow n   -> pages   grows linear memory by n pages (64 KiB each), one page
 *                       at a time; fails "out of memory" at the runtime's cap
 *   grow_trap n -> pages   the same, but traps at the cap, like C code that does
 *                       not check its allocations (the runtime's memory error)
 *   fill n   -> n       keeps an n KiB state buffer, written with a pattern
 *                       (benchmarks make 64 KiB / 1 MiB / 16 MiB states)
 *   check    -> n       verifies the pattern is intact (e.g. after a move)
 *   pages    -> pages   current memory size in pages
 *   kv_fill [count, kib] -> count   stores count KV values of kib KiB each under
 *                       keys "v0", "v1", ...; fails at the memory cap (the KV
 *                       counts toward it)
 *   kv_drop [count] -> n  deletes keys "v0" .. "v<count-1>"; n = how many existed
 *   kv_count -> n       number of keys in the atom KV
 *   log_flood [count, kib] -> count   logs count lines of kib KiB each
 */
#include "hx.h"

static uint32_t *state;
static uint32_t state_words;  /* capacity */
static uint32_t filled_kib;

static bool read_count(hx_mpr *args, uint64_t *n) {
    hx_mpr_unwrap1(args);
    return hx_mpr_uint(args, n) && hx_mpr_done(args);
}

static int32_t grow_pages(hx_mpr *args, bool trap) {
    uint64_t n;
    if (!read_count(args, &n) || n > 65536)
        return hx_fail("grow: expected a page count (0..65536)");
    for (uint64_t i = 0; i < n; i++) {
        size_t old = __builtin_wasm_memory_grow(0, 1);
        if (old == (size_t)-1) {
            if (trap) __builtin_trap();
            return hx_fail("out of memory");
        }
        /* Touch the new page so it is really used. */
        ((volatile uint8_t *)(old * 65536u))[65535] = 1;
    }
    hx_reply_int((int64_t)__builtin_wasm_memory_size(0));
    return 0;
}

static int32_t grow(hx_mpr *args) { return grow_pages(args, false); }

static int32_t grow_trap(hx_mpr *args) { return grow_pages(args, true); }

static uint32_t pattern(uint32_t i) { return i * 2654435761u + filled_kib; }

static int32_t fill(hx_mpr *args) {
    uint64_t kib;
    if (!read_count(args, &kib) || kib > 1024 * 1024)
        return hx_fail("fill: expected KiB (0..1048576)");
    uint32_t words = (uint32_t)kib * 256u;
    if (words > state_words) {
        /* The old buffer stays allocated: this atom only ever grows. */
        uint32_t *p = (uint32_t *)hx_keep(words * 4u);
        if (!p) return hx_fail("out of memory");
        state = p;
        state_words = words;
    }
    filled_kib = (uint32_t)kib;
    for (uint32_t i = 0; i < words; i++) state[i] = pattern(i);
    hx_reply_int((int64_t)kib);
    return 0;
}

static int32_t check(hx_mpr *args) {
    (void)args;
    uint32_t words = filled_kib * 256u;
    for (uint32_t i = 0; i < words; i++)
        if (state[i] != pattern(i)) return hx_fail("check: state is corrupt");
    hx_reply_int(filled_kib);
    return 0;
}

static int32_t pages(hx_mpr *args) {
    (void)args;
    hx_reply_int((int64_t)__builtin_wasm_memory_size(0));
    return 0;
}

static bool read_pair(hx_mpr *args, uint64_t *count, uint64_t *kib) {
    uint32_t n;
    return hx_mpr_array(args, &n) && n == 2 && hx_mpr_uint(args, count) &&
           hx_mpr_uint(args, kib) && hx_mpr_done(args) && *kib <= 4096;
}

static uint32_t key_of(char *buf, uint64_t i) {
    char digits[20];
    uint32_t n = 0, len = 0;
    do { digits[n++] = (char)('0' + i % 10); i /= 10; } while (i);
    buf[len++] = 'v';
    while (n) buf[len++] = digits[--n];
    return len;
}

static uint8_t *pattern_bytes(uint64_t kib) {
    uint32_t len = (uint32_t)kib * 1024u;
    uint8_t *value = (uint8_t *)hx_scratch(len ? len : 1);
    if (value)
        for (uint32_t i = 0; i < len; i++) value[i] = (uint8_t)(i * 31u + 7u);
    return value;
}

static int32_t kv_fill(hx_mpr *args) {
    uint64_t count, kib;
    if (!read_pair(args, &count, &kib)) return hx_fail("kv_fill: expected [count, KiB (0..4096)]");
    uint8_t *value = pattern_bytes(kib);
    if (!value) return hx_fail("out of memory");
    char key[24];
    for (uint64_t i = 0; i < count; i++)
        if (hx_kv_put(key, key_of(key, i), value, (uint32_t)kib * 1024u) != 0)
            return hx_fail("kv_fill: the atom KV refused");
    hx_reply_int((int64_t)count);
    return 0;
}

static int32_t kv_drop(hx_mpr *args) {
    uint64_t count;
    if (!read_count(args, &count)) return hx_fail("kv_drop: expected a count");
    char key[24];
    int64_t deleted = 0;
    for (uint64_t i = 0; i < count; i++)
        if (hx_kv_del(key, key_of(key, i)) == 0) deleted++;
    hx_reply_int(deleted);
    return 0;
}

static int32_t kv_count(hx_mpr *args) {
    (void)args;
    hx_buf keys;
    int32_t n = hx_kv_keys(0, 0, &keys);
    if (n < 0) return hx_fail("kv_count: the atom KV refused");
    hx_reply_int(n);
    return 0;
}

static int32_t log_flood(hx_mpr *args) {
    uint64_t count, kib;
    if (!read_pair(args, &count, &kib)) return hx_fail("log_flood: expected [count, KiB (0..4096)]");
    uint8_t *line = pattern_bytes(kib);
    if (!line) return hx_fail("out of memory");
    for (uint32_t i = 0; i < (uint32_t)kib * 1024u; i++) line[i] = (uint8_t)('a' + i % 26);
    for (uint64_t i = 0; i < count; i++) hx_log(HX_LOG_INFO, (const char *)line, (uint32_t)kib * 1024u);
    hx_reply_int((int64_t)count);
    return 0;
}

HX_METHODS(HX_METHOD("grow", grow), HX_METHOD("grow_trap", grow_trap), HX_METHOD("fill", fill),
           HX_METHOD("check", check), HX_METHOD("pages", pages), HX_METHOD("kv_fill", kv_fill),
           HX_METHOD("kv_drop", kv_drop), HX_METHOD("kv_count", kv_count),
           HX_METHOD("log_flood", log_flood));
