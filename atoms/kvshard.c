/* kvshard: one shard of the sharded KV store (hermesx/apps/kv, docs/DESIGN.md section 11).
 *
 * Data lives in the atom KV (it moves and checkpoints with the atom) under
 * three prefixes: "d" + key -> the value's msgpack bytes, "l" + key -> the
 * lock [txid, expiry_ms, prepared] of a transaction, "t" + txid -> the writes
 * a prepared transaction will apply. Keys are str; values any msgpack value.
 *
 * Created with the init argument `durable` (a bool): a durable shard asks
 * for a checkpoint (the checkpoint syscall) in every call that changes its
 * state, so the node stores it before the reply leaves; reads cost nothing.
 *
 * Plain KV:
 *   get key               -> value or nil
 *   put [key, value]      -> nil
 *   mput [[key, value], ...] -> nil (one call, so one checkpoint, for many keys)
 *   delete key            -> true when the key existed
 *   scan [prefix, limit]  -> [[key, value], ...] sorted by key, at most limit
 *   count                 -> number of keys
 *   stats                 -> [calls served, now_ms] (rebalancing reads the rate)
 * Transactions (two-phase commit driven by a kvtx coordinator atom):
 *   lock [txid, lease_ms, [keys]]  -> [value or nil, ...]; all keys or none;
 *                                     "aborted: ..." when one is held by another
 *                                     transaction (no waiting: no deadlock)
 *   prepare [txid, [keys], [[key, op, value], ...]]
 *                                  -> nil; the keys must still be locked by txid;
 *                                     their locks become prepared (no expiry);
 *                                     op 0 = put, 1 = delete
 *   commit txid                    -> nil; applies the prepared writes, releases
 *   abort txid                     -> nil; drops them, releases (both idempotent)
 *   locks                          -> number of keys locked
 */
#include "hx.h"

#define KEY_MAX 1024
#define TXID_MAX 128
#define SCAN_MAX 10000

static uint64_t calls_served;
static bool durable;

static int32_t init(hx_mpr *args) {
    if (hx_mpr_left(args) == 0) return 0;
    hx_mpr_unwrap1(args);
    if (!hx_mpr_bool(args, &durable)) return hx_fail("init: expected durable (a bool)");
    return 0;
}

/* This call changed the shard: a durable shard is checkpointed before it replies. */
static void changed(void) {
    if (durable) hx_checkpoint();
}

/* ---------------------------------------------------------------- helpers */

/* prefix byte + key in scratch. */
static bool prefixed(char tag, const uint8_t *key, uint32_t len, hx_buf *out) {
    uint8_t *p = (uint8_t *)hx_scratch(len + 1);
    if (!p) return false;
    p[0] = (uint8_t)tag;
    memcpy(p + 1, key, len);
    out->ptr = p;
    out->len = len + 1;
    return true;
}

static bool read_key(hx_mpr *r, const uint8_t **key, uint32_t *len) {
    return hx_mpr_bytes(r, key, len) && *len <= KEY_MAX;
}

static int32_t get_value(const uint8_t *key, uint32_t len, hx_buf *val) {
    hx_buf k;
    if (!prefixed('d', key, len, &k)) return -1;
    return hx_kv_get(k.ptr, k.len, val);
}

/* A lock record: [txid, expiry_ms, prepared]. */
typedef struct {
    const char *owner;
    uint32_t owner_len;
    int64_t expiry;
    bool prepared;
} lock_rec;

static bool read_lock(const uint8_t *key, uint32_t len, lock_rec *lk) {
    hx_buf k, v;
    if (!prefixed('l', key, len, &k) || hx_kv_get(k.ptr, k.len, &v) != 0) return false;
    hx_mpr r;
    uint32_t n;
    hx_mpr_init(&r, v.ptr, v.len);
    return hx_mpr_array(&r, &n) && n == 3 && hx_mpr_str(&r, &lk->owner, &lk->owner_len) &&
           hx_mpr_int(&r, &lk->expiry) && hx_mpr_bool(&r, &lk->prepared);
}

