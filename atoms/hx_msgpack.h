/*
 * hx_msgpack.h -- the small msgpack reader and writer hermesx atoms use for
 * method arguments and results (atoms/ABI.md: "Arguments and results of
 * methods are msgpack bytes"; docs/DESIGN.md section 3).
 *
 * No libc, no allocation: the writer fills a buffer the caller owns, the
 * reader walks bytes the caller owns. Every read is bounds-checked, so a
 * malformed argument ends in a clean error (the reader's `err` flag) instead
 * of a trap. Errors are sticky: after the first failure every call returns
 * false, which lets a method read all its arguments and check once.
 *
 * Usable on its own; atoms normally get it through hx.h.
 */
#ifndef HX_MSGPACK_H
#define HX_MSGPACK_H

/* Helpers an atom does not use are fine: no warning for them. */
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunused-function"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What the next value is, from its first byte. */
typedef enum {
    HX_MP_END = 0, /* no bytes left */
    HX_MP_INVALID, /* 0xc1 (never used by msgpack) or the reader failed before */
    HX_MP_NIL,
    HX_MP_BOOL,
    HX_MP_INT,
    HX_MP_FLOAT,
    HX_MP_STR,
    HX_MP_BIN,
    HX_MP_ARRAY,
    HX_MP_MAP,
    HX_MP_EXT
} hx_mp_type;

typedef struct {
    const uint8_t *p;
    uint32_t len;
    uint32_t pos;
    bool err;
} hx_mpr;

typedef struct {
    uint8_t *p;
    uint32_t cap;
    uint32_t len;
    bool err; /* set when a write did not fit; the buffer then holds a prefix */
} hx_mpw;

/* Byte copy of our own: this header must not depend on memcpy being linked. */
static inline void hx__mp_copy(uint8_t *dst, const uint8_t *src, uint32_t n) {
    while (n--) *dst++ = *src++;
}

/* ------------------------------------------------------------------ reader */

static inline void hx_mpr_init(hx_mpr *r, const void *p, uint32_t len) {
    r->p = (const uint8_t *)p;
    r->len = p ? len : 0;
    r->pos = 0;
    r->err = false;
}

static inline uint32_t hx_mpr_left(const hx_mpr *r) { return r->len - r->pos; }

/* True when every byte was consumed and nothing failed. */
static inline bool hx_mpr_done(const hx_mpr *r) { return !r->err && r->pos == r->len; }

static inline bool hx__mpr_fail(hx_mpr *r) {
    r->err = true;
    return false;
}

