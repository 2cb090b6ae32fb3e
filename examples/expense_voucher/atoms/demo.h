/*
 * demo.h -- helpers shared by the expense-voucher atoms (examples/expense_voucher).
 *
 *   - hx_text: a short string kept in C globals, so it moves and checkpoints
 *     with the atom's memory;
 *   - a message builder for one-line error messages and history notes
 *     (text, integers, amounts in cents as "1,234.56");
 *   - fields_read(): a msgpack map read into named fields, which is how every
 *     method of these atoms takes its arguments ({"node": ..., "actor": ...});
 *   - the parties' common part: who they are, where they are (`site`), and
 *     how they act on a voucher by name (party_act).
 */
#ifndef DEMO_H
#define DEMO_H

#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunused-function"

#include "hx.h"

/* ------------------------------------------------------------------ text */

#define TEXT_CAP 96

typedef struct {
    uint32_t len;
    char s[TEXT_CAP];
} hx_text;

static bool text_set(hx_text *t, const char *s, uint32_t n) {
    if (n > TEXT_CAP) return false;
    memcpy(t->s, s, n);
    t->len = n;
    return true;
}

static bool text_eq(const hx_text *t, const char *s, uint32_t n) { return hx_eq(t->s, t->len, s, n); }

/* ------------------------------------------------------------- messages */

typedef struct {
    char *p;
    uint32_t cap;
    uint32_t len;
} msg;

static void msg_init(msg *m, uint32_t cap) {
    m->p = (char *)hx_scratch(cap);
    m->cap = m->p ? cap : 0;
    m->len = 0;
}

static void msg_add(msg *m, const char *s, uint32_t n) {
    for (uint32_t i = 0; i < n && m->len < m->cap; i++) m->p[m->len++] = s[i];
}

static void msg_cstr(msg *m, const char *s) { msg_add(m, s, hx_strlen(s)); }

static void msg_text(msg *m, const hx_text *t) { msg_add(m, t->s, t->len); }

static void msg_int(msg *m, int64_t v) {
    char digits[24];
    uint32_t n = 0;
    uint64_t u = v < 0 ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
    do {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) msg_cstr(m, "-");
    while (n) msg_add(m, &digits[--n], 1);
}

/* Cents as "1,234.56". */
static void msg_money(msg *m, int64_t cents) {
    if (cents < 0) {
        msg_cstr(m, "-");
        cents = -cents;
    }
    int64_t units = cents / 100;
    char digits[24];
    uint32_t n = 0;
    do {
        if (n % 4 == 3) digits[n++] = ',';
        digits[n++] = (char)('0' + units % 10);
        units /= 10;
    } while (units);
    while (n) msg_add(m, &digits[--n], 1);
    char frac[3] = {'.', (char)('0' + (cents % 100) / 10), (char)('0' + cents % 10)};
    msg_add(m, frac, 3);
}

/* Fails the current call with the built message. */
static int32_t msg_fail(msg *m) {
    if (!m->p) return hx_fail("out of memory for an error message");
    return hx_failn("", m->p, m->len);
}

/* --------------------------------------------------------------- fields */

typedef struct {
    const char *key;
    bool present;
    const uint8_t *raw; /* the value's msgpack bytes */
    uint32_t raw_len;
} field;

#define FIELD(k) {(k), false, 0, 0}
#define NFIELDS(a) ((uint32_t)(sizeof(a) / sizeof((a)[0])))

/* Reads a msgpack map into `f`. With `strict`, a key that is not one of the
 * fields is an error (arguments); without, it is skipped (results of other
 * atoms, which may grow). `bad_key` gets the offending key, if any. */
static bool fields_read(const uint8_t *p, uint32_t len, field *f, uint32_t nf, bool strict,
                        hx_buf *bad_key) {
    hx_mpr r;
    hx_mpr_init(&r, p, len);
    uint32_t count;
    bad_key->ptr = 0;
    bad_key->len = 0;
    if (!hx_mpr_map(&r, &count)) return false;
    for (uint32_t i = 0; i < count; i++) {
        const char *k;
        uint32_t kn;
        if (!hx_mpr_str(&r, &k, &kn)) return false;
        uint32_t j = 0;
        for (; j < nf; j++) {
            if (hx_eq(f[j].key, hx_strlen(f[j].key), k, kn)) break;
        }
        if (j == nf) {
            if (strict) {
                bad_key->ptr = (const uint8_t *)k;
                bad_key->len = kn;
                return false;
            }
            if (!hx_mpr_skip(&r)) return false;
            continue;
        }
        if (!hx_mpr_raw(&r, &f[j].raw, &f[j].raw_len)) return false;
        f[j].present = true;
    }
    return hx_mpr_done(&r);
}

/* Reads a method's argument map; on failure replies with a message that
 * names the method and, when there is one, the unknown key. */
static bool args_read(hx_mpr *args, const char *method, field *f, uint32_t nf, int32_t *status) {
    hx_buf bad;
    if (fields_read(args->p + args->pos, hx_mpr_left(args), f, nf, true, &bad)) return true;
    msg m;
    msg_init(&m, 200);
    msg_cstr(&m, method);
    if (bad.len) {
        msg_cstr(&m, ": unknown field ");
        msg_add(&m, (const char *)bad.ptr, bad.len);
        msg_cstr(&m, " (expected ");
    } else {
        msg_cstr(&m, ": expected a map of ");
    }
    for (uint32_t i = 0; i < nf; i++) {
        if (i) msg_cstr(&m, ", ");
        msg_cstr(&m, f[i].key);
    }
    if (bad.len) msg_cstr(&m, ")");
    *status = msg_fail(&m);
    return false;
}

