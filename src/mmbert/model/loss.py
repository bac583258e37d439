"""Masked-LM loss fused with the decoder, chunked over rows (the idea of Liger-Kernel's fused linear
cross-entropy, in plain PyTorch).

With a 256k vocabulary the decoder's logits dominate an MLM training step: 2,565 predicted tokens x 256,000
classes is 657M floats (2.6 GB in fp32), written, up-cast, log-softmaxed and read back for the gradient.
Here each chunk of rows computes its logits, log-sum-exp, loss *and* gradients (softmax - one-hot) at once, so
the full logits never exist; the forward returns the mean loss and keeps only the gradients for the backward.
Matmuls run in ``compute_dtype`` (bf16 under autocast), the softmax in fp32, as the unfused path does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk: int, compute_dtype: torch.dtype):
        m = hidden.shape[0]
        w = weight.to(compute_dtype)
        needs = ctx.needs_input_grad
        grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if needs[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs[1] else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None and needs[2] else None
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        for start in range(0, m, chunk):
            h = hidden[start : start + chunk].to(compute_dtype)  # (c, H)
            y = labels[start : start + chunk]
            rows = torch.arange(len(y), device=y.device)
            logits = h @ w.T  # (c, V) in compute_dtype
            if bias is not None:
                logits = logits.float() + bias.float()
            # d(mean loss)/d(logits) * m = softmax - one-hot. One softmax pass (fp32 out) gives both the gradient and
            # the loss, -log p[y]: logsumexp + sub + exp took 1.7x as long on CPU (614 x 16k rows).
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            total += _nll_from_probs(probs, logits, rows, y).sum()
            probs[rows, y] -= 1.0
            if grad_b is not None:
                grad_b += probs.sum(dim=0)
            g = probs.to(compute_dtype)
            if grad_h is not None:
                grad_h[start : start + chunk] = (g @ w).to(hidden.dtype)
            if grad_w is not None:
                grad_w.addmm_(g.T, h, out_dtype=torch.float32) if _ADDMM_OUT_DTYPE else grad_w.add_((g.T @ h).float())
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.layout = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.m, ctx.weight_dtype, ctx.bias_dtype = m, weight.dtype, None if bias is None else bias.dtype
        return (total / m).to(torch.float32)

    @staticmethod
    def backward(ctx, grad_loss):
        saved = iter(ctx.saved_tensors)
        scale = grad_loss / ctx.m
        has_h, has_w, has_b = ctx.layout
        grad_h = next(saved) * scale.to(torch.float32) if has_h else None
        grad_w = (next(saved) * scale).to(ctx.weight_dtype) if has_w else None
        grad_b = (next(saved) * scale).to(ctx.bias_dtype) if has_b else None
        return grad_h, grad_w, grad_b, None, None, None


def _nll_from_probs(probs: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log p[y] per row; rows whose p[y] underflowed (a logit 87+ nat below the log-sum-exp) are recomputed from
    the logits exactly, so a confidently wrong prediction never reads as an infinite loss."""
    p_y = probs[rows, y]
    nll = -torch.log(p_y.double())
    tiny = p_y < 1e-30
    if bool(tiny.any()):
        exact = torch.log_softmax(logits[tiny].float(), dim=-1).gather(1, y[tiny, None]).squeeze(1)
        nll[tiny] = -exact.double()
    return nll


def token_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                        chunk: int | None = None) -> torch.Tensor:
    """(M,) float32 cross-entropy of each row of ``hidden @ weight.T + bias`` against ``labels``, without gradients
    and without the (M, V) logits in fp32 at once (evaluation: ``eval.heldout``). Matmuls in the autocast dtype
    under autocast (as the decoder's forward would run), else in ``hidden``'s; the log-sum-exp in fp32.

    In chunks of ~8M logits (32 MB in fp32), each through ``cross_entropy``: 1,202 x 16k rows in bf16 on 2 cores
    took 45-52 ms (chunks of 256-1,202 rows alike) against 57-65 ms as ``logsumexp(z) - z[y]`` (several passes
    where ``cross_entropy``'s log-softmax is one) and 120-140 ms as one fp32 block before ``import mmbert`` kept
    large freed blocks (``mmbert.process``: each fresh block was page-faulted in again)."""
    chunk = chunk or max(EVAL_MIN_ROWS, EVAL_CHUNK_LOGITS // weight.shape[0])
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    w_t = weight.to(dtype).T
    b = None if bias is None else bias.float()
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        for start in range(0, hidden.shape[0], chunk):
            logits = (hidden[start : start + chunk].to(dtype) @ w_t).float()
            if b is not None:
                logits += b
            out[start : start + chunk] = F.cross_entropy(logits, labels[start : start + chunk], reduction="none")
    return out


EVAL_CHUNK_LOGITS = 2**23  # token_cross_entropy's chunk: 32 MB of fp32 logits
EVAL_MIN_ROWS = 64  # ... but never so few rows that the matmul starves (a 256k vocabulary: 64 rows, 64 MB)


def _addmm_supports_out_dtype() -> bool:
    try:
        torch.zeros(1, 1).addmm_(torch.zeros(1, 1, dtype=torch.bfloat16), torch.zeros(1, 1, dtype=torch.bfloat16),
                                 out_dtype=torch.float32)
        return True
    except Exception:  # noqa: BLE001 - older torch: accumulate through a temporary
        return False


_ADDMM_OUT_DTYPE = _addmm_supports_out_dtype()


# Rows per chunk: about 2^28 logits (1 GiB in fp32). Measured on a 2-core CPU, 2,565 rows x 256k vocab in bf16:
# unfused 8.2 s forward+backward, chunks of 256 rows 6.8 s, of 1,024 rows 5.7 s.
CHUNK_LOGITS = 2**28


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                         chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``labels`` (all valid), without materialising
    the (M, V) logits. Under CPU/CUDA autocast the matmuls run in the autocast dtype."""
    chunk = chunk or max(1, CHUNK_LOGITS // weight.shape[0])
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk, compute_dtype)