static int32_t write_lock(const uint8_t *key, uint32_t len, const char *txid, uint32_t txid_len,
                          int64_t expiry, bool prepared) {
    hx_buf k;
    hx_mpw w;
    if (!prefixed('l', key, len, &k)) return -1;
    hx_mpw_scratch(&w, txid_len + 24);
    hx_mpw_array(&w, 3);
    hx_mpw_str(&w, txid, txid_len);
    hx_mpw_int(&w, expiry);
    hx_mpw_bool(&w, prepared);
    if (w.err) return -1;
    return hx_kv_put(k.ptr, k.len, w.p, w.len);
}

/* Drops every lock txid holds here. */
static void release_locks(const char *txid, uint32_t txid_len) {
    hx_buf raw;
    if (hx_kv_keys(HX_S("l"), &raw) <= 0) return;
    hx_mpr in;
    uint32_t count;
    hx_mpr_init(&in, raw.ptr, raw.len);
    if (!hx_mpr_array(&in, &count)) return;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *k;
        uint32_t k_len;
        lock_rec lk;
        if (!hx_mpr_bytes(&in, &k, &k_len) || k_len < 1) return;
        if (read_lock(k + 1, k_len - 1, &lk) && hx_eq(lk.owner, lk.owner_len, txid, txid_len))
            hx_kv_del(k, k_len);
    }
}

static bool read_txid(hx_mpr *r, const char **txid, uint32_t *len) {
    return hx_mpr_str(r, txid, len) && *len > 0 && *len <= TXID_MAX;
}

/* ---------------------------------------------------------------- plain KV */

static int32_t get(hx_mpr *args) {
    const uint8_t *key;
    uint32_t key_len;
    hx_buf val;
    calls_served++;
    hx_mpr_unwrap1(args);
    if (!read_key(args, &key, &key_len)) return hx_fail("get: expected a key (str, <= 1024 bytes)");
    if (get_value(key, key_len, &val) == 0) hx_reply(val.ptr, val.len);
    else hx_reply_nil();
    return 0;
}

static int32_t put(hx_mpr *args) {
    uint32_t n;
    const uint8_t *key, *val;
    uint32_t key_len, val_len;
    hx_buf k;
    calls_served++;
    if (!hx_mpr_array(args, &n) || n != 2 || !read_key(args, &key, &key_len))
        return hx_fail("put: expected [key (str, <= 1024 bytes), value]");
    if (!hx_mpr_raw(args, &val, &val_len)) return hx_fail("put: malformed value");
    if (!prefixed('d', key, key_len, &k)) return hx_fail("put: out of memory");
    if (hx_kv_put(k.ptr, k.len, val, val_len) != 0) return hx_fail("put: the atom KV refused");
    changed();
    hx_reply_nil();
    return 0;
}

static int32_t mput(hx_mpr *args) {
    uint32_t n, pair;
    calls_served++;
    if (!hx_mpr_array(args, &n)) return hx_fail("mput: expected [[key, value], ...]");
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *key, *val;
        uint32_t key_len, val_len;
        hx_buf k;
        if (!hx_mpr_array(args, &pair) || pair != 2 || !read_key(args, &key, &key_len) ||
            !hx_mpr_raw(args, &val, &val_len))
            return hx_fail("mput: each entry must be [key (str, <= 1024 bytes), value]");
        if (!prefixed('d', key, key_len, &k)) return hx_fail("mput: out of memory");
        if (hx_kv_put(k.ptr, k.len, val, val_len) != 0) return hx_fail("mput: the atom KV refused");
    }
    changed();
    hx_reply_nil();
    return 0;
}

static int32_t del(hx_mpr *args) {
    const uint8_t *key;
    uint32_t key_len;
    hx_buf k;
    calls_served++;
    hx_mpr_unwrap1(args);
    if (!read_key(args, &key, &key_len)) return hx_fail("delete: expected a key (str)");
    if (!prefixed('d', key, key_len, &k)) return hx_fail("delete: out of memory");
    bool existed = hx_kv_del(k.ptr, k.len) == 0;
    if (existed) changed();
    hx_reply_bool(existed);
    return 0;
}

