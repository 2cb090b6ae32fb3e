/* kvstore: a key-value store over the atom KV syscalls, so its data moves and
 * checkpoints with the atom. Keys are str (or bin); values are any msgpack
 * value, stored as their raw msgpack bytes.
 *   put [key, value] -> nil
 *   get key          -> value or nil
 *   delete key       -> true when the key existed
 *   keys             -> array of keys (str), sorted
 */
#include "hx.h"

static int32_t put(hx_mpr *args) {
    uint32_t n;
    const uint8_t *key, *val;
    uint32_t key_len, val_len;
    if (!hx_mpr_array(args, &n) || n != 2) return hx_fail("put: expected [key, value]");
    if (!hx_mpr_bytes(args, &key, &key_len)) return hx_fail("put: key must be a str");
    if (!hx_mpr_raw(args, &val, &val_len)) return hx_fail("put: malformed value");
    if (hx_kv_put(key, key_len, val, val_len) != 0) return hx_fail("put: the atom KV refused");
    hx_reply_nil();
    return 0;
}

static bool read_key(hx_mpr *args, const uint8_t **key, uint32_t *len) {
    hx_mpr_unwrap1(args);
    return hx_mpr_bytes(args, key, len) && hx_mpr_done(args);
}

static int32_t get(hx_mpr *args) {
    const uint8_t *key;
    uint32_t key_len;
    hx_buf val;
    if (!read_key(args, &key, &key_len)) return hx_fail("get: expected a key (str)");
    if (hx_kv_get(key, key_len, &val) == 0) hx_reply(val.ptr, val.len);
    else hx_reply_nil();
    return 0;
}

static int32_t del(hx_mpr *args) {
    const uint8_t *key;
    uint32_t key_len;
    if (!read_key(args, &key, &key_len)) return hx_fail("delete: expected a key (str)");
    hx_reply_bool(hx_kv_del(key, key_len) == 0);
    return 0;
}

static int32_t keys(hx_mpr *args) {
    (void)args;
    hx_buf raw;
    if (hx_kv_keys(0, 0, &raw) < 0) return hx_fail("keys: the atom KV refused");
    /* The KV lists keys as bin; clients put them as str: hand back str. A str
     * header is at most 4 bytes longer than a bin header. */
    hx_mpr in;
    hx_mpr_init(&in, raw.ptr, raw.len);
    uint32_t count;
    if (!hx_mpr_array(&in, &count)) return hx_fail("keys: malformed key list from the runtime");
    hx_mpw out;
    hx_mpw_scratch(&out, raw.len + 5 + 4 * count);
    hx_mpw_array(&out, count);
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *k;
        uint32_t k_len;
        if (!hx_mpr_bytes(&in, &k, &k_len)) return hx_fail("keys: malformed key list");
        hx_mpw_str(&out, (const char *)k, k_len);
    }
    return hx_reply_mpw(&out);
}

HX_METHODS(HX_METHOD("put", put), HX_METHOD("get", get), HX_METHOD("delete", del),
           HX_METHOD("keys", keys));
