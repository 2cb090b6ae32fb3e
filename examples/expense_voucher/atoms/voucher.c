/* voucher: an expense voucher, a mobile object whose data and code travel the
 * organisation (examples/expense_voucher/README.md; docs/DESIGN.md sections 3-5).
 *
 * Its fields live in C globals and its history in the atom KV, so both move
 * and checkpoint with it. Money is integer cents in one currency per voucher.
 *
 *   init {id, employee, dept, currency}
 *   add_line {date, description, amount, currency}        -> {line, total}
 *   fix_line {index, date, description, amount, currency} -> {line, total}
 *   submit   {node, actor}                      draft|rejected -> submitted
 *   approve  {node, actor}                      submitted -> approved
 *   reject   {node, actor, reason}              submitted -> rejected
 *   disburse {node, actor}                      approved -> disbursed
 *   archive  {node, actor}                      disbursed|rejected -> archived
 *   route role       finds the party with alias role=<role> (of the voucher's
 *                    dept when there is one), asks it for its site and moves
 *                    there after this call -> {from, to, party, moving}
 *   get              -> every field as a map
 *   history          -> every step: {step, state, node, at_ms, actor, note}
 *   where            -> the node the voucher is on
 *
 * The party steps (submit, approve, reject, disburse, archive) are local: the
 * party passes its own node and the voucher refuses unless it is on that very
 * node, so a manager cannot approve a voucher that has not come to them.
 */
#include "demo.h"

#define MAX_LINES 16
#define MAX_HISTORY 500
/* 1,000,000.00 per line: a bigger amount is a typing error, not an expense. */
#define MAX_AMOUNT 100000000

enum { DRAFT, SUBMITTED, APPROVED, REJECTED, DISBURSED, ARCHIVED };
static const char *const state_names[] = {"draft",    "submitted", "approved",
                                          "rejected", "disbursed", "archived"};

typedef struct {
    hx_text date, description, currency;
    int64_t amount;
} line;

static hx_text v_id, v_employee, v_dept, v_currency, v_reason;
static int v_state = DRAFT;
static line v_lines[MAX_LINES];
static uint32_t v_nlines;
static uint32_t v_nhistory;

static int64_t total(void) {
    int64_t t = 0;
    for (uint32_t i = 0; i < v_nlines; i++) t += v_lines[i].amount;
    return t;
}

static void msg_state(msg *m, int state) { msg_cstr(m, state_names[state]); }

/* ---------------------------------------------------------------- history */

/* Appends one step to the history (atom KV "h/NNNN"). The note is the
 * builder's text. False when the KV refused or the history is full. */
static bool history_add(const char *step, int new_state, const hx_text *actor, const msg *note) {
    if (v_nhistory >= MAX_HISTORY) return false;
    hx_buf node;
    if (!hx_node_name_scratch(&node)) return false;
    char key[6] = {'h', '/', 0, 0, 0, 0};
    uint32_t n = v_nhistory;
    for (int i = 5; i >= 2; i--, n /= 10) key[i] = (char)('0' + n % 10);
    hx_mpw w;
    hx_mpw_scratch(&w, 128 + node.len + actor->len + note->len + hx_strlen(step));
    hx_mpw_map(&w, 6);
    hx_mpw_str(&w, HX_S("step"));
    hx_mpw_str(&w, step, hx_strlen(step));
    hx_mpw_str(&w, HX_S("state"));
    hx_mpw_str(&w, state_names[new_state], hx_strlen(state_names[new_state]));
    hx_mpw_str(&w, HX_S("node"));
    hx_mpw_str(&w, (const char *)node.ptr, node.len);
    hx_mpw_str(&w, HX_S("at_ms"));
    hx_mpw_int(&w, hx_now_ms());
    hx_mpw_str(&w, HX_S("actor"));
    hx_mpw_str(&w, actor->s, actor->len);
    hx_mpw_str(&w, HX_S("note"));
    hx_mpw_str(&w, note->p ? note->p : "", note->len);
    if (w.err || hx_kv_put(key, sizeof key, w.p, w.len) != 0) return false;
    v_nhistory++;
    return true;
}