static bool field_str(const field *f, const char **s, uint32_t *n) {
    if (!f->present) return false;
    hx_mpr r;
    hx_mpr_init(&r, f->raw, f->raw_len);
    return hx_mpr_str(&r, s, n) && hx_mpr_done(&r);
}

static bool field_int(const field *f, int64_t *v) {
    if (!f->present) return false;
    hx_mpr r;
    hx_mpr_init(&r, f->raw, f->raw_len);
    return hx_mpr_int(&r, v) && hx_mpr_done(&r);
}

/* A str field that must be present and 1..TEXT_CAP bytes long. */
static bool field_text(const field *f, hx_text *t) {
    const char *s;
    uint32_t n;
    return field_str(f, &s, &n) && n > 0 && text_set(t, s, n);
}

/* Reads the single str argument of a method that takes one (`x` or `[x]`). */
static bool arg_str(hx_mpr *args, const char **s, uint32_t *n) {
    hx_mpr_unwrap1(args);
    return hx_mpr_str(args, s, n) && *n > 0 && hx_mpr_done(args);
}

/* ------------------------------------------------------------- parties */

/* Who this party is; set by its hx_init from {"name": ..., ...}. */
static hx_text party_name;

/* The party's `site` method: {"node", "name", "role"}, for a voucher that
 * wants to travel to it. */
static int32_t party_site(const char *role) {
    hx_buf node;
    if (!hx_node_name_scratch(&node)) return hx_fail("site: cannot read the node name");
    hx_mpw w;
    hx_mpw_scratch(&w, 64 + node.len + party_name.len + hx_strlen(role));
    hx_mpw_map(&w, 3);
    hx_mpw_str(&w, HX_S("node"));
    hx_mpw_str(&w, (const char *)node.ptr, node.len);
    hx_mpw_str(&w, HX_S("name"));
    hx_mpw_str(&w, party_name.s, party_name.len);
    hx_mpw_str(&w, HX_S("role"));
    hx_mpw_str(&w, role, hx_strlen(role));
    return hx_reply_mpw(&w);
}

/* Calls `method` on the voucher named `voucher` with {"node": <this node>,
 * "actor": <party name>, <extra_key>: <extra>} (extra_key may be 0). The
 * voucher checks the node: local steps run only where the voucher is. */
static int32_t party_act(const char *voucher, uint32_t voucher_len, const char *method,
                         const char *extra_key, const char *extra, uint32_t extra_len,
                         hx_buf *out) {
    hx_buf node;
    out->ptr = 0;
    out->len = 0;
    if (!hx_node_name_scratch(&node)) return -1;
    hx_mpw w;
    hx_mpw_scratch(&w, 64 + node.len + party_name.len + extra_len);
    hx_mpw_map(&w, extra_key ? 3 : 2);
    hx_mpw_str(&w, HX_S("node"));
    hx_mpw_str(&w, (const char *)node.ptr, node.len);
    hx_mpw_str(&w, HX_S("actor"));
    hx_mpw_str(&w, party_name.s, party_name.len);
    if (extra_key) {
        hx_mpw_str(&w, extra_key, hx_strlen(extra_key));
        hx_mpw_str(&w, extra, extra_len);
    }
    if (w.err) return -1;
    return hx_call(voucher, voucher_len, method, hx_strlen(method), w.p, w.len, out);
}

/* Replies with the callee's error message (or a generic one) and fails. */
static int32_t fail_with(hx_buf *out, const char *fallback) {
    if (out->len) {
        hx_reply(out->ptr, out->len);
        return 1;
    }
    return hx_fail(fallback);
}

/* Reads `total` (int), `id` (str) and `state` (str) from a voucher's `get`. */
typedef struct {
    int64_t total;
    const char *id, *state, *currency;
    uint32_t id_len, state_len, currency_len;
} voucher_view;

static bool voucher_view_read(const hx_buf *got, voucher_view *v) {
    field f[] = {FIELD("total"), FIELD("id"), FIELD("state"), FIELD("currency")};
    hx_buf bad;
    if (!fields_read(got->ptr, got->len, f, NFIELDS(f), false, &bad)) return false;
    return field_int(&f[0], &v->total) && field_str(&f[1], &v->id, &v->id_len) &&
           field_str(&f[2], &v->state, &v->state_len) &&
           field_str(&f[3], &v->currency, &v->currency_len);
}

/* Gets a voucher's view; 0 = ok, else the call already failed with a message. */
static int32_t voucher_get(const char *voucher, uint32_t voucher_len, voucher_view *v) {
    hx_buf out;
    static const uint8_t nil = 0xc0;
    int32_t s = hx_call(voucher, voucher_len, HX_S("get"), &nil, 1, &out);
    if (s != 0) return fail_with(&out, "cannot read the voucher");
    if (!voucher_view_read(&out, v)) return hx_fail("the voucher's get returned a malformed map");
    return 0;
}

/* Party init: {"name": str, ...}; the rest is the party's own. */
static bool party_init_name(const uint8_t *p, uint32_t len) {
    field f[] = {FIELD("name")};
    hx_buf bad;
    return fields_read(p, len, f, NFIELDS(f), false, &bad) && field_text(&f[0], &party_name);
}

#pragma clang diagnostic pop

#endif /* DEMO_H */