static int32_t scan(hx_mpr *args) {
    uint32_t n;
    const uint8_t *prefix;
    uint32_t prefix_len;
    int64_t limit;
    hx_buf p, raw;
    calls_served++;
    if (!hx_mpr_array(args, &n) || n != 2 || !read_key(args, &prefix, &prefix_len) ||
        !hx_mpr_int(args, &limit) || limit < 0 || limit > SCAN_MAX)
        return hx_fail("scan: expected [prefix (str, <= 1024 bytes), limit (0..10000)]");
    if (!prefixed('d', prefix, prefix_len, &p)) return hx_fail("scan: out of memory");
    int32_t count = hx_kv_keys(p.ptr, p.len, &raw);
    if (count < 0) return hx_fail("scan: the atom KV refused");
    uint32_t take = (uint32_t)count < (uint32_t)limit ? (uint32_t)count : (uint32_t)limit;
    hx_mpr in;
    hx_mpr_init(&in, raw.ptr, raw.len);
    hx_mpr_array(&in, &n);
    /* Two passes: sizes first, so the reply buffer is allocated once. */
    hx_mpr sizing = in;
    uint64_t need = 5;
    for (uint32_t i = 0; i < take; i++) {
        const uint8_t *k;
        uint32_t k_len;
        hx_buf v;
        if (!hx_mpr_bytes(&sizing, &k, &k_len)) return hx_fail("scan: malformed key list");
        if (hx_kv_get(k, k_len, &v) == 0) need += 16 + k_len + v.len;
    }
    if (need > 0x3fffffff) return hx_fail("scan: result too large; lower the limit");
    hx_mpw out;
    hx_mpw_scratch(&out, (uint32_t)need);
    hx_mpw_array(&out, take);
    for (uint32_t i = 0; i < take; i++) {
        const uint8_t *k;
        uint32_t k_len;
        hx_buf v;
        hx_mpr_bytes(&in, &k, &k_len);
        hx_mpw_array(&out, 2);
        hx_mpw_str(&out, (const char *)k + 1, k_len - 1);
        if (hx_kv_get(k, k_len, &v) == 0) hx_mpw_raw(&out, v.ptr, v.len);
        else hx_mpw_nil(&out);
    }
    return hx_reply_mpw(&out);
}

static int32_t count(hx_mpr *args) {
    (void)args;
    hx_buf raw;
    calls_served++;
    int32_t n = hx_kv_keys(HX_S("d"), &raw);
    if (n < 0) return hx_fail("count: the atom KV refused");
    hx_reply_int(n);
    return 0;
}

static int32_t stats(hx_mpr *args) {
    (void)args;
    hx_mpw w;
    uint8_t buf[24];
    hx_mpw_init(&w, buf, sizeof buf);
    hx_mpw_array(&w, 2);
    hx_mpw_uint(&w, calls_served);
    hx_mpw_int(&w, hx_now_ms());
    return hx_reply_mpw(&w);
}

/* ---------------------------------------------------------- transactions */

/* Why `key` cannot be locked by txid now, or 0 when it can. */
static int32_t refuse_lock(const uint8_t *key, uint32_t len, const char *txid, uint32_t txid_len,
                           int64_t now) {
    lock_rec lk;
    if (!read_lock(key, len, &lk) || hx_eq(lk.owner, lk.owner_len, txid, txid_len)) return 0;
    if (!lk.prepared && lk.expiry <= now) return 0; /* a vanished client's lock: taken over */
    uint32_t cap = len + lk.owner_len + 96;
    char *msg = (char *)hx_scratch(cap);
    if (!msg) return hx_fail("aborted: key is locked");
    hx_mpw w;
    hx_mpw_init(&w, msg, cap);
    if (lk.prepared) hx_mpw_raw(&w, HX_S("aborted: key "));
    else hx_mpw_raw(&w, HX_S("aborted: lock conflict: key "));
    hx_mpw_raw(&w, key, len);
    if (lk.prepared) hx_mpw_raw(&w, HX_S(" is held by prepared transaction "));
    else hx_mpw_raw(&w, HX_S(" is locked by transaction "));
    hx_mpw_raw(&w, lk.owner, lk.owner_len);
    hx__sys_reply(w.p, w.len);
    return 1;
}