static inline uint64_t hx__mp_be(const uint8_t *p, uint32_t n) {
    uint64_t v = 0;
    for (uint32_t i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

static hx_mp_type hx_mpr_peek(const hx_mpr *r) {
    if (r->err) return HX_MP_INVALID;
    if (r->pos >= r->len) return HX_MP_END;
    uint8_t b = r->p[r->pos];
    if (b <= 0x7f || b >= 0xe0) return HX_MP_INT;
    if (b <= 0x8f) return HX_MP_MAP;
    if (b <= 0x9f) return HX_MP_ARRAY;
    if (b <= 0xbf) return HX_MP_STR;
    switch (b) {
    case 0xc0: return HX_MP_NIL;
    case 0xc2: case 0xc3: return HX_MP_BOOL;
    case 0xc4: case 0xc5: case 0xc6: return HX_MP_BIN;
    case 0xc7: case 0xc8: case 0xc9: return HX_MP_EXT;
    case 0xca: case 0xcb: return HX_MP_FLOAT;
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: return HX_MP_INT;
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: return HX_MP_EXT;
    case 0xd9: case 0xda: case 0xdb: return HX_MP_STR;
    case 0xdc: case 0xdd: return HX_MP_ARRAY;
    case 0xde: case 0xdf: return HX_MP_MAP;
    default: return HX_MP_INVALID; /* 0xc1 */
    }
}

/* Takes n bytes; fails (without moving) when fewer are left. */
static inline const uint8_t *hx__mpr_take(hx_mpr *r, uint32_t n) {
    if (r->err || n > r->len - r->pos) {
        r->err = true;
        return NULL;
    }
    const uint8_t *at = r->p + r->pos;
    r->pos += n;
    return at;
}

static bool hx_mpr_nil(hx_mpr *r) {
    if (hx_mpr_peek(r) != HX_MP_NIL) return hx__mpr_fail(r);
    r->pos++;
    return true;
}

static bool hx_mpr_bool(hx_mpr *r, bool *out) {
    if (hx_mpr_peek(r) != HX_MP_BOOL) return hx__mpr_fail(r);
    *out = r->p[r->pos++] == 0xc3;
    return true;
}

/* Reads any integer encoding; `neg` tells whether it is below zero, `mag`
 * holds the two's complement bits (signed) or the value (unsigned). */
static bool hx__mpr_intbits(hx_mpr *r, uint64_t *bits, bool *is_signed) {
    if (hx_mpr_peek(r) != HX_MP_INT) return hx__mpr_fail(r);
    uint8_t b = r->p[r->pos];
    if (b <= 0x7f) {
        r->pos++;
        *bits = b;
        *is_signed = false;
        return true;
    }
    if (b >= 0xe0) {
        r->pos++;
        *bits = (uint64_t)(int64_t)(int8_t)b;
        *is_signed = true;
        return true;
    }
    uint32_t n = 1u << (b & 0x3); /* cc..cf, d0..d3: 1, 2, 4, 8 bytes */
    uint32_t save = r->pos;
    if (!hx__mpr_take(r, 1)) return false;
    const uint8_t *q = hx__mpr_take(r, n);
    if (!q) {
        r->pos = save;
        return false;
    }
    uint64_t v = hx__mp_be(q, n);
    *is_signed = b >= 0xd0;
    if (*is_signed && n < 8) {
        uint64_t sign = 1ull << (n * 8 - 1);
        if (v & sign) v |= ~((sign << 1) - 1); /* sign-extend */
    }
    *bits = v;
    return true;
}

/* Any msgpack integer that fits in int64_t. */
static bool hx_mpr_int(hx_mpr *r, int64_t *out) {
    uint64_t bits;
    bool is_signed;
    uint32_t save = r->pos;
    if (!hx__mpr_intbits(r, &bits, &is_signed)) return false;
    if (!is_signed && bits > (uint64_t)INT64_MAX) {
        r->pos = save;
        return hx__mpr_fail(r);
    }
    *out = (int64_t)bits;
    return true;
}

/* Any msgpack integer that is >= 0. */
static bool hx_mpr_uint(hx_mpr *r, uint64_t *out) {
    uint64_t bits;
    bool is_signed;
    uint32_t save = r->pos;
    if (!hx__mpr_intbits(r, &bits, &is_signed)) return false;
    if (is_signed && (int64_t)bits < 0) {
        r->pos = save;
        return hx__mpr_fail(r);
    }
    *out = bits;
    return true;
}

/* Header of a str/bin/array/map: returns its count (bytes or items). */
static bool hx__mpr_header(hx_mpr *r, hx_mp_type want, uint32_t *count) {
    if (hx_mpr_peek(r) != want) return hx__mpr_fail(r);
    uint8_t b = r->p[r->pos];
    uint32_t save = r->pos;
    uint32_t width = 0;
    if (want == HX_MP_STR && b >= 0xa0 && b <= 0xbf) {
        *count = b & 0x1f;
        r->pos++;
        return true;
    }
    if (want == HX_MP_ARRAY && b >= 0x90 && b <= 0x9f) {
        *count = b & 0x0f;
        r->pos++;
        return true;
    }
    if (want == HX_MP_MAP && b >= 0x80 && b <= 0x8f) {
        *count = b & 0x0f;
        r->pos++;
        return true;
    }
    switch (b) {
    case 0xd9: case 0xc4: width = 1; break;
    case 0xda: case 0xc5: case 0xdc: case 0xde: width = 2; break;
    default: width = 4; break; /* db, c6, dd, df */
    }
    r->pos++;
    const uint8_t *q = hx__mpr_take(r, width);
    if (!q) {
        r->pos = save;
        return false;
    }
    *count = (uint32_t)hx__mp_be(q, width);
    return true;
}

static bool hx__mpr_blob(hx_mpr *r, hx_mp_type want, const uint8_t **p, uint32_t *n) {
    uint32_t save = r->pos;
    uint32_t len;
    if (!hx__mpr_header(r, want, &len)) return false;
    const uint8_t *q = hx__mpr_take(r, len);
    if (!q) {
        r->pos = save;
        return false;
    }
    *p = q;
    *n = len;
    return true;
}

/* A str; the bytes point into the reader's buffer (not NUL-terminated). */
static bool hx_mpr_str(hx_mpr *r, const char **s, uint32_t *n) {
    return hx__mpr_blob(r, HX_MP_STR, (const uint8_t **)s, n);
}

static bool hx_mpr_bin(hx_mpr *r, const uint8_t **p, uint32_t *n) {
    return hx__mpr_blob(r, HX_MP_BIN, p, n);
}

/* A str or a bin: for keys and names that clients may send either way. */
static bool hx_mpr_bytes(hx_mpr *r, const uint8_t **p, uint32_t *n) {
    return hx_mpr_peek(r) == HX_MP_BIN ? hx_mpr_bin(r, p, n)
                                       : hx_mpr_str(r, (const char **)p, n);
}

static bool hx_mpr_array(hx_mpr *r, uint32_t *count) {
    return hx__mpr_header(r, HX_MP_ARRAY, count);
}

static bool hx_mpr_map(hx_mpr *r, uint32_t *count) {
    return hx__mpr_header(r, HX_MP_MAP, count);
}

/* Skips one whole value, nested ones included. Iterative (a counter of values
 * still to skip) so hostile nesting cannot exhaust the atom's small stack. */
static bool hx_mpr_skip(hx_mpr *r) {
    uint64_t pending = 1;
    while (pending > 0) {
        /* Every value takes at least one byte: more pending values than bytes
         * left means the input is truncated, whatever comes next. */
        if (pending > hx_mpr_left(r)) return hx__mpr_fail(r);
        pending--;
        uint32_t count;
        const uint8_t *p;
        uint32_t n;
        uint64_t u;
        bool is_signed;
        switch (hx_mpr_peek(r)) {
        case HX_MP_NIL:
        case HX_MP_BOOL:
            r->pos++;
            break;
        case HX_MP_INT:
            if (!hx__mpr_intbits(r, &u, &is_signed)) return false;
            break;
        case HX_MP_FLOAT: {
            uint32_t w = r->p[r->pos] == 0xca ? 4 : 8;
            if (!hx__mpr_take(r, 1 + w)) return false;
            break;
        }
        case HX_MP_STR:
            if (!hx_mpr_str(r, (const char **)&p, &n)) return false;
            break;
        case HX_MP_BIN:
            if (!hx_mpr_bin(r, &p, &n)) return false;
            break;
        case HX_MP_ARRAY:
            if (!hx_mpr_array(r, &count)) return false;
            pending += count;
            break;
        case HX_MP_MAP:
            if (!hx_mpr_map(r, &count)) return false;
            pending += 2ull * count;
            break;
        case HX_MP_EXT: {
            uint8_t b = r->p[r->pos];
            uint32_t total;
            if (b >= 0xd4 && b <= 0xd8) {
                total = 2u + (1u << (b - 0xd4)); /* fixext 1..16 + type byte */
            } else {
                uint32_t width = b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4;
                if (hx_mpr_left(r) < 1 + width) return hx__mpr_fail(r);
                uint64_t len = hx__mp_be(r->p + r->pos + 1, width);
                if (len > 0xffffffffull - 2 - width) return hx__mpr_fail(r);
                total = 1u + width + 1u + (uint32_t)len;
            }
            if (!hx__mpr_take(r, total)) return false;
            break;
        }
        default:
            return hx__mpr_fail(r);
        }
    }
    return true;
}

/* The raw bytes of the next value (e.g. to store it or pass it on as is). */
static bool hx_mpr_raw(hx_mpr *r, const uint8_t **p, uint32_t *n) {
    uint32_t start = r->pos;
    if (!hx_mpr_skip(r)) return false;
    *p = r->p + start;
    *n = r->pos - start;
    return true;
}

/* If the next value is a one-element array, steps into it: lets a method with
 * a single argument accept both `x` and `[x]`. */
static void hx_mpr_unwrap1(hx_mpr *r) {
    if (r->err || r->pos >= r->len) return;
    if (r->p[r->pos] == 0x91) r->pos++;
}

/* ------------------------------------------------------------------ writer */

static inline void hx_mpw_init(hx_mpw *w, void *buf, uint32_t cap) {
    w->p = (uint8_t *)buf;
    w->cap = buf ? cap : 0;
    w->len = 0;
    w->err = !buf;
}

static inline bool hx__mpw_room(hx_mpw *w, uint32_t n) {
    if (w->err || n > w->cap - w->len) {
        w->err = true;
        return false;
    }
    return true;
}

static void hx__mpw_be(hx_mpw *w, uint8_t tag, uint64_t v, uint32_t n) {
    if (!hx__mpw_room(w, 1 + n)) return;
    w->p[w->len++] = tag;
    for (uint32_t i = n; i-- > 0;) w->p[w->len++] = (uint8_t)(v >> (8 * i));
}

static void hx_mpw_nil(hx_mpw *w) { hx__mpw_be(w, 0xc0, 0, 0); }

static void hx_mpw_bool(hx_mpw *w, bool v) { hx__mpw_be(w, v ? 0xc3 : 0xc2, 0, 0); }

static void hx_mpw_uint(hx_mpw *w, uint64_t v) {
    if (v <= 0x7f) hx__mpw_be(w, (uint8_t)v, 0, 0);
    else if (v <= 0xff) hx__mpw_be(w, 0xcc, v, 1);
    else if (v <= 0xffff) hx__mpw_be(w, 0xcd, v, 2);
    else if (v <= 0xffffffffull) hx__mpw_be(w, 0xce, v, 4);
    else hx__mpw_be(w, 0xcf, v, 8);
}

/* Smallest encoding, as other msgpack writers do. */
static void hx_mpw_int(hx_mpw *w, int64_t v) {
    if (v >= 0) hx_mpw_uint(w, (uint64_t)v);
    else if (v >= -32) hx__mpw_be(w, (uint8_t)(int8_t)v, 0, 0);
    else if (v >= INT8_MIN) hx__mpw_be(w, 0xd0, (uint64_t)v, 1);
    else if (v >= INT16_MIN) hx__mpw_be(w, 0xd1, (uint64_t)v, 2);
    else if (v >= INT32_MIN) hx__mpw_be(w, 0xd2, (uint64_t)v, 4);
    else hx__mpw_be(w, 0xd3, (uint64_t)v, 8);
}

static void hx__mpw_header(hx_mpw *w, uint8_t fix, uint32_t fix_max, const uint8_t tags[3],
                           uint32_t n) {
    if (fix && n <= fix_max) hx__mpw_be(w, (uint8_t)(fix | n), 0, 0);
    else if (tags[0] && n <= 0xff) hx__mpw_be(w, tags[0], n, 1);
    else if (n <= 0xffff) hx__mpw_be(w, tags[1], n, 2);
    else hx__mpw_be(w, tags[2], n, 4);
}

static void hx_mpw_raw(hx_mpw *w, const void *p, uint32_t n) {
    if (!hx__mpw_room(w, n)) return;
    hx__mp_copy(w->p + w->len, (const uint8_t *)p, n);
    w->len += n;
}

static void hx_mpw_str(hx_mpw *w, const char *s, uint32_t n) {
    static const uint8_t tags[3] = {0xd9, 0xda, 0xdb};
    hx__mpw_header(w, 0xa0, 31, tags, n);
    hx_mpw_raw(w, s, n);
}

static void hx_mpw_bin(hx_mpw *w, const void *p, uint32_t n) {
    static const uint8_t tags[3] = {0xc4, 0xc5, 0xc6};
    hx__mpw_header(w, 0, 0, tags, n);
    hx_mpw_raw(w, p, n);
}

static void hx_mpw_array(hx_mpw *w, uint32_t n) {
    static const uint8_t tags[3] = {0, 0xdc, 0xdd};
    hx__mpw_header(w, 0x90, 15, tags, n);
}

static void hx_mpw_map(hx_mpw *w, uint32_t n) {
    static const uint8_t tags[3] = {0, 0xde, 0xdf};
    hx__mpw_header(w, 0x80, 15, tags, n);
}

#pragma clang diagnostic pop

#endif /* HX_MSGPACK_H */
