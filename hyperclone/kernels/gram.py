"""Symmetric products for Newton–Schulz: out = alpha·X·Xᵀ + beta·C, batched, one triangle computed.

X·Xᵀ is symmetric, so only the blocks on and above the diagonal are multiplied and each is stored
twice (itself and its transpose): about half the FLOPs of a plain matmul (flash-muon measures 1.5–2x
on this step). Newton–Schulz needs it twice per iteration: G = X·Xᵀ, then b·G + c·G·G (G·G = G·Gᵀ
because G is symmetric, so C = G is symmetric too, as the mirrored store requires).
"""
from __future__ import annotations

import torch


def gram_reference(x: torch.Tensor, c: torch.Tensor | None = None, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """alpha·X·Xᵀ + beta·C over the last two dims of [..., M, K] (C: [..., M, M], symmetric)."""
    out = alpha * (x @ x.mT)
    return out if c is None else out + beta * c


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def gram_kernel(x_ptr, c_ptr, out_ptr, M, K, sxb, sxm, sxk, scb, scm, scn, sob, som, son, alpha, beta,
                    HAS_C: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr):
        pid_m, pid_n, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        if pid_m > pid_n:  # below the diagonal: the mirror of a block above it
            return
        rm = pid_m * BLOCK + tl.arange(0, BLOCK)
        rn = pid_n * BLOCK + tl.arange(0, BLOCK)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            a = tl.load(x_ptr + b * sxb + rm[:, None] * sxm + kk[None, :] * sxk, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            bt = tl.load(x_ptr + b * sxb + rn[None, :] * sxm + kk[:, None] * sxk, mask=(rn[None, :] < M) & (kk[:, None] < K), other=0.0)
            if UPCAST:  # Triton's CPU interpreter multiplies bfloat16 tiles wrongly; a GPU keeps them for the tensor cores
                a, bt = a.to(tl.float32), bt.to(tl.float32)
            acc += tl.dot(a, bt)
        acc = acc * alpha
        inside = (rm[:, None] < M) & (rn[None, :] < M)
        if HAS_C:
            acc += beta * tl.load(c_ptr + b * scb + rm[:, None] * scm + rn[None, :] * scn, mask=inside, other=0.0).to(tl.float32)
        out = acc.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + b * sob + rm[:, None] * som + rn[None, :] * son, out, mask=inside)
        if pid_m != pid_n:
            tl.store(out_ptr + b * sob + rn[:, None] * som + rm[None, :] * son, tl.trans(out),
                     mask=(rn[:, None] < M) & (rm[None, :] < M))

    # On a GPU the tile sizes are tuned per (M, K) once per process; Hopper's tensor cores want
    # 128-wide tiles and a few pipeline stages, small matrices want small tiles to fill the SMs.
    configs = [triton.Config({"BLOCK": b, "BLOCK_K": bk}, num_warps=w, num_stages=s)
               for b, bk, w, s in ((128, 64, 8, 3), (128, 64, 4, 4), (128, 32, 8, 4), (64, 64, 4, 4), (64, 32, 4, 3))]
    return gram_kernel, triton.autotune(configs, key=["M", "K"])(gram_kernel)


_KERNELS = None


def gram_triton(x: torch.Tensor, c: torch.Tensor | None = None, alpha: float = 1.0, beta: float = 0.0,
                block: int | None = None, block_k: int = 32) -> torch.Tensor:
    """The Triton kernel for `gram_reference` (on CUDA, or on CPU under TRITON_INTERPRET=1 for tests).

    `block` fixes the tile (the interpreter tests use small ones); None lets the autotuner choose."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _kernel()
    import triton

    batch_shape, (m, k) = x.shape[:-2], x.shape[-2:]
    x3 = x.reshape(-1, m, k)
    out = torch.empty((x3.shape[0], m, m), dtype=x.dtype, device=x.device)
    c3 = c.reshape(-1, m, m) if c is not None else out  # a placeholder pointer when there is no C
    args = (x3, c3, out, m, k, *x3.stride(), *c3.stride(), *out.stride(), float(alpha), float(beta))
    fixed, tuned = _KERNELS
    if block is None and x.is_cuda:
        tuned[lambda meta: (triton.cdiv(m, meta["BLOCK"]), triton.cdiv(m, meta["BLOCK"]), x3.shape[0])](
            *args, HAS_C=c is not None, UPCAST=False)
    else:
        block = block or 64
        fixed[(triton.cdiv(m, block), triton.cdiv(m, block), x3.shape[0])](
            *args, HAS_C=c is not None, BLOCK=block, BLOCK_K=block_k, UPCAST=not x.is_cuda)
    return out.reshape(*batch_shape, m, m)