static int32_t lock(hx_mpr *args) {
    uint32_t n, nkeys;
    const char *txid;
    uint32_t txid_len;
    int64_t lease;
    calls_served++;
    if (!hx_mpr_array(args, &n) || n != 3 || !read_txid(args, &txid, &txid_len) ||
        !hx_mpr_int(args, &lease) || lease <= 0 || lease > 600000 || !hx_mpr_array(args, &nkeys))
        return hx_fail("lock: expected [txid, lease_ms (1..600000), [keys]]");
    int64_t now = hx_now_ms();
    hx_mpr keys = *args;
    /* Check every key first: a transaction holds all of its keys here or none. */
    for (uint32_t i = 0; i < nkeys; i++) {
        const uint8_t *key;
        uint32_t key_len;
        if (!read_key(args, &key, &key_len)) return hx_fail("lock: keys must be str");
        if (refuse_lock(key, key_len, txid, txid_len, now)) return 1;
    }
    hx_mpw out;
    uint32_t need = 5;
    hx_mpr sizing = keys;
    for (uint32_t i = 0; i < nkeys; i++) {
        const uint8_t *key;
        uint32_t key_len;
        hx_buf v;
        read_key(&sizing, &key, &key_len);
        need += get_value(key, key_len, &v) == 0 ? v.len : 1;
    }
    hx_mpw_scratch(&out, need);
    hx_mpw_array(&out, nkeys);
    for (uint32_t i = 0; i < nkeys; i++) {
        const uint8_t *key;
        uint32_t key_len;
        hx_buf v;
        read_key(&keys, &key, &key_len);
        if (write_lock(key, key_len, txid, txid_len, now + lease, false) != 0)
            return hx_fail("lock: the atom KV refused");
        if (get_value(key, key_len, &v) == 0) hx_mpw_raw(&out, v.ptr, v.len);
        else hx_mpw_nil(&out);
    }
    return hx_reply_mpw(&out);
}

static int32_t prepare(hx_mpr *args) {
    uint32_t n, nkeys, nwrites;
    const char *txid;
    uint32_t txid_len;
    hx_buf t;
    calls_served++;
    if (!hx_mpr_array(args, &n) || n != 3 || !read_txid(args, &txid, &txid_len) ||
        !hx_mpr_array(args, &nkeys))
        return hx_fail("prepare: expected [txid, [keys], [[key, op, value], ...]]");
    if (!prefixed('t', (const uint8_t *)txid, txid_len, &t)) return hx_fail("prepare: no memory");
    hx_buf seen;
    if (hx_kv_get(t.ptr, t.len, &seen) == 0) {
        hx_reply_nil(); /* prepared before: a resent prepare */
        return 0;
    }
    int64_t now = hx_now_ms();
    hx_mpr keys = *args;
    for (uint32_t i = 0; i < nkeys; i++) {
        const uint8_t *key;
        uint32_t key_len;
        lock_rec lk;
        if (!read_key(args, &key, &key_len)) return hx_fail("prepare: keys must be str");
        if (!read_lock(key, key_len, &lk) || !hx_eq(lk.owner, lk.owner_len, txid, txid_len))
            return hx_failn("aborted: lock expired (lease over) on key ", key, key_len);
    }
    const uint8_t *writes;
    uint32_t writes_len;
    hx_mpr check;
    if (!hx_mpr_raw(args, &writes, &writes_len)) return hx_fail("prepare: malformed writes");
    hx_mpr_init(&check, writes, writes_len);
    if (!hx_mpr_array(&check, &nwrites)) return hx_fail("prepare: writes must be an array");
    for (uint32_t i = 0; i < nwrites; i++) {
        const uint8_t *key;
        uint32_t key_len;
        int64_t op;
        lock_rec lk;
        if (!hx_mpr_array(&check, &n) || n != 3 || !read_key(&check, &key, &key_len) ||
            !hx_mpr_int(&check, &op) || op < 0 || op > 1 || !hx_mpr_skip(&check))
            return hx_fail("prepare: a write must be [key, 0 (put) or 1 (delete), value]");
        if (!read_lock(key, key_len, &lk) || !hx_eq(lk.owner, lk.owner_len, txid, txid_len))
            return hx_failn("prepare: write to a key the transaction did not lock: ", key,
                            key_len);
    }
    for (uint32_t i = 0; i < nkeys; i++) {
        const uint8_t *key;
        uint32_t key_len;
        read_key(&keys, &key, &key_len);
        if (write_lock(key, key_len, txid, txid_len, now, true) != 0)
            return hx_fail("prepare: the atom KV refused");
    }
    if (hx_kv_put(t.ptr, t.len, writes, writes_len) != 0)
        return hx_fail("prepare: the atom KV refused");
    changed();
    hx_reply_nil();
    return 0;
}

