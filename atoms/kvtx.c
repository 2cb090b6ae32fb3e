/* kvtx: the coordinator of the transactional KV's two-phase commit
 * (hermesx/apps/kv, docs/DESIGN.md section 11). One per client; created with
 * the every-call checkpoint policy, so a decision it replies with is durable
 * before the reply leaves, and before any shard is told to apply it.
 *
 * Its atom KV holds "c" + txid -> [shard, ...] for every transaction decided
 * committed and not yet applied everywhere, and "x" + txid -> reason for a
 * transaction another client resolved as aborted.
 *
 *   commit [txid, [[shard, [keys], [[key, op, value], ...]], ...]]
 *        -> "committed" (decided, durable), or fails "aborted: <why>" after
 *           telling every shard to abort. The shards apply on finish.
 *   finish txid        -> true when it applied a decided transaction at every shard
 *   finish_all         -> how many decided transactions it applied
 *   resolve [txid, [shards]]
 *        -> "committed" (and applies it) or "aborted": a transaction whose
 *           outcome its client never learnt, or whose prepared lock blocks
 *           another client. No decision recorded means none was ever replied,
 *           so it is aborted, and a later commit of that txid fails.
 *   pending            -> number of decided transactions not yet applied
 */
#include "hx.h"

#define TXID_MAX 128
/* Shards one transaction may write through: the fan-outs use one future each. */
#define PARTS_MAX 32

static bool tx_key(char tag, const char *txid, uint32_t len, hx_buf *out) {
    uint8_t *p = (uint8_t *)hx_scratch(len + 1);
    if (!p) return false;
    p[0] = (uint8_t)tag;
    memcpy(p + 1, txid, len);
    out->ptr = p;
    out->len = len + 1;
    return true;
}

/* One call of a fan-out: the shard and the arguments it gets. */
typedef struct {
    const char *shard;
    uint32_t shard_len;
    const uint8_t *args;
    uint32_t args_len;
} call_spec;

/* Calls `method` at every shard at once and waits for all of them. 0 when
 * all succeeded; else 1, with the first failure's message in err and its
 * index in *failed. */
typedef struct {
    bool done;
    int32_t status;
    hx_buf out;
} outcome;

static void on_done(void *ctx, int32_t id, int32_t status, const uint8_t *ptr, uint32_t len) {
    (void)id;
    outcome *o = (outcome *)ctx;
    o->done = true;
    o->status = status;
    o->out.ptr = ptr;
    o->out.len = len;
    hx_retain(); /* read after this handler returns */
}

