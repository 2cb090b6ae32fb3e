/*
 * hx.h -- the hermesx atom SDK for C (ABI v1, atoms/ABI.md; docs/DESIGN.md section 3).
 *
 * Include it in the one .c file of an atom and build with `hermesx build`
 * (hermesx/build.py). It gives the atom:
 *   - the exports every atom needs: hx_abi_version, hx_alloc (a bump arena,
 *     see below; define HX_NO_ALLOC to bring your own) and hx_future, and
 *     hx_inbox, which spares a call two of its three crossings between the
 *     runtime and the atom (see "inbox" below; HX_NO_INBOX leaves it out);
 *   - HX_METHODS(...) for hx_invoke with method dispatch by name,
 *     HX_INIT(fn), HX_MAIN(fn) and HX_INTERRUPTS(...) for the optional exports;
 *   - typed wrappers of every `hx` syscall, reply helpers, and msgpack
 *     (hx_msgpack.h);
 *   - memcpy, memset, memmove, memcmp, which the compiler may call on its own.
 *
 * Memory: inputs the runtime hands over (method name, arguments, message
 * payloads, syscall results) and hx_scratch() buffers live in the arena and
 * are released when the entry point (method, handler, init) that got them
 * returns. State that must outlive a call goes in C globals, in hx_keep()
 * buffers, or in the atom KV: all of them move and checkpoint with the atom.
 * A future handler that wants its result to outlive the handler calls
 * hx_retain(); hx_await() does that for you.
 */
#ifndef HX_H
#define HX_H

/* Helpers an atom does not use are fine: no warning for them. */
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunused-function"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hx_msgpack.h"

#define HX_ABI_VERSION 1

#define HX_EXPORT(name) __attribute__((export_name(#name), used))
#define HX_IMPORT(name) __attribute__((import_module("hx"), import_name(#name)))

/* A literal as (pointer, length) for the wrappers below: HX_S("counter"). */
#define HX_S(lit) (lit), (uint32_t)(sizeof(lit) - 1)

enum { HX_LOG_DEBUG = 0, HX_LOG_INFO = 1, HX_LOG_WARNING = 2, HX_LOG_ERROR = 3 };
enum { HX_LOOKUP_EXACT = 0, HX_LOOKUP_ANY = 1, HX_LOOKUP_ALL = 2 };

/* A (pointer, length) pair; also the layout of a syscall's 8-byte "out". */
typedef struct {
    const uint8_t *ptr;
    uint32_t len;
} hx_buf;
_Static_assert(sizeof(hx_buf) == 8, "hx_buf must match the ABI's out layout");

/* ------------------------------------------------------------ raw imports */
/* Called only through the wrappers below: they keep the arena's bookkeeping
 * right when the runtime re-enters the atom during a blocking call. */

HX_IMPORT(reply) void hx__import_reply(const void *ptr, uint32_t len);
HX_IMPORT(log) void hx__sys_log(int32_t level, const void *ptr, uint32_t len);
HX_IMPORT(now_ms) int64_t hx__sys_now_ms(void);
HX_IMPORT(self_guid) int32_t hx__sys_self_guid(void *buf, uint32_t cap);
HX_IMPORT(node_name) int32_t hx__sys_node_name(void *buf, uint32_t cap);
HX_IMPORT(invoke)
int32_t hx__sys_invoke(const void *target, uint32_t target_len, const void *method,
                       uint32_t method_len, const void *args, uint32_t args_len, hx_buf *out);
HX_IMPORT(invoke_async)
int32_t hx__sys_invoke_async(const void *target, uint32_t target_len, const void *method,
                             uint32_t method_len, const void *args, uint32_t args_len);
HX_IMPORT(send)
int32_t hx__sys_send(const void *target, uint32_t target_len, int32_t code, const void *ptr,
                     uint32_t len);
