/* kvclient: an atom using a sharded KV store (hermesx/apps/kv, docs/DESIGN.md section 11).
 *
 * It places keys exactly as the Python client does (hermesx/apps/kv/ring.py):
 * 64 points per shard on a 64-bit ring at ring_hash("<store>/<index>#<vnode>"),
 * a key on the first point at or after ring_hash(key); ring_hash is FNV-1a
 * finished by MurmurHash3's fmix64. The shard count comes from the name
 * service: the shards' aliases in the scope "kv.<store>".
 *
 *   get [store, key]                -> value or nil
 *   put [store, key, value]         -> nil
 *   delete [store, key]             -> true when the key existed
 *   scan [store, prefix, limit]     -> [[key, value], ...] of every shard (at most
 *                                      limit from each),
 *                                      each shard's part sorted
 *   shard_of [store, key]           -> the shard's name
 */
#include "hx.h"

#define VNODES 64
#define STORE_MAX 64

static uint64_t ring_hash(const uint8_t *p, uint32_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint32_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

static uint32_t put_uint(char *out, uint32_t v) {
    char tmp[10];
    uint32_t n = 0, len = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) out[len++] = tmp[--n];
    return len;
}

/* How many shards the store has: its aliases in the scope kv.<store>. */
static int32_t shard_count(const char *store, uint32_t store_len) {
    char scope[STORE_MAX + 3] = "kv.";
    hx_buf out;
    memcpy(scope + 3, store, store_len);
    if (hx_lookup(HX_LOOKUP_ALL, scope, store_len + 3, HX_S(".*"), &out) != 0) return -1;
    hx_mpr r;
    uint32_t n;
    hx_mpr_init(&r, out.ptr, out.len);
    return hx_mpr_array(&r, &n) ? (int32_t)n : -1;
}

/* The index of the shard holding key: the point at or after its hash, wrapping. */
static uint32_t shard_of(const char *store, uint32_t store_len, uint32_t shards,
                         const uint8_t *key, uint32_t key_len) {
    uint64_t h = ring_hash(key, key_len);
    uint64_t best = ~0ull;
    uint32_t owner = 0;
    char point[STORE_MAX + 24];
    memcpy(point, store, store_len);
    point[store_len] = '/';
    for (uint32_t i = 0; i < shards; i++) {
        uint32_t at = store_len + 1;
        at += put_uint(point + at, i);
        point[at++] = '#';
        for (uint32_t v = 0; v < VNODES; v++) {
            uint32_t len = at + put_uint(point + at, v);
            uint64_t distance = ring_hash((const uint8_t *)point, len) - h; /* mod 2^64 */
            if (distance < best) {
                best = distance;
                owner = i;
            }
        }
    }
    return owner;
}

/* "kv.<store>.<index, 4 digits>" into out; its length. */
static uint32_t shard_name(const char *store, uint32_t store_len, uint32_t index, char *out) {
    memcpy(out, "kv.", 3);
    memcpy(out + 3, store, store_len);
    uint32_t at = 3 + store_len;
    out[at++] = '.';
    for (int d = 3; d >= 0; d--) {
        uint32_t div = 1;
        for (int k = 0; k < d; k++) div *= 10;
        out[at++] = (char)('0' + (index / div) % 10);
    }
    return at;
}

typedef struct {
    const char *store;
    uint32_t store_len;
    char shard[STORE_MAX + 16];
    uint32_t shard_len;
} target;

/* Reads [store, key, ...] and names the key's shard; 0 = ok. */
static int32_t locate(hx_mpr *args, uint32_t want, target *t, const uint8_t **key,
                      uint32_t *key_len) {
    uint32_t n;
    if (!hx_mpr_array(args, &n) || n != want || !hx_mpr_str(args, &t->store, &t->store_len) ||
        t->store_len == 0 || t->store_len > STORE_MAX || !hx_mpr_bytes(args, key, key_len))
        return hx_fail("expected [store, key, ...] (store: a name of at most 64 characters)");
    int32_t shards = shard_count(t->store, t->store_len);
    if (shards <= 0) return hx_failn("no KV store ", t->store, t->store_len);
    uint32_t index = shard_of(t->store, t->store_len, (uint32_t)shards, *key, *key_len);
    t->shard_len = shard_name(t->store, t->store_len, index, t->shard);
    return 0;
}