static int32_t history_failed(const char *method) {
    msg m;
    msg_init(&m, 120);
    msg_cstr(&m, method);
    msg_cstr(&m, ": cannot record the step in the history of voucher ");
    msg_text(&m, &v_id);
    return msg_fail(&m);
}

/* ----------------------------------------------------------------- checks */

static int32_t fail_state(const char *method, const char *allowed) {
    msg m;
    msg_init(&m, 160);
    msg_cstr(&m, method);
    msg_cstr(&m, ": voucher ");
    msg_text(&m, &v_id);
    msg_cstr(&m, " is ");
    msg_state(&m, v_state);
    msg_cstr(&m, "; this step needs it ");
    msg_cstr(&m, allowed);
    return msg_fail(&m);
}

/* Reads {node, actor, ...} of a party step and checks the party is on the
 * voucher's node. 0 = ok, else the call failed with the reason. */
static int32_t check_local(const char *method, field *f, hx_text *actor) {
    const char *node;
    uint32_t node_len;
    if (!field_str(&f[0], &node, &node_len) || node_len == 0) {
        msg m;
        msg_init(&m, 80);
        msg_cstr(&m, method);
        msg_cstr(&m, ": field node (the party's node name) is required");
        return msg_fail(&m);
    }
    if (!field_text(&f[1], actor)) {
        msg m;
        msg_init(&m, 80);
        msg_cstr(&m, method);
        msg_cstr(&m, ": field actor (1-96 bytes) is required");
        return msg_fail(&m);
    }
    hx_buf here;
    if (!hx_node_name_scratch(&here)) return hx_fail("cannot read the node name");
    if (!hx_eq(here.ptr, here.len, node, node_len)) {
        msg m;
        msg_init(&m, 240);
        msg_cstr(&m, method);
        msg_cstr(&m, " must run where the voucher is: voucher ");
        msg_text(&m, &v_id);
        msg_cstr(&m, " is on ");
        msg_add(&m, (const char *)here.ptr, here.len);
        msg_cstr(&m, ", ");
        msg_text(&m, actor);
        msg_cstr(&m, " is on ");
        msg_add(&m, node, node_len);
        return msg_fail(&m);
    }
    return 0;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static bool valid_date(const char *s, uint32_t n) {
    if (n != 10 || s[4] != '-' || s[7] != '-') return false;
    for (uint32_t i = 0; i < 10; i++)
        if (i != 4 && i != 7 && !is_digit(s[i])) return false;
    int month = (s[5] - '0') * 10 + (s[6] - '0');
    int day = (s[8] - '0') * 10 + (s[9] - '0');
    return month >= 1 && month <= 12 && day >= 1 && day <= 31;
}

static bool valid_currency(const char *s, uint32_t n) {
    if (n != 3) return false;
    for (uint32_t i = 0; i < 3; i++)
        if (s[i] < 'A' || s[i] > 'Z') return false;
    return true;
}

/* Reads and checks the line fields (f[0..3] = date, description, amount,
 * currency). 0 = ok, else the call failed naming the bad field. */
static int32_t read_line(const char *method, field *f, line *out) {
    const char *s;
    uint32_t n;
    msg m;
    msg_init(&m, 200);
    msg_cstr(&m, method);
    if (!field_str(&f[0], &s, &n) || !valid_date(s, n)) {
        msg_cstr(&m, ": date must be a str YYYY-MM-DD");
        if (f[0].present && field_str(&f[0], &s, &n)) {
            msg_cstr(&m, ", got ");
            msg_add(&m, s, n > 20 ? 20 : n);
        }
        return msg_fail(&m);
    }
    text_set(&out->date, s, n);
    if (!field_str(&f[1], &s, &n) || n == 0 || n > TEXT_CAP) {
        msg_cstr(&m, ": description must be a str of 1-96 bytes");
        return msg_fail(&m);
    }
    text_set(&out->description, s, n);
    if (!field_int(&f[2], &out->amount)) {
        msg_cstr(&m, ": amount must be an integer number of cents");
        return msg_fail(&m);
    }
    if (out->amount <= 0 || out->amount > MAX_AMOUNT) {
        msg_cstr(&m, ": amount must be between 1 and ");
        msg_int(&m, MAX_AMOUNT);
        msg_cstr(&m, " cents, got ");
        msg_int(&m, out->amount);
        return msg_fail(&m);
    }
    if (!field_str(&f[3], &s, &n) || !valid_currency(s, n)) {
        msg_cstr(&m, ": currency must be a 3-letter code such as USD");
        return msg_fail(&m);
    }
    if (!text_eq(&v_currency, s, n)) {
        msg_cstr(&m, ": line currency ");
        msg_add(&m, s, n);
        msg_cstr(&m, " differs from the voucher's ");
        msg_text(&m, &v_currency);
        return msg_fail(&m);
    }
    text_set(&out->currency, s, n);
    return 0;
}

static void msg_line_body(msg *m, const line *l) {
    msg_text(m, &l->date);
    msg_cstr(m, " ");
    msg_text(m, &l->description);
    msg_cstr(m, " ");
    msg_money(m, l->amount);
    msg_cstr(m, " ");
    msg_text(m, &l->currency);
}

static void msg_line(msg *m, uint32_t index, const line *l) {
    msg_cstr(m, "line ");
    msg_int(m, index);
    msg_cstr(m, ": ");
    msg_line_body(m, l);
}

static int32_t reply_line_total(uint32_t index) {
    hx_mpw w;
    hx_mpw_scratch(&w, 40);
    hx_mpw_map(&w, 2);
    hx_mpw_str(&w, HX_S("line"));
    hx_mpw_uint(&w, index);
    hx_mpw_str(&w, HX_S("total"));
    hx_mpw_int(&w, total());
    return hx_reply_mpw(&w);
}

/* ---------------------------------------------------------------- methods */

static int32_t init(hx_mpr *args) {
    field f[] = {FIELD("id"), FIELD("employee"), FIELD("dept"), FIELD("currency")};
    int32_t status;
    if (!args_read(args, "init", f, NFIELDS(f), &status)) return status;
    if (!field_text(&f[0], &v_id)) return hx_fail("init: id (1-96 bytes) is required");
    if (!field_text(&f[1], &v_employee)) return hx_fail("init: employee (1-96 bytes) is required");
    if (f[2].present && !field_text(&f[2], &v_dept)) return hx_fail("init: dept must be a str");
    const char *c;
    uint32_t cn;
    if (!field_str(&f[3], &c, &cn) || !valid_currency(c, cn))
        return hx_fail("init: currency must be a 3-letter code such as USD");
    text_set(&v_currency, c, cn);
    msg note;
    msg_init(&note, 200);
    msg_cstr(&note, "voucher ");
    msg_text(&note, &v_id);
    msg_cstr(&note, " of ");
    msg_text(&note, &v_employee);
    if (v_dept.len) {
        msg_cstr(&note, " (");
        msg_text(&note, &v_dept);
        msg_cstr(&note, ")");
    }
    msg_cstr(&note, " in ");
    msg_text(&note, &v_currency);
    if (!history_add("create", DRAFT, &v_employee, &note)) return history_failed("init");
    return 0;
}

static int32_t edit_line(hx_mpr *args, bool fix) {
    const char *method = fix ? "fix_line" : "add_line";
    field f[] = {FIELD("date"), FIELD("description"), FIELD("amount"), FIELD("currency"),
                 FIELD("index")};
    int32_t status;
    if (!args_read(args, method, f, fix ? 5 : 4, &status)) return status;
    if (v_state != DRAFT && v_state != REJECTED) return fail_state(method, "draft or rejected");
    int64_t index = v_nlines;
    if (fix) {
        if (!field_int(&f[4], &index) || index < 0 || index >= (int64_t)v_nlines) {
            msg m;
            msg_init(&m, 120);
            msg_cstr(&m, "fix_line: index must be a line number from 0 to ");
            msg_int(&m, (int64_t)v_nlines - 1);
            return msg_fail(&m);
        }
    } else if (v_nlines >= MAX_LINES) {
        return hx_fail("add_line: the voucher already has 16 lines");
    }
    line l;
    if ((status = read_line(method, f, &l)) != 0) return status;
    msg note;
    msg_init(&note, 400);
    msg_line(&note, (uint32_t)index, fix ? &v_lines[index] : &l);
    if (fix) {
        msg_cstr(&note, " -> ");
        msg_line_body(&note, &l);
    }
    if (!history_add(method, v_state, &v_employee, &note)) return history_failed(method);
    v_lines[index] = l;
    if (!fix) v_nlines++;
    return reply_line_total((uint32_t)index);
}

static int32_t add_line(hx_mpr *args) { return edit_line(args, false); }
static int32_t fix_line(hx_mpr *args) { return edit_line(args, true); }

/* A party step: {node, actor[, extra]} checked local, `from` states allowed,
 * `to` the new state. `extra` (reason) is required when extra_key is set. */
static int32_t party_step(hx_mpr *args, const char *method, uint32_t from_mask,
                          const char *from_text, int to, const char *extra_key) {
    field f[] = {FIELD("node"), FIELD("actor"), FIELD(extra_key ? extra_key : "note")};
    int32_t status;
    if (!args_read(args, method, f, NFIELDS(f), &status)) return status;
    hx_text actor, extra = {0, {0}};
    if ((status = check_local(method, f, &actor)) != 0) return status;
    if (!((1u << v_state) & from_mask)) return fail_state(method, from_text);
    if (f[2].present && !field_text(&f[2], &extra)) {
        msg m;
        msg_init(&m, 80);
        msg_cstr(&m, method);
        msg_cstr(&m, ": ");
        msg_cstr(&m, f[2].key);
        msg_cstr(&m, " must be a str of 1-96 bytes");
        return msg_fail(&m);
    }
    if (extra_key && extra.len == 0) {
        msg m;
        msg_init(&m, 80);
        msg_cstr(&m, method);
        msg_cstr(&m, ": a ");
        msg_cstr(&m, extra_key);
        msg_cstr(&m, " is required");
        return msg_fail(&m);
    }
    if (to == SUBMITTED && v_nlines == 0) return hx_fail("submit: the voucher has no lines");
    msg note;
    msg_init(&note, 300);
    msg_cstr(&note, state_names[to]);
    msg_cstr(&note, " ");
    msg_money(&note, total());
    msg_cstr(&note, " ");
    msg_text(&note, &v_currency);
    if (to == SUBMITTED) {
        msg_cstr(&note, " in ");
        msg_int(&note, v_nlines);
        msg_cstr(&note, v_nlines == 1 ? " line" : " lines");
    }
    if (extra.len) {
        msg_cstr(&note, ": ");
        msg_text(&note, &extra);
    }
    if (!history_add(method, to, &actor, &note)) return history_failed(method);
    if (to == REJECTED) v_reason = extra;
    if (to == SUBMITTED) v_reason.len = 0;
    v_state = to;
    return hx_reply_str(state_names[to], hx_strlen(state_names[to]));
}

static int32_t submit(hx_mpr *args) {
    return party_step(args, "submit", (1u << DRAFT) | (1u << REJECTED), "draft or rejected",
                      SUBMITTED, 0);
}
static int32_t approve(hx_mpr *args) {
    return party_step(args, "approve", 1u << SUBMITTED, "submitted", APPROVED, 0);
}
static int32_t reject(hx_mpr *args) {
    return party_step(args, "reject", 1u << SUBMITTED, "submitted", REJECTED, "reason");
}
static int32_t disburse(hx_mpr *args) {
    return party_step(args, "disburse", 1u << APPROVED, "approved", DISBURSED, 0);
}
static int32_t archive(hx_mpr *args) {
    return party_step(args, "archive", (1u << DISBURSED) | (1u << REJECTED),
                      "disbursed or rejected", ARCHIVED, 0);
}

#define MAX_PARTIES 16

/* Reads a lookup result (msgpack array of GUID str) into `guids`. */
static uint32_t read_guids(const hx_buf *out, hx_buf *guids) {
    hx_mpr r;
    hx_mpr_init(&r, out->ptr, out->len);
    uint32_t n, kept = 0;
    if (!hx_mpr_array(&r, &n)) return 0;
    for (uint32_t i = 0; i < n; i++) {
        const char *s;
        uint32_t len;
        if (!hx_mpr_str(&r, &s, &len)) return kept;
        if (kept < MAX_PARTIES) {
            guids[kept].ptr = (const uint8_t *)s;
            guids[kept].len = len;
            kept++;
        }
    }
    return kept;
}

static int32_t route(hx_mpr *args) {
    const char *role;
    uint32_t role_len;
    if (!arg_str(args, &role, &role_len)) return hx_fail("route: expected a role (str)");
    hx_buf out, parties[MAX_PARTIES], in_dept[MAX_PARTIES];
    if (hx_lookup(HX_LOOKUP_EXACT, HX_S("role"), role, role_len, &out) != 0)
        return fail_with(&out, "route: lookup of the role failed");
    uint32_t n = read_guids(&out, parties);
    if (n == 0) return hx_failn("route: no party has the alias role=", role, role_len);
    /* The voucher's own department first: a sales voucher goes to the sales
     * manager even when other departments' managers exist. */
    hx_buf party = parties[0];
    if (v_dept.len && hx_lookup(HX_LOOKUP_EXACT, HX_S("dept"), v_dept.s, v_dept.len, &out) == 0) {
        uint32_t m = read_guids(&out, in_dept);
        bool found = false;
        for (uint32_t i = 0; i < n && !found; i++)
            for (uint32_t j = 0; j < m && !found; j++)
                if (hx_eq(parties[i].ptr, parties[i].len, in_dept[j].ptr, in_dept[j].len)) {
                    party = parties[i];
                    found = true;
                }
    }
    static const uint8_t nil = 0xc0;
    if (hx_call((const char *)party.ptr, party.len, HX_S("site"), &nil, 1, &out) != 0)
        return fail_with(&out, "route: the party did not say where it is");
    field f[] = {FIELD("node"), FIELD("name")};
    hx_buf bad;
    const char *node;
    uint32_t node_len;
    hx_text name;
    if (!fields_read(out.ptr, out.len, f, NFIELDS(f), false, &bad) ||
        !field_str(&f[0], &node, &node_len) || node_len == 0 || !field_text(&f[1], &name))
        return hx_fail("route: the party's site answer is malformed");
    hx_buf here;
    if (!hx_node_name_scratch(&here)) return hx_fail("route: cannot read the node name");
    bool moving = !hx_eq(here.ptr, here.len, node, node_len);
    msg note;
    msg_init(&note, 300);
    msg_cstr(&note, moving ? "to " : "already with ");
    msg_add(&note, role, role_len);
    msg_cstr(&note, " ");
    msg_text(&note, &name);
    msg_cstr(&note, moving ? " at " : " on ");
    msg_add(&note, node, node_len);
    if (!history_add("route", v_state, &v_id, &note)) return history_failed("route");
    if (moving && hx_move_to(node, node_len) != 0)
        return hx_failn("route: the move was refused, to node ", node, node_len);
    hx_mpw w;
    hx_mpw_scratch(&w, 64 + here.len + node_len + name.len);
    hx_mpw_map(&w, 4);
    hx_mpw_str(&w, HX_S("from"));
    hx_mpw_str(&w, (const char *)here.ptr, here.len);
    hx_mpw_str(&w, HX_S("to"));
    hx_mpw_str(&w, node, node_len);
    hx_mpw_str(&w, HX_S("party"));
    hx_mpw_str(&w, name.s, name.len);
    hx_mpw_str(&w, HX_S("moving"));
    hx_mpw_bool(&w, moving);
    return hx_reply_mpw(&w);
}

static void mpw_text(hx_mpw *w, const char *key, const hx_text *t) {
    hx_mpw_str(w, key, hx_strlen(key));
    hx_mpw_str(w, t->s, t->len);
}

static int32_t get(hx_mpr *args) {
    (void)args;
    hx_buf here;
    if (!hx_node_name_scratch(&here)) return hx_fail("get: cannot read the node name");
    hx_mpw w;
    hx_mpw_scratch(&w, 1024 + here.len + v_nlines * (4 * TEXT_CAP + 64));
    hx_mpw_map(&w, 10);
    mpw_text(&w, "id", &v_id);
    mpw_text(&w, "employee", &v_employee);
    mpw_text(&w, "dept", &v_dept);
    mpw_text(&w, "currency", &v_currency);
    hx_mpw_str(&w, HX_S("state"));
    hx_mpw_str(&w, state_names[v_state], hx_strlen(state_names[v_state]));
    mpw_text(&w, "reason", &v_reason);
    hx_mpw_str(&w, HX_S("total"));
    hx_mpw_int(&w, total());
    hx_mpw_str(&w, HX_S("lines"));
    hx_mpw_array(&w, v_nlines);
    for (uint32_t i = 0; i < v_nlines; i++) {
        hx_mpw_map(&w, 4);
        mpw_text(&w, "date", &v_lines[i].date);
        mpw_text(&w, "description", &v_lines[i].description);
        hx_mpw_str(&w, HX_S("amount"));
        hx_mpw_int(&w, v_lines[i].amount);
        mpw_text(&w, "currency", &v_lines[i].currency);
    }
    hx_mpw_str(&w, HX_S("node"));
    hx_mpw_str(&w, (const char *)here.ptr, here.len);
    hx_mpw_str(&w, HX_S("steps"));
    hx_mpw_uint(&w, v_nhistory);
    return hx_reply_mpw(&w);
}

static int32_t history(hx_mpr *args) {
    (void)args;
    hx_buf *entries = (hx_buf *)hx_scratch(v_nhistory * sizeof(hx_buf) + 8);
    if (!entries) return hx_fail("history: out of memory");
    uint32_t size = 8;
    for (uint32_t i = 0; i < v_nhistory; i++) {
        char key[6] = {'h', '/', 0, 0, 0, 0};
        uint32_t n = i;
        for (int k = 5; k >= 2; k--, n /= 10) key[k] = (char)('0' + n % 10);
        if (hx_kv_get(key, sizeof key, &entries[i]) != 0)
            return hx_failn("history: a step is missing from the atom KV: ", key, sizeof key);
        size += entries[i].len;
    }
    hx_mpw w;
    hx_mpw_scratch(&w, size);
    hx_mpw_array(&w, v_nhistory);
    for (uint32_t i = 0; i < v_nhistory; i++) hx_mpw_raw(&w, entries[i].ptr, entries[i].len);
    return hx_reply_mpw(&w);
}

static int32_t where(hx_mpr *args) {
    (void)args;
    hx_buf here;
    if (!hx_node_name_scratch(&here)) return hx_fail("where: cannot read the node name");
    return hx_reply_str((const char *)here.ptr, here.len);
}

HX_INIT(init);
HX_METHODS(HX_METHOD("add_line", add_line), HX_METHOD("fix_line", fix_line),
           HX_METHOD("submit", submit), HX_METHOD("approve", approve),
           HX_METHOD("reject", reject), HX_METHOD("disburse", disburse),
           HX_METHOD("archive", archive), HX_METHOD("route", route), HX_METHOD("get", get),
           HX_METHOD("history", history), HX_METHOD("where", where));