/* commit and abort: both finish txid here; commit applies its writes first. */
static int32_t finish(hx_mpr *args, bool apply) {
    const char *txid;
    uint32_t txid_len;
    hx_buf t, writes;
    calls_served++;
    hx_mpr_unwrap1(args);
    if (!read_txid(args, &txid, &txid_len)) return hx_fail("commit/abort: expected a txid (str)");
    if (!prefixed('t', (const uint8_t *)txid, txid_len, &t)) return hx_fail("out of memory");
    if (hx_kv_get(t.ptr, t.len, &writes) == 0) {
        if (apply) {
            hx_mpr r;
            uint32_t n, three;
            hx_mpr_init(&r, writes.ptr, writes.len);
            hx_mpr_array(&r, &n);
            for (uint32_t i = 0; i < n; i++) {
                const uint8_t *key, *val;
                uint32_t key_len, val_len;
                int64_t op;
                hx_buf k;
                hx_mpr_array(&r, &three);
                read_key(&r, &key, &key_len);
                hx_mpr_int(&r, &op);
                hx_mpr_raw(&r, &val, &val_len);
                if (!prefixed('d', key, key_len, &k)) return hx_fail("commit: out of memory");
                if (op == 1) hx_kv_del(k.ptr, k.len);
                else if (hx_kv_put(k.ptr, k.len, val, val_len) != 0)
                    return hx_fail("commit: the atom KV refused");
            }
        }
        hx_kv_del(t.ptr, t.len);
        changed(); /* a lock only taken, never prepared, need not outlive a crash */
    }
    release_locks(txid, txid_len);
    hx_reply_nil();
    return 0;
}

static int32_t commit(hx_mpr *args) { return finish(args, true); }
static int32_t abort_tx(hx_mpr *args) { return finish(args, false); }

static int32_t locks(hx_mpr *args) {
    (void)args;
    hx_buf raw;
    int32_t n = hx_kv_keys(HX_S("l"), &raw);
    if (n < 0) return hx_fail("locks: the atom KV refused");
    hx_reply_int(n);
    return 0;
}

HX_INIT(init);

HX_METHODS(HX_METHOD("get", get), HX_METHOD("put", put), HX_METHOD("mput", mput),
           HX_METHOD("delete", del),
           HX_METHOD("scan", scan), HX_METHOD("count", count), HX_METHOD("stats", stats),
           HX_METHOD("lock", lock), HX_METHOD("prepare", prepare), HX_METHOD("commit", commit),
           HX_METHOD("abort", abort_tx), HX_METHOD("locks", locks));
