/* archive: files finished vouchers away (examples/expense_voucher).
 *
 *   init {name}
 *   site          -> {node, name, role}
 *   store voucher -> how many vouchers the archive holds; a local step: the
 *                    voucher must have come to this node
 *   ids           -> the archived voucher ids, sorted
 *
 * Ids are keys in the atom KV ("id/<id>"), so they move and checkpoint with it.
 */
#include "demo.h"

static int64_t stored_count;

static int32_t init(hx_mpr *args) {
    if (!party_init_name(args->p, args->len)) return hx_fail("init: expected {name: str}");
    return 0;
}

static int32_t site(hx_mpr *args) {
    (void)args;
    return party_site("archive");
}

static int32_t store(hx_mpr *args) {
    const char *voucher;
    uint32_t voucher_len;
    if (!arg_str(args, &voucher, &voucher_len)) return hx_fail("store: expected a voucher name");
    voucher_view v;
    int32_t status = voucher_get(voucher, voucher_len, &v);
    if (status != 0) return status;
    hx_buf out;
    if (party_act(voucher, voucher_len, "archive", 0, 0, 0, &out) != 0)
        return fail_with(&out, "store: the voucher did not answer");
    uint8_t *key = (uint8_t *)hx_scratch(3 + v.id_len);
    if (!key) return hx_fail("store: out of memory");
    memcpy(key, "id/", 3);
    memcpy(key + 3, v.id, v.id_len);
    static const uint8_t yes = 0xc3;
    hx_buf old;
    bool known = hx_kv_get(key, 3 + v.id_len, &old) == 0;
    if (hx_kv_put(key, 3 + v.id_len, &yes, 1) != 0) return hx_fail("store: the atom KV refused");
    if (!known) stored_count++;
    hx_reply_int(stored_count);
    return 0;
}

static int32_t ids(hx_mpr *args) {
    (void)args;
    hx_buf raw;
    if (hx_kv_keys(HX_S("id/"), &raw) < 0) return hx_fail("ids: the atom KV refused");
    hx_mpr in;
    hx_mpr_init(&in, raw.ptr, raw.len);
    uint32_t count;
    if (!hx_mpr_array(&in, &count)) return hx_fail("ids: malformed key list from the runtime");
    hx_mpw w;
    hx_mpw_scratch(&w, raw.len + 5 + 4 * count);
    hx_mpw_array(&w, count);
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *k;
        uint32_t n;
        if (!hx_mpr_bytes(&in, &k, &n) || n < 3) return hx_fail("ids: malformed key list");
        hx_mpw_str(&w, (const char *)k + 3, n - 3);
    }
    return hx_reply_mpw(&w);
}

HX_INIT(init);
HX_METHODS(HX_METHOD("site", site), HX_METHOD("store", store), HX_METHOD("ids", ids));
