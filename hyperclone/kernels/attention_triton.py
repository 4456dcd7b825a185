"""The Triton kernels of hyperclone.kernels.attention and .max_logit, imported only when a CUDA tensor (or
the interpreter tests) asks for them, so CPU training never imports Triton. Each program holds one tile of queries (or of
keys, for dK/dV) and streams the other side; scores never leave registers."""
import triton
import triton.language as tl


@triton.jit
def _visible(rq, rk, Lq, Lk, window, WINDOW: tl.constexpr):
    pos = rq + (Lk - Lq)  # each query's position among the keys
    allowed = (rk[None, :] <= pos[:, None]) & (rk[None, :] < Lk) & (rq[:, None] < Lq)
    if WINDOW:
        allowed &= rk[None, :] > pos[:, None] - window
    return allowed


@triton.jit
def _key_range(q0, BLOCK_Q, BLOCK_K, Lq, Lk, window, WINDOW: tl.constexpr):
    """Key tiles a query block [q0, q0 + BLOCK_Q) can see: none past its last query, none before the
    first query's window."""
    hi = tl.minimum(Lk, q0 + BLOCK_Q + (Lk - Lq))
    lo = 0
    if WINDOW:
        lo = tl.maximum(0, q0 + (Lk - Lq) - window + 1)
        lo = (lo // BLOCK_K) * BLOCK_K
    return lo, hi


@triton.jit
def _tile(ptr, rows, row_stride, n, rd, D, UPCAST: tl.constexpr):
    """Rows `rows` (those below n) of one head's [rows, D] slice at `ptr`, zeros elsewhere; in float32 under
    the CPU interpreter, which multiplies half-precision tiles wrongly."""
    t = tl.load(ptr + rows[:, None] * row_stride + rd[None, :], mask=(rows[:, None] < n) & (rd[None, :] < D), other=0.0)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def _rows(lse_ptr, delta_ptr, bh, rq, Lq):
    """A query block's saved base-2 log-sum-exp and rowsum(dO ∘ O), as both backward kernels read them."""
    lse = tl.load(lse_ptr + bh * Lq + rq, mask=rq < Lq, other=float("inf"))
    delta = tl.load(delta_ptr + bh * Lq + rq, mask=rq < Lq, other=0.0)
    return lse, delta


@triton.jit
def _p_and_ds(q, k, v, do, lse, delta, c, rq, rk, Lq, Lk, window, WINDOW: tl.constexpr):
    """The step both backward kernels share: the probabilities recomputed from the log-sum-exp (0 where a
    key is not visible) and dS = P ∘ (dO·Vᵀ − δ), for one tile of queries against one of keys."""
    p = tl.where(_visible(rq, rk, Lq, Lk, window, WINDOW), tl.exp2(tl.dot(q, tl.trans(k)) * c - lse[:, None]), 0.0)
    return p, p * (tl.dot(do, tl.trans(v)) - delta[:, None])


@triton.jit
def forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, max_ptr, H, KVH, Lq, Lk, D,
                   sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol,
                   scale, window, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                   WINDOW: tl.constexpr, UPCAST: tl.constexpr):
    pid_q, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    kvh = h // (H // KVH)  # grouped-query attention: the kv head this query head reads
    rq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    rd = tl.arange(0, BLOCK_D)
    dmask = rd[None, :] < D
    q = _tile(q_ptr + b * sqb + h * sqh, rq, sql, Lq, rd, D, UPCAST)
    c = scale * 1.4426950408889634  # scores to base-2 exponents
    m = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)  # running max of q·k (unscaled)
    l = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    lo, hi = _key_range(pid_q * BLOCK_Q, BLOCK_Q, BLOCK_K, Lq, Lk, window, WINDOW)
    for k0 in range(lo, hi, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k = _tile(k_ptr + b * skb + kvh * skh, rk, skl, Lk, rd, D, UPCAST)
        v = _tile(v_ptr + b * svb + kvh * svh, rk, svl, Lk, rd, D, UPCAST)
        s = tl.where(_visible(rq, rk, Lq, Lk, window, WINDOW), tl.dot(q, tl.trans(k)), float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new) * c  # a row that has seen nothing yet stays empty
        p = tl.exp2(s * c - shift[:, None])
        alpha = tl.exp2(m * c - shift)
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    seen = l > 0
    out = acc / tl.where(seen, l, 1.0)[:, None]
    tl.store(o_ptr + b * sob + h * soh + rq[:, None] * sol + rd[None, :], out.to(o_ptr.dtype.element_ty),
             mask=(rq[:, None] < Lq) & dmask)
    # base-2 log-sum-exp for the backward; +inf where a row saw no key, so its probabilities are 0
    tl.store(lse_ptr + bh * Lq + rq, tl.where(seen, m * c + tl.log2(tl.where(seen, l, 1.0)), float("inf")), mask=rq < Lq)
    tl.atomic_max(max_ptr + bh, tl.max(m, axis=0) * scale)  # the exact max, scaled as the scores are


@triton.jit
def dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, H, KVH, Lq, Lk, D,
                sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sdb, sdh, sdl, sgb, sgh, sgl,
                scale, window, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                WINDOW: tl.constexpr, UPCAST: tl.constexpr):
    pid_k, bkv = tl.program_id(0), tl.program_id(1)
    b, kvh = bkv // KVH, bkv % KVH
    group = H // KVH
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rd = tl.arange(0, BLOCK_D)
    dmask = rd[None, :] < D
    kmask = (rk[:, None] < Lk) & dmask
    k = _tile(k_ptr + b * skb + kvh * skh, rk, skl, Lk, rd, D, UPCAST)
    v = _tile(v_ptr + b * svb + kvh * svh, rk, svl, Lk, rd, D, UPCAST)
    c = scale * 1.4426950408889634
    dk = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
    # queries that see this key block: from the first whose position reaches it, to the last whose window does
    q_lo = tl.maximum(0, pid_k * BLOCK_K - (Lk - Lq))
    q_lo = (q_lo // BLOCK_Q) * BLOCK_Q
    q_hi = Lq
    if WINDOW:
        q_hi = tl.minimum(Lq, pid_k * BLOCK_K + BLOCK_K - 1 + window - (Lk - Lq))
    for h in range(kvh * group, kvh * group + group):
        for q0 in range(q_lo, q_hi, BLOCK_Q):
            rq = q0 + tl.arange(0, BLOCK_Q)
            q = _tile(q_ptr + b * sqb + h * sqh, rq, sql, Lq, rd, D, UPCAST)
            do = _tile(do_ptr + b * sdb + h * sdh, rq, sdl, Lq, rd, D, UPCAST)
            lse, delta = _rows(lse_ptr, delta_ptr, b * H + h, rq, Lq)
            p, ds = _p_and_ds(q, k, v, do, lse, delta, c, rq, rk, Lq, Lk, window, WINDOW)  # [queries, keys]
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(dk_ptr + b * sgb + kvh * sgh + rk[:, None] * sgl + rd[None, :], (dk * scale).to(dk_ptr.dtype.element_ty), mask=kmask)
    tl.store(dv_ptr + b * sgb + kvh * sgh + rk[:, None] * sgl + rd[None, :], dv.to(dv_ptr.dtype.element_ty), mask=kmask)


@triton.jit
def dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, H, KVH, Lq, Lk, D,
              sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sdb, sdh, sdl, sgb, sgh, sgl,
              scale, window, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
              WINDOW: tl.constexpr, UPCAST: tl.constexpr):
    pid_q, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    kvh = h // (H // KVH)
    rq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    rd = tl.arange(0, BLOCK_D)
    dmask = rd[None, :] < D
    qmask = (rq[:, None] < Lq) & dmask
    q = _tile(q_ptr + b * sqb + h * sqh, rq, sql, Lq, rd, D, UPCAST)
    do = _tile(do_ptr + b * sdb + h * sdh, rq, sdl, Lq, rd, D, UPCAST)
    lse, delta = _rows(lse_ptr, delta_ptr, bh, rq, Lq)
    c = scale * 1.4426950408889634
    dq = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    lo, hi = _key_range(pid_q * BLOCK_Q, BLOCK_Q, BLOCK_K, Lq, Lk, window, WINDOW)
    for k0 in range(lo, hi, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k = _tile(k_ptr + b * skb + kvh * skh, rk, skl, Lk, rd, D, UPCAST)
        v = _tile(v_ptr + b * svb + kvh * svh, rk, svl, Lk, rd, D, UPCAST)
        _, ds = _p_and_ds(q, k, v, do, lse, delta, c, rq, rk, Lq, Lk, window, WINDOW)
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(dq_ptr + b * sgb + h * sgh + rq[:, None] * sgl + rd[None, :], (dq * scale).to(dq_ptr.dtype.element_ty), mask=qmask)


@triton.jit
def max_logit_kernel(q_ptr, k_ptr, out_ptr, H, KVH, Lq, Lk, D, sqb, sqh, sql, skb, skh, skl, scale, window,
                     BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr,
                     UPCAST: tl.constexpr):
    """The max-only pass (hyperclone.kernels.max_logit): the forward's running row maximum, no softmax."""
    pid_q, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    kvh = h // (H // KVH)
    rq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    rd = tl.arange(0, BLOCK_D)
    q = _tile(q_ptr + b * sqb + h * sqh, rq, sql, Lq, rd, D, UPCAST)
    best = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
    lo, hi = _key_range(pid_q * BLOCK_Q, BLOCK_Q, BLOCK_K, Lq, Lk, window, WINDOW)
    for k0 in range(lo, hi, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k = _tile(k_ptr + b * skb + kvh * skh, rk, skl, Lk, rd, D, UPCAST)
        s = tl.where(_visible(rq, rk, Lq, Lk, window, WINDOW), tl.dot(q, tl.trans(k)), float("-inf"))
        best = tl.maximum(best, tl.max(s, axis=1))
    tl.atomic_max(out_ptr + bh, tl.max(best, axis=0) * scale)  # one running max per (batch, head)


def _tuned(kernel):
    """Tiles chosen per shape once per process on a GPU."""
    configs = [triton.Config({"BLOCK_Q": bq, "BLOCK_K": bk}, num_warps=w, num_stages=s)
               for bq, bk, w, s in ((128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 128, 4, 2))]
    return triton.autotune(configs, key=["Lq", "Lk", "D", "H", "KVH", "WINDOW"])(kernel)


# name: (the kernel with fixed tiles, the autotuned one)
KERNELS = {"forward": (forward_kernel, _tuned(forward_kernel)), "dkdv": (dkdv_kernel, _tuned(dkdv_kernel)),
           "dq": (dq_kernel, _tuned(dq_kernel)), "max_logit": (max_logit_kernel, _tuned(max_logit_kernel))}