/* Calls the shard and hands its reply (or its error) back. */
static int32_t relay(const target *t, const char *method, const void *args, uint32_t len) {
    hx_buf out;
    int32_t s = hx_call(t->shard, t->shard_len, method, hx_strlen(method), args, len, &out);
    if (s != 0) return hx_failn("shard call failed: ", out.ptr, out.len);
    hx_reply(out.ptr, out.len);
    return 0;
}

static int32_t one_key(hx_mpr *args, const char *method) {
    target t;
    const uint8_t *key;
    uint32_t key_len;
    if (locate(args, 2, &t, &key, &key_len)) return 1;
    hx_mpw w;
    hx_mpw_scratch(&w, key_len + 8);
    hx_mpw_str(&w, (const char *)key, key_len);
    return relay(&t, method, w.p, w.len);
}

static int32_t get(hx_mpr *args) { return one_key(args, "get"); }
static int32_t del(hx_mpr *args) { return one_key(args, "delete"); }

static int32_t put(hx_mpr *args) {
    target t;
    const uint8_t *key, *val;
    uint32_t key_len, val_len;
    if (locate(args, 3, &t, &key, &key_len)) return 1;
    if (!hx_mpr_raw(args, &val, &val_len)) return hx_fail("put: malformed value");
    hx_mpw w;
    hx_mpw_scratch(&w, key_len + val_len + 16);
    hx_mpw_array(&w, 2);
    hx_mpw_str(&w, (const char *)key, key_len);
    hx_mpw_raw(&w, val, val_len);
    return relay(&t, "put", w.p, w.len);
}

static int32_t which(hx_mpr *args) {
    target t;
    const uint8_t *key;
    uint32_t key_len;
    if (locate(args, 2, &t, &key, &key_len)) return 1;
    return hx_reply_str(t.shard, t.shard_len);
}

static int32_t scan(hx_mpr *args) {
    uint32_t n;
    const char *store;
    uint32_t store_len;
    const uint8_t *rest;
    uint32_t rest_len;
    if (!hx_mpr_array(args, &n) || n != 3 || !hx_mpr_str(args, &store, &store_len) ||
        store_len == 0 || store_len > STORE_MAX)
        return hx_fail("scan: expected [store, prefix, limit]");
    /* [prefix, limit] is what each shard takes: pass the rest on as is. */
    rest = args->p + args->pos;
    rest_len = args->len - args->pos;
    int32_t shards = shard_count(store, store_len);
    if (shards <= 0) return hx_failn("no KV store ", store, store_len);
    hx_mpw call;
    hx_mpw_scratch(&call, rest_len + 2);
    hx_mpw_array(&call, 2);
    hx_mpw_raw(&call, rest, rest_len);
    hx_buf parts[64];
    uint32_t total = 0, bytes = 0;
    if (shards > 64) return hx_fail("scan: at most 64 shards from an atom");
    for (int32_t i = 0; i < shards; i++) {
        char name[STORE_MAX + 16];
        uint32_t name_len = shard_name(store, store_len, (uint32_t)i, name);
        if (hx_call(name, name_len, HX_S("scan"), call.p, call.len, &parts[i]) != 0)
            return hx_failn("scan: a shard failed: ", parts[i].ptr, parts[i].len);
        hx_mpr r;
        uint32_t count;
        hx_mpr_init(&r, parts[i].ptr, parts[i].len);
        if (!hx_mpr_array(&r, &count)) return hx_fail("scan: malformed shard reply");
        total += count;
        bytes += parts[i].len;
    }
    hx_mpw out;
    hx_mpw_scratch(&out, bytes + 5);
    hx_mpw_array(&out, total);
    for (int32_t i = 0; i < shards; i++) {
        hx_mpr r;
        uint32_t count;
        hx_mpr_init(&r, parts[i].ptr, parts[i].len);
        hx_mpr_array(&r, &count);
        hx_mpw_raw(&out, parts[i].ptr + r.pos, parts[i].len - r.pos);
    }
    return hx_reply_mpw(&out);
}

HX_METHODS(HX_METHOD("get", get), HX_METHOD("put", put), HX_METHOD("delete", del),
           HX_METHOD("scan", scan), HX_METHOD("shard_of", which));