static int32_t fan_out(const call_spec *calls, uint32_t n, const char *method, hx_buf *err,
                       uint32_t *failed) {
    static const char not_started[] = "the call could not start";
    static const char stopping[] = "the coordinator is stopping";
    outcome results[PARTS_MAX];
    uint32_t method_len = hx_strlen(method);
    /* A call that ended at its deadline while waiting here left handlers
     * pointing into its gone stack: drop them before their late futures come. */
    for (int i = 0; i < HX_MAX_FUTURES; i++)
        if (hx__futures[i].fn == on_done) hx__futures[i].id = 0;
    /* Every handler is registered before the first wait: a future that
     * completes while another is awaited must find its handler. */
    for (uint32_t i = 0; i < n; i++) {
        results[i].done = true;
        results[i].status = 1;
        results[i].out.ptr = (const uint8_t *)not_started;
        results[i].out.len = sizeof not_started - 1;
        int32_t id = hx_call_async(calls[i].shard, calls[i].shard_len, method, method_len,
                                   calls[i].args, calls[i].args_len);
        if (id > 0 && hx_on_future(id, on_done, &results[i]) == 0) results[i].done = false;
    }
    for (uint32_t i = 0; i < n; i++) {
        while (!results[i].done) {
            if (hx_recv(-1) < 0) {
                results[i].done = true;
                results[i].status = 1;
                results[i].out.ptr = (const uint8_t *)stopping;
                results[i].out.len = sizeof stopping - 1;
            }
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        if (results[i].status != 0) {
            *err = results[i].out;
            *failed = i;
            return 1;
        }
    }
    return 0;
}

/* Sends `method` (commit or abort) with the txid to every shard of the
 * msgpack list; 0 when all took it. */
static int32_t tell_all(const uint8_t *shards, uint32_t shards_len, const char *method,
                        const char *txid, uint32_t txid_len, hx_buf *err) {
    hx_mpr r;
    uint32_t n, failed;
    call_spec calls[PARTS_MAX];
    hx_mpw w;
    hx_mpw_scratch(&w, txid_len + 8);
    hx_mpw_str(&w, txid, txid_len);
    hx_mpr_init(&r, shards, shards_len);
    if (w.err || !hx_mpr_array(&r, &n) || n > PARTS_MAX) return -1;
    for (uint32_t i = 0; i < n; i++) {
        if (!hx_mpr_str(&r, &calls[i].shard, &calls[i].shard_len)) return -1;
        calls[i].args = w.p;
        calls[i].args_len = w.len;
    }
    return fan_out(calls, n, method, err, &failed);
}

/* Applies a decided transaction everywhere, then forgets it. */
static int32_t apply_decided(const char *txid, uint32_t txid_len, hx_buf *err) {
    hx_buf c, shards;
    if (!tx_key('c', txid, txid_len, &c)) return -1;
    if (hx_kv_get(c.ptr, c.len, &shards) != 0) return 2;
    int32_t s = tell_all(shards.ptr, shards.len, "commit", txid, txid_len, err);
    if (s == 0) hx_kv_del(c.ptr, c.len);
    return s;
}

static int32_t commit(hx_mpr *args) {
    uint32_t n, nparts;
    const char *txid;
    uint32_t txid_len;
    hx_buf c, x, seen;
    if (!hx_mpr_array(args, &n) || n != 2 || !hx_mpr_str(args, &txid, &txid_len) ||
        txid_len == 0 || txid_len > TXID_MAX || !hx_mpr_array(args, &nparts) || nparts == 0)
        return hx_fail("commit: expected [txid, [[shard, [keys], [writes]], ...]]");
    if (!tx_key('c', txid, txid_len, &c) || !tx_key('x', txid, txid_len, &x))
        return hx_fail("commit: out of memory");
    if (hx_kv_get(x.ptr, x.len, &seen) == 0) {
        hx__sys_reply(seen.ptr, seen.len);
        return 1;
    }
    if (hx_kv_get(c.ptr, c.len, &seen) == 0) return hx_reply_str(HX_S("committed"));
    /* Phase one: every shard prepares (its locks become prepared), all at once. */
    if (nparts > PARTS_MAX) return hx_fail("commit: at most 32 shards in one transaction");
    hx_mpw shards;
    hx_mpw_scratch(&shards, args->len + 8);
    hx_mpw_array(&shards, nparts);
    call_spec calls[PARTS_MAX];
    for (uint32_t i = 0; i < nparts; i++) {
        uint32_t three;
        const uint8_t *keys, *writes;
        uint32_t keys_len, writes_len;
        if (!hx_mpr_array(args, &three) || three != 3 ||
            !hx_mpr_str(args, &calls[i].shard, &calls[i].shard_len) ||
            !hx_mpr_raw(args, &keys, &keys_len) || !hx_mpr_raw(args, &writes, &writes_len))
            return hx_fail("commit: a participant must be [shard, [keys], [writes]]");
        hx_mpw_str(&shards, calls[i].shard, calls[i].shard_len);
        hx_mpw w;
        hx_mpw_scratch(&w, txid_len + keys_len + writes_len + 16);
        hx_mpw_array(&w, 3);
        hx_mpw_str(&w, txid, txid_len);
        hx_mpw_raw(&w, keys, keys_len);
        hx_mpw_raw(&w, writes, writes_len);
        if (w.err) return hx_fail("commit: out of memory");
        calls[i].args = w.p;
        calls[i].args_len = w.len;
    }
    hx_buf why = {0, 0};
    uint32_t failed_at = 0;
    bool failed = fan_out(calls, nparts, "prepare", &why, &failed_at) != 0;
    const char *failed_shard = calls[failed_at].shard;
    uint32_t failed_len = calls[failed_at].shard_len;
    if (shards.err) return hx_fail("commit: out of memory");
    if (failed) {
        hx_buf ignored;
        tell_all(shards.p, shards.len, "abort", txid, txid_len, &ignored);
        /* A shard's own abort ("<kind>: atom ...: prepare failed: aborted: why")
         * is handed on from its "aborted: "; anything else is wrapped. */
        const char *prefix = "aborted: ";
        uint32_t p_len = hx_strlen(prefix);
        for (uint32_t at = 0; at + p_len <= why.len; at++) {
            if (memcmp(why.ptr + at, prefix, p_len) == 0) {
                hx__sys_reply(why.ptr + at, why.len - at);
                return 1;
            }
        }
        hx_mpw m;
        hx_mpw_scratch(&m, why.len + failed_len + 48);
        hx_mpw_raw(&m, HX_S("aborted: shard "));
        hx_mpw_raw(&m, failed_shard, failed_len);
        hx_mpw_raw(&m, HX_S(" did not prepare: "));
        hx_mpw_raw(&m, why.ptr, why.len);
        hx__sys_reply(m.p, m.len);
        return 1;
    }
    /* The decision. The every-call checkpoint stores it before this reply
     * leaves; shards apply it only on finish, after that. */
    if (hx_kv_put(c.ptr, c.len, shards.p, shards.len) != 0)
        return hx_fail("commit: the atom KV refused the decision");
    return hx_reply_str(HX_S("committed"));
}

static int32_t finish(hx_mpr *args) {
    const char *txid;
    uint32_t txid_len;
    hx_buf err;
    hx_mpr_unwrap1(args);
    if (!hx_mpr_str(args, &txid, &txid_len) || txid_len == 0 || txid_len > TXID_MAX)
        return hx_fail("finish: expected a txid (str)");
    int32_t s = apply_decided(txid, txid_len, &err);
    if (s == 2) {
        hx_reply_bool(false);
        return 0;
    }
    if (s != 0) return hx_failn("finish: a shard did not apply the commit: ", err.ptr, err.len);
    hx_reply_bool(true);
    return 0;
}

static int32_t finish_all(hx_mpr *args) {
    (void)args;
    hx_buf raw;
    int32_t n = hx_kv_keys(HX_S("c"), &raw);
    if (n < 0) return hx_fail("finish_all: the atom KV refused");
    hx_mpr r;
    uint32_t count;
    int64_t done = 0;
    hx_mpr_init(&r, raw.ptr, raw.len);
    hx_mpr_array(&r, &count);
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *k;
        uint32_t k_len;
        hx_buf err;
        if (!hx_mpr_bytes(&r, &k, &k_len) || k_len < 2) break;
        if (apply_decided((const char *)k + 1, k_len - 1, &err) == 0) done++;
    }
    hx_reply_int(done);
    return 0;
}