HX_IMPORT(recv) int32_t hx__sys_recv(int32_t timeout_ms);
HX_IMPORT(yield) int32_t hx__sys_yield(void);
HX_IMPORT(kv_get) int32_t hx__sys_kv_get(const void *key, uint32_t key_len, hx_buf *out);
HX_IMPORT(kv_put)
int32_t hx__sys_kv_put(const void *key, uint32_t key_len, const void *val, uint32_t val_len);
HX_IMPORT(kv_del) int32_t hx__sys_kv_del(const void *key, uint32_t key_len);
HX_IMPORT(kv_keys) int32_t hx__sys_kv_keys(const void *prefix, uint32_t prefix_len, hx_buf *out);
HX_IMPORT(lookup)
int32_t hx__sys_lookup(int32_t mode, const void *scope, uint32_t scope_len, const void *pattern,
                       uint32_t pattern_len, hx_buf *out);
HX_IMPORT(alias_add)
int32_t hx__sys_alias_add(const void *scope, uint32_t scope_len, const void *alias,
                          uint32_t alias_len);
HX_IMPORT(alias_remove)
int32_t hx__sys_alias_remove(const void *scope, uint32_t scope_len, const void *alias,
                             uint32_t alias_len);
HX_IMPORT(move_to) int32_t hx__sys_move_to(const void *node, uint32_t node_len);
HX_IMPORT(checkpoint) int32_t hx__sys_checkpoint(void);

/* ------------------------------------------------------- memory functions */
/* The compiler emits calls to these for struct copies and loops; LLVM does
 * not turn the loops of functions with these names back into calls. */

void *memcpy(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    while (n--) *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        d += n;
        s += n;
        while (n--) *--d = *--s;
    }
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    while (n--) *d++ = (uint8_t)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
    const uint8_t *x = (const uint8_t *)a;
    const uint8_t *y = (const uint8_t *)b;
    for (; n; n--, x++, y++)
        if (*x != *y) return *x < *y ? -1 : 1;
    return 0;
}

