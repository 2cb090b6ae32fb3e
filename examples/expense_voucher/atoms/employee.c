/* employee: a person who files expense vouchers (examples/expense_voucher).
 *
 *   init {name}
 *   site           -> {node, name, role}: where to find this employee
 *   submit voucher -> the voucher's new state; a local step: the voucher
 *                     must be on this employee's node
 *   submitted      -> how many vouchers this employee has submitted
 */
#include "demo.h"

static int64_t submitted_count;

static int32_t init(hx_mpr *args) {
    if (!party_init_name(args->p, args->len)) return hx_fail("init: expected {name: str}");
    return 0;
}

static int32_t site(hx_mpr *args) {
    (void)args;
    return party_site("employee");
}

static int32_t submit(hx_mpr *args) {
    const char *voucher;
    uint32_t voucher_len;
    if (!arg_str(args, &voucher, &voucher_len)) return hx_fail("submit: expected a voucher name");
    hx_buf out;
    if (party_act(voucher, voucher_len, "submit", 0, 0, 0, &out) != 0)
        return fail_with(&out, "submit: the voucher did not answer");
    submitted_count++;
    hx_reply(out.ptr, out.len);
    return 0;
}

static int32_t submitted(hx_mpr *args) {
    (void)args;
    hx_reply_int(submitted_count);
    return 0;
}

HX_INIT(init);
HX_METHODS(HX_METHOD("site", site), HX_METHOD("submit", submit),
           HX_METHOD("submitted", submitted));