static int32_t resolve(hx_mpr *args) {
    uint32_t n;
    const char *txid;
    uint32_t txid_len;
    const uint8_t *shards;
    uint32_t shards_len;
    hx_buf c, x, seen, err;
    if (!hx_mpr_array(args, &n) || n != 2 || !hx_mpr_str(args, &txid, &txid_len) ||
        txid_len == 0 || txid_len > TXID_MAX || !hx_mpr_raw(args, &shards, &shards_len))
        return hx_fail("resolve: expected [txid, [shards]]");
    if (!tx_key('c', txid, txid_len, &c) || !tx_key('x', txid, txid_len, &x))
        return hx_fail("resolve: out of memory");
    if (hx_kv_get(c.ptr, c.len, &seen) == 0) {
        if (apply_decided(txid, txid_len, &err) != 0)
            return hx_failn("resolve: a shard did not apply the commit: ", err.ptr, err.len);
        return hx_reply_str(HX_S("committed"));
    }
    static const char reason[] = "aborted: its outcome was resolved as aborted (presumed abort)";
    if (hx_kv_put(x.ptr, x.len, HX_S(reason)) != 0) return hx_fail("resolve: the KV refused");
    if (tell_all(shards, shards_len, "abort", txid, txid_len, &err) != 0)
        return hx_failn("resolve: a shard did not abort: ", err.ptr, err.len);
    return hx_reply_str(HX_S("aborted"));
}

static int32_t pending(hx_mpr *args) {
    (void)args;
    hx_buf raw;
    int32_t n = hx_kv_keys(HX_S("c"), &raw);
    if (n < 0) return hx_fail("pending: the atom KV refused");
    hx_reply_int(n);
    return 0;
}

HX_METHODS(HX_METHOD("commit", commit), HX_METHOD("finish", finish),
           HX_METHOD("finish_all", finish_all), HX_METHOD("resolve", resolve),
           HX_METHOD("pending", pending));
