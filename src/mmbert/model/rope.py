"""Rotary position embeddings (RoFormer; the "rotate half" layout of GPT-NeoX and transformers' ModernBERT).

Global and local layers use different thetas, so a forward computes one (cos, sin) pair per theta from the
tokens' positions within their own sequence, and every layer of that kind reuses it. The rotation is
applied to the two halves of each head directly, without transformers' ``cat((-x2, x1))`` temporary.
"""

from __future__ import annotations

import torch


def inverse_frequencies(head_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each of shape ``position_ids.shape + (head_dim // 2,)`` in float32."""
    freqs = position_ids.to(torch.float32)[..., None] * inverse_frequencies(head_dim, theta, position_ids.device)
    return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., T, [heads,] head_dim) by position; ``cos``/``sin`` broadcast over the heads axis.

    Computed in float32 and cast back, as transformers does, so bf16 results match its rounding.
    """
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    if (torch.is_grad_enabled() and x.requires_grad) or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        # autograd, and exporters, which do not record writes into slices of an ``out=`` buffer
        out = torch.cat((torch.addcmul(x1 * cos, x2, sin, value=-1), torch.addcmul(x2 * cos, x1, sin)), dim=-1)
    else:  # inference: both halves written into one buffer by fused multiply-adds, no temporaries
        out = torch.empty_like(xf)
        torch.mul(x1, cos, out=out[..., :half]).addcmul_(x2, sin, value=-1)
        torch.mul(x2, cos, out=out[..., half:]).addcmul_(x1, sin)
    return out.to(x.dtype)