static inline uint32_t hx_strlen(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

static inline bool hx_eq(const void *a, uint32_t a_len, const void *b, uint32_t b_len) {
    return a_len == b_len && memcmp(a, b, a_len) == 0;
}

/* ------------------------------------------------------------------ arena */

/* Entry points currently running (nested ones run inside blocking syscalls). */
static int32_t hx__depth;
/* Blocking syscalls currently in progress: the only places where the runtime
 * may enter the atom again. An entry while none is in progress means the
 * previous entry trapped and never returned, so its frames are gone. */
static int32_t hx__blocking;
/* Set by hx_retain(): the current entry's allocations outlive it. */
static bool hx__retain_flag;

#ifndef HX_NO_ALLOC
extern unsigned char __heap_base;
/* Arena bounds: [hx__base, hx__top) is in use. hx_keep() raises the base. */
static uintptr_t hx__base;
static uintptr_t hx__top;

static inline uintptr_t hx__align8(uintptr_t x) { return (x + 7u) & ~(uintptr_t)7u; }

static inline void hx__arena_init(void) {
    if (!hx__base) hx__base = hx__top = hx__align8((uintptr_t)&__heap_base);
}

/* ABI export: a buffer of `len` bytes, or 0 when memory cannot grow (the
 * runtime's memory cap). */
HX_EXPORT(hx_alloc) void *hx_alloc(uint32_t len) {
    hx__arena_init();
    uint64_t start = hx__top;
    uint64_t end = start + hx__align8(len);
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * 65536u;
    if (end > 0xffffffffull) return 0;
    if (end > have) {
        size_t pages = (size_t)((end - have + 65535u) / 65536u);
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
    }
    hx__top = (uintptr_t)end;
    return (void *)(uintptr_t)start;
}

/* Scratch memory released when the current entry point returns. */
static inline void *hx_scratch(uint32_t len) { return hx_alloc(len); }

/* Memory kept for the atom's whole life (it moves and checkpoints with the
 * atom). Scratch allocated before it in the same call is kept too. */
static void *hx_keep(uint32_t len) {
    void *p = hx_alloc(len);
    if (p) hx__base = hx__top;
    return p;
}
#else
void *hx_alloc(uint32_t len);
static inline void *hx_scratch(uint32_t len) { return hx_alloc(len); }
#endif

typedef struct {
    uintptr_t mark;
    bool retain_saved;
} hx__frame;

/* Entry bookkeeping. `a`/`b` are the inputs the runtime allocated for this
 * entry: a nested entry releases them too when they are the newest
 * allocations, so a daemon's endless recv loop does not grow the arena. */
static hx__frame hx__enter(const void *a, uint32_t a_len, const void *b, uint32_t b_len) {
    hx__frame f;
    if (hx__depth > 0 && hx__blocking == 0) {
        hx__depth = 0; /* see hx__blocking */
        hx__retain_flag = false;
    }
    f.retain_saved = hx__retain_flag;
    hx__retain_flag = false;
#ifndef HX_NO_ALLOC
    hx__arena_init();
    if (hx__depth == 0) {
        f.mark = hx__base;
    } else {
        uintptr_t lo = hx__top, hi = 0;
        if (a && a_len) {
            lo = (uintptr_t)a;
            hi = (uintptr_t)a + a_len;
        }
        if (b && b_len) {
            if ((uintptr_t)b < lo) lo = (uintptr_t)b;
            if ((uintptr_t)b + b_len > hi) hi = (uintptr_t)b + b_len;
        }
        f.mark = (hi && hx__align8(hi) == hx__top && lo >= hx__base) ? lo : hx__top;
    }
#else
    (void)a, (void)a_len, (void)b, (void)b_len;
    f.mark = 0;
#endif
    hx__depth++;
    return f;
}

static void hx__leave(hx__frame f) {
    hx__depth--;
#ifndef HX_NO_ALLOC
    if (!hx__retain_flag) {
        uintptr_t m = f.mark < hx__base ? hx__base : f.mark;
        if (m < hx__top) hx__top = m;
    }
#endif
    hx__retain_flag = f.retain_saved;
}

/* Keeps what the current entry point allocated (and its inputs) alive until
 * the entry point it runs inside returns. For future and interrupt handlers
 * that hand data to the code blocked in recv/invoke. */
static inline void hx_retain(void) { hx__retain_flag = true; }

/* ------------------------------------------------------------------ inbox */

/* The inbox (ABI.md "The inbox"): a buffer the runtime owns for the atom's
 * life. A call that starts while the atom is idle finds its method name and
 * arguments in `in`, not in the arena (no hx_alloc crossing); a reply that
 * fits HX_REPLY_CAPACITY is copied to hx__reply_buf and announced in `reply`,
 * which the runtime reads when the entry point returns (no `reply` crossing).
 * Define HX_NO_INBOX to go without it (every call then crosses three times). */
#ifndef HX_INBOX_CAPACITY
#define HX_INBOX_CAPACITY 1024
#endif
#ifndef HX_REPLY_CAPACITY
#define HX_REPLY_CAPACITY 1024
#endif

#ifndef HX_NO_INBOX
typedef struct {
    uint32_t reply_ptr;
    uint32_t reply_len; /* 0xffffffff: no reply in the slot */
    uint32_t in_cap;
    uint32_t reserved;
    uint8_t in[HX_INBOX_CAPACITY];
} hx__inbox_t;
_Static_assert(sizeof(hx__inbox_t) == 16 + HX_INBOX_CAPACITY, "inbox layout of ABI.md");

static hx__inbox_t hx__inbox = {0, 0xffffffffu, HX_INBOX_CAPACITY, 0, {0}};
static uint8_t hx__reply_buf[HX_REPLY_CAPACITY];

HX_EXPORT(hx_inbox) void *hx_inbox(void) { return &hx__inbox; }

/* Sets the current entry's reply; the last one wins, whichever way it went. */
static void hx__sys_reply(const void *ptr, uint32_t len) {
    if (len <= HX_REPLY_CAPACITY) {
        memcpy(hx__reply_buf, ptr, len);
        hx__inbox.reply_ptr = (uint32_t)(uintptr_t)hx__reply_buf;
        hx__inbox.reply_len = len;
    } else {
        hx__inbox.reply_len = 0xffffffffu;
        hx__import_reply(ptr, len);
    }
}
#else
static inline void hx__sys_reply(const void *ptr, uint32_t len) { hx__import_reply(ptr, len); }
#endif

/* ------------------------------------------------------------------ reply */

static inline void hx_reply(const void *msgpack, uint32_t len) { hx__sys_reply(msgpack, len); }

static void hx_reply_nil(void) {
    uint8_t b = 0xc0;
    hx__sys_reply(&b, 1);
}

static void hx_reply_bool(bool v) {
    uint8_t b = v ? 0xc3 : 0xc2;
    hx__sys_reply(&b, 1);
}

static void hx_reply_int(int64_t v) {
    uint8_t buf[9];
    hx_mpw w;
    hx_mpw_init(&w, buf, sizeof buf);
    hx_mpw_int(&w, v);
    hx__sys_reply(buf, w.len);
}

static int32_t hx_fail(const char *msg);

/* Returns 0, or an error status when there is no memory left for the reply. */
static int32_t hx_reply_str(const char *s, uint32_t n) {
    hx_mpw w;
    uint32_t cap = n + 5;
    hx_mpw_init(&w, hx_scratch(cap), cap);
    hx_mpw_str(&w, s, n);
    if (w.err) return hx_fail("out of memory for the reply");
    hx__sys_reply(w.p, w.len);
    return 0;
}

/* Error status with a one-line message; `return hx_fail("...")` from a method. */
static int32_t hx_fail(const char *msg) {
    hx__sys_reply(msg, hx_strlen(msg));
    return 1;
}

/* Error message "<prefix><detail>", e.g. ("unknown method: ", name, len). */
static int32_t hx_failn(const char *prefix, const void *detail, uint32_t detail_len) {
    uint32_t p = hx_strlen(prefix);
    uint8_t *buf = (uint8_t *)hx_scratch(p + detail_len);
    if (!buf) return hx_fail(prefix);
    memcpy(buf, prefix, p);
    memcpy(buf + p, detail, detail_len);
    hx__sys_reply(buf, p + detail_len);
    return 1;
}

/* A writer over `cap` bytes of scratch. */
static inline void hx_mpw_scratch(hx_mpw *w, uint32_t cap) {
    hx_mpw_init(w, hx_scratch(cap), cap);
}

/* Replies with what the writer holds, or fails when it overflowed. */
static int32_t hx_reply_mpw(const hx_mpw *w) {
    if (w->err && !w->p) return hx_fail("out of memory for the reply");
    if (w->err) return hx_fail("result does not fit the reply buffer");
    hx__sys_reply(w->p, w->len);
    return 0;
}

/* -------------------------------------------------------------- syscalls */

static inline void hx_log(int32_t level, const char *s, uint32_t n) { hx__sys_log(level, s, n); }
static inline void hx_log_cstr(int32_t level, const char *s) {
    hx__sys_log(level, s, hx_strlen(s));
}
static inline int64_t hx_now_ms(void) { return hx__sys_now_ms(); }

/* Returns the full length of the GUID text; copies up to `cap` bytes. */
static inline uint32_t hx_self_guid(char *buf, uint32_t cap) {
    return (uint32_t)hx__sys_self_guid(buf, cap);
}
static inline uint32_t hx_node_name(char *buf, uint32_t cap) {
    return (uint32_t)hx__sys_node_name(buf, cap);
}

/* The same into scratch memory, whatever the length. */
static bool hx__text_scratch(int32_t (*get)(void *, uint32_t), hx_buf *out) {
    uint32_t cap = 64;
    for (int attempt = 0; attempt < 2; attempt++) {
        char *buf = (char *)hx_scratch(cap);
        if (!buf) return false;
        int32_t n = get(buf, cap);
        if (n < 0) return false;
        if ((uint32_t)n <= cap) {
            out->ptr = (const uint8_t *)buf;
            out->len = (uint32_t)n;
            return true;
        }
        cap = (uint32_t)n;
    }
    return false;
}
static inline bool hx_self_guid_scratch(hx_buf *out) {
    return hx__text_scratch(hx__sys_self_guid, out);
}
static inline bool hx_node_name_scratch(hx_buf *out) {
    return hx__text_scratch(hx__sys_node_name, out);
}

/* Blocking, location-independent call. 0 = ok (msgpack result in out),
 * 1 = error (message in out), < 0 = not allowed here. */
static int32_t hx_call(const char *target, uint32_t target_len, const char *method,
                       uint32_t method_len, const void *args, uint32_t args_len, hx_buf *out) {
    out->ptr = 0;
    out->len = 0;
    hx__blocking++;
    int32_t s = hx__sys_invoke(target, target_len, method, method_len, args, args_len, out);
    hx__blocking--;
    return s;
}

/* Starts a call; returns its future id (> 0), or <= 0 when it could not start.
 * Register a handler with hx_on_future() or wait with hx_await(). */
static int32_t hx_call_async(const char *target, uint32_t target_len, const char *method,
                             uint32_t method_len, const void *args, uint32_t args_len) {
    hx__blocking++;
    int32_t id = hx__sys_invoke_async(target, target_len, method, method_len, args, args_len);
    hx__blocking--;
    return id;
}

/* One-way message to the target's interrupt handler for `code`. */
static int32_t hx_send(const char *target, uint32_t target_len, int32_t code, const void *payload,
                       uint32_t len) {
    hx__blocking++;
    int32_t s = hx__sys_send(target, target_len, code, payload, len);
    hx__blocking--;
    return s;
}

/* Waits for interrupts/futures: returns how many handlers ran, 0 on timeout,
 * -1 when the atom is stopping. */
static int32_t hx_recv(int32_t timeout_ms) {
    hx__blocking++;
    int32_t n = hx__sys_recv(timeout_ms);
    hx__blocking--;
    return n;
}

static int32_t hx_yield(void) {
    hx__blocking++;
    int32_t n = hx__sys_yield();
    hx__blocking--;
    return n;
}

/* Atom KV: 0 = found (value in out, scratch) / 1 = absent. */
static int32_t hx_kv_get(const void *key, uint32_t key_len, hx_buf *out) {
    out->ptr = 0;
    out->len = 0;
    hx__blocking++;
    int32_t s = hx__sys_kv_get(key, key_len, out);
    hx__blocking--;
    return s;
}
static inline int32_t hx_kv_put(const void *key, uint32_t key_len, const void *val,
                                uint32_t val_len) {
    return hx__sys_kv_put(key, key_len, val, val_len);
}
static inline int32_t hx_kv_del(const void *key, uint32_t key_len) {
    return hx__sys_kv_del(key, key_len);
}
/* Keys with the prefix, sorted, as a msgpack array of bin in out; returns the
 * count (< 0 on error). */
static int32_t hx_kv_keys(const void *prefix, uint32_t prefix_len, hx_buf *out) {
    out->ptr = 0;
    out->len = 0;
    hx__blocking++;
    int32_t n = hx__sys_kv_keys(prefix, prefix_len, out);
    hx__blocking--;
    return n;
}

/* mode HX_LOOKUP_*; scope_len 0 = atom names. 0 = ok (msgpack array of GUID
 * strings in out), 1 = error (message in out). */
static int32_t hx_lookup(int32_t mode, const char *scope, uint32_t scope_len, const char *pattern,
                         uint32_t pattern_len, hx_buf *out) {
    out->ptr = 0;
    out->len = 0;
    hx__blocking++;
    int32_t s = hx__sys_lookup(mode, scope, scope_len, pattern, pattern_len, out);
    hx__blocking--;
    return s;
}

static int32_t hx_alias_add(const char *scope, uint32_t scope_len, const char *alias,
                            uint32_t alias_len) {
    hx__blocking++;
    int32_t s = hx__sys_alias_add(scope, scope_len, alias, alias_len);
    hx__blocking--;
    return s;
}
static int32_t hx_alias_remove(const char *scope, uint32_t scope_len, const char *alias,
                               uint32_t alias_len) {
    hx__blocking++;
    int32_t s = hx__sys_alias_remove(scope, scope_len, alias, alias_len);
    hx__blocking--;
    return s;
}

/* Moves this atom to `node` once the current call has returned. */
static int32_t hx_move_to(const char *node, uint32_t node_len) {
    hx__blocking++;
    int32_t s = hx__sys_move_to(node, node_len);
    hx__blocking--;
    return s;
}

static int32_t hx_checkpoint(void) {
    hx__blocking++;
    int32_t s = hx__sys_checkpoint();
    hx__blocking--;
    return s;
}

/* ---------------------------------------------------------------- futures */

typedef void (*hx_future_fn)(void *ctx, int32_t id, int32_t status, const uint8_t *ptr,
                             uint32_t len);

#ifndef HX_MAX_FUTURES
#define HX_MAX_FUTURES 64
#endif

typedef struct {
    int32_t id;
    hx_future_fn fn;
    void *ctx;
} hx__future_slot;

static hx__future_slot hx__futures[HX_MAX_FUTURES];

/* Runs fn once when future `id` completes. 0 = ok, -1 = table full / bad id. */
static int32_t hx_on_future(int32_t id, hx_future_fn fn, void *ctx) {
    if (id <= 0 || !fn) return -1;
    for (int i = 0; i < HX_MAX_FUTURES; i++) {
        if (hx__futures[i].id == 0) {
            hx__futures[i].id = id;
            hx__futures[i].fn = fn;
            hx__futures[i].ctx = ctx;
            return 0;
        }
    }
    return -1;
}

#ifndef HX_NO_FUTURES
HX_EXPORT(hx_future) void hx_future(int32_t id, int32_t status, const uint8_t *ptr, uint32_t len) {
    hx__frame f = hx__enter(ptr, len, 0, 0);
    for (int i = 0; i < HX_MAX_FUTURES; i++) {
        if (hx__futures[i].id == id) {
            hx__future_slot slot = hx__futures[i];
            hx__futures[i].id = 0; /* disposed before it runs: a handler may start another */
            slot.fn(slot.ctx, id, status, ptr, len);
            break;
        }
    }
    hx__leave(f);
}
#endif

typedef struct {
    bool done;
    int32_t status;
    hx_buf result;
} hx__await_state;

static void hx__await_done(void *ctx, int32_t id, int32_t status, const uint8_t *ptr,
                           uint32_t len) {
    (void)id;
    hx__await_state *st = (hx__await_state *)ctx;
    st->done = true;
    st->status = status;
    st->result.ptr = ptr;
    st->result.len = len;
    hx_retain(); /* the result is read after this handler returns */
}

/* Blocks (running other handlers meanwhile) until future `id` completes.
 * Returns its status (0 = ok, result in out; else message in out), or -1 when
 * the atom is stopping or the future table is full. */
static int32_t hx_await(int32_t id, hx_buf *out) {
    hx__await_state st = {false, 0, {0, 0}};
    out->ptr = 0;
    out->len = 0;
    if (hx_on_future(id, hx__await_done, &st) != 0) return -1;
    while (!st.done) {
        if (hx_recv(-1) < 0) {
            for (int i = 0; i < HX_MAX_FUTURES; i++)
                if (hx__futures[i].id == id) hx__futures[i].id = 0;
            return -1;
        }
    }
    *out = st.result;
    return st.status;
}

/* ------------------------------------------------------------- interrupts */

typedef void (*hx_interrupt_fn)(int32_t code, const uint8_t *ptr, uint32_t len);

typedef struct {
    int32_t code;
    bool any;
    hx_interrupt_fn fn;
} hx_interrupt_entry;

#define HX_ON_INTERRUPT(code, fn) {(code), false, (fn)}
#define HX_ON_ANY_INTERRUPT(fn) {0, true, (fn)}

static void hx__dispatch_interrupt(const hx_interrupt_entry *table, uint32_t n, int32_t code,
                                   const uint8_t *ptr, uint32_t len) {
    hx__frame f = hx__enter(ptr, len, 0, 0);
    uint32_t i = 0;
    for (; i < n; i++) {
        if (table[i].any || table[i].code == code) {
            table[i].fn(code, ptr, len);
            break;
        }
    }
    if (i == n) hx_log_cstr(HX_LOG_DEBUG, "interrupt without a handler dropped");
    hx__leave(f);
}

/* The interrupt table: HX_INTERRUPTS(HX_ON_INTERRUPT(1, on_msg), ...);
 * the first entry whose code matches runs. */
#define HX_INTERRUPTS(...)                                                                     \
    static const hx_interrupt_entry hx__interrupts[] = {__VA_ARGS__};                          \
    HX_EXPORT(hx_interrupt) void hx_interrupt(int32_t code, const uint8_t *ptr, uint32_t len) { \
        hx__dispatch_interrupt(hx__interrupts,                                                 \
                               (uint32_t)(sizeof hx__interrupts / sizeof hx__interrupts[0]),  \
                               code, ptr, len);                                                \
    }                                                                                          \
    _Static_assert(1, "")

/* ---------------------------------------------------------------- methods */

/* A method reads its arguments from `args` and replies with hx_reply_*;
 * it returns 0, or the status of hx_fail(). */
typedef int32_t (*hx_method_fn)(hx_mpr *args);

typedef struct {
    const char *name;
    hx_method_fn fn;
} hx_method;

#define HX_METHOD(name, fn) {(name), (fn)}

static int32_t hx__dispatch(const hx_method *table, uint32_t n, const char *method,
                            uint32_t method_len, const uint8_t *args, uint32_t args_len) {
    hx__frame f = hx__enter(method, method_len, args, args_len);
    int32_t status = 0;
    uint32_t i = 0;
    for (; i < n; i++) {
        if (hx_eq(table[i].name, hx_strlen(table[i].name), method, method_len)) {
            hx_mpr r;
            hx_mpr_init(&r, args, args_len);
            status = table[i].fn(&r);
            break;
        }
    }
    if (i == n) status = hx_failn("unknown method: ", method, method_len);
    hx__leave(f);
    return status;
}

/* The method table and the hx_invoke export:
 * HX_METHODS(HX_METHOD("incr", incr), HX_METHOD("get", get)); */
#define HX_METHODS(...)                                                                        \
    static const hx_method hx__methods[] = {__VA_ARGS__};                                      \
    HX_EXPORT(hx_invoke)                                                                       \
    int32_t hx_invoke(const char *method, uint32_t method_len, const uint8_t *args,            \
                      uint32_t args_len) {                                                     \
        return hx__dispatch(hx__methods, (uint32_t)(sizeof hx__methods / sizeof hx__methods[0]), \
                            method, method_len, args, args_len);                               \
    }                                                                                          \
    _Static_assert(1, "")

/* hx_init: fn gets the create arguments (an empty reader when there are none). */
#define HX_INIT(fn)                                                                            \
    HX_EXPORT(hx_init) int32_t hx_init(const uint8_t *args, uint32_t args_len) {               \
        hx__frame f_ = hx__enter(args, args_len, 0, 0);                                        \
        hx_mpr r_;                                                                             \
        hx_mpr_init(&r_, args, args_len);                                                      \
        int32_t s_ = (fn)(&r_);                                                                \
        hx__leave(f_);                                                                         \
        return s_;                                                                             \
    }                                                                                          \
    _Static_assert(1, "")

/* hx_main: marks a daemon atom; fn loops on hx_recv() until it returns -1. */
#define HX_MAIN(fn)                                                                            \
    HX_EXPORT(hx_main) void hx_main(void) {                                                    \
        hx__frame f_ = hx__enter(0, 0, 0, 0);                                                  \
        (fn)();                                                                                \
        hx__leave(f_);                                                                         \
    }                                                                                          \
    _Static_assert(1, "")

HX_EXPORT(hx_abi_version) int32_t hx_abi_version(void) { return HX_ABI_VERSION; }

#pragma clang diagnostic pop

#endif /* HX_H */
