/* manager: approves vouchers up to a limit, rejects bigger ones with a
 * reason (examples/expense_voucher).
 *
 *   init {name, limit}   limit in cents
 *   site                 -> {node, name, role}
 *   review voucher       -> {decision: "approved"|"rejected", reason}; a local
 *                           step: the voucher must have come to this node
 *   decisions            -> {approved, rejected}
 */
#include "demo.h"

static int64_t limit_cents;
static int64_t approved_count, rejected_count;

static int32_t init(hx_mpr *args) {
    field f[] = {FIELD("name"), FIELD("limit")};
    int32_t status;
    if (!args_read(args, "init", f, NFIELDS(f), &status)) return status;
    if (!field_text(&f[0], &party_name)) return hx_fail("init: name (1-96 bytes) is required");
    if (!field_int(&f[1], &limit_cents) || limit_cents < 0)
        return hx_fail("init: limit must be a number of cents >= 0");
    return 0;
}

static int32_t site(hx_mpr *args) {
    (void)args;
    return party_site("manager");
}

static int32_t review(hx_mpr *args) {
    const char *voucher;
    uint32_t voucher_len;
    if (!arg_str(args, &voucher, &voucher_len)) return hx_fail("review: expected a voucher name");
    voucher_view v;
    int32_t status = voucher_get(voucher, voucher_len, &v);
    if (status != 0) return status;
    msg reason;
    msg_init(&reason, 160);
    bool ok = v.total <= limit_cents;
    if (!ok) {
        msg_cstr(&reason, "total ");
        msg_money(&reason, v.total);
        msg_cstr(&reason, " ");
        msg_add(&reason, v.currency, v.currency_len);
        msg_cstr(&reason, " is over the approval limit of ");
        msg_money(&reason, limit_cents);
    }
    hx_buf out;
    status = ok ? party_act(voucher, voucher_len, "approve", 0, 0, 0, &out)
                : party_act(voucher, voucher_len, "reject", "reason", reason.p, reason.len, &out);
    if (status != 0) return fail_with(&out, "review: the voucher did not answer");
    if (ok) approved_count++;
    else rejected_count++;
    hx_mpw w;
    hx_mpw_scratch(&w, 64 + reason.len);
    hx_mpw_map(&w, 2);
    hx_mpw_str(&w, HX_S("decision"));
    if (ok) hx_mpw_str(&w, HX_S("approved"));
    else hx_mpw_str(&w, HX_S("rejected"));
    hx_mpw_str(&w, HX_S("reason"));
    hx_mpw_str(&w, reason.p ? reason.p : "", reason.len);
    return hx_reply_mpw(&w);
}

static int32_t decisions(hx_mpr *args) {
    (void)args;
    hx_mpw w;
    hx_mpw_scratch(&w, 48);
    hx_mpw_map(&w, 2);
    hx_mpw_str(&w, HX_S("approved"));
    hx_mpw_int(&w, approved_count);
    hx_mpw_str(&w, HX_S("rejected"));
    hx_mpw_int(&w, rejected_count);
    return hx_reply_mpw(&w);
}

HX_INIT(init);
HX_METHODS(HX_METHOD("site", site), HX_METHOD("review", review),
           HX_METHOD("decisions", decisions));
