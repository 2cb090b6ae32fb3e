/* accounting: disburses approved vouchers and keeps the ledger
 * (examples/expense_voucher).
 *
 *   init {name}
 *   site             -> {node, name, role}
 *   disburse voucher -> {paid, ledger}: pays the voucher's total; a local
 *                       step: the voucher must have come to this node
 *   ledger           -> {total, count}: everything paid so far, in cents
 *
 * The ledger is in C globals: it moves, checkpoints and recovers with the atom.
 */
#include "demo.h"

static int64_t ledger_total, ledger_count;

static int32_t init(hx_mpr *args) {
    if (!party_init_name(args->p, args->len)) return hx_fail("init: expected {name: str}");
    return 0;
}

static int32_t site(hx_mpr *args) {
    (void)args;
    return party_site("accounting");
}

static int32_t disburse(hx_mpr *args) {
    const char *voucher;
    uint32_t voucher_len;
    if (!arg_str(args, &voucher, &voucher_len))
        return hx_fail("disburse: expected a voucher name");
    voucher_view v;
    int32_t status = voucher_get(voucher, voucher_len, &v);
    if (status != 0) return status;
    hx_buf out;
    if (party_act(voucher, voucher_len, "disburse", 0, 0, 0, &out) != 0)
        return fail_with(&out, "disburse: the voucher did not answer");
    ledger_total += v.total;
    ledger_count++;
    hx_mpw w;
    hx_mpw_scratch(&w, 48);
    hx_mpw_map(&w, 2);
    hx_mpw_str(&w, HX_S("paid"));
    hx_mpw_int(&w, v.total);
    hx_mpw_str(&w, HX_S("ledger"));
    hx_mpw_int(&w, ledger_total);
    return hx_reply_mpw(&w);
}

static int32_t ledger(hx_mpr *args) {
    (void)args;
    hx_mpw w;
    hx_mpw_scratch(&w, 48);
    hx_mpw_map(&w, 2);
    hx_mpw_str(&w, HX_S("total"));
    hx_mpw_int(&w, ledger_total);
    hx_mpw_str(&w, HX_S("count"));
    hx_mpw_int(&w, ledger_count);
    return hx_reply_mpw(&w);
}

HX_INIT(init);
HX_METHODS(HX_METHOD("site", site), HX_METHOD("disburse", disburse),
           HX_METHOD("ledger", ledger));
