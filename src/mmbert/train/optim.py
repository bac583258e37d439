"""Optimizer and numerics: AdamW parameter groups, gradient clipping, mixed precision.

Choices:
- AdamW with decoupled weight decay (Loshchilov & Hutter) on matrices only: norms, biases and embeddings
  get none, as in ModernBERT/mmBERT. The tied decoder weight *is* the embedding, so it gets none either.
- Parameters are grouped by name, and the groups are fixed for the whole run, so the optimizer state
  carries over phase boundaries (context extension changes no parameter).
- Precision ``auto`` is bf16 autocast on CUDA with bf16 support and on CPUs with native bf16 math
  (AMX or AVX512-BF16); elsewhere fp32, because emulated bf16 is slower than fp32. Weights, gradients
  and optimizer state stay fp32; the loss is computed in fp32 by the model.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from mmbert.train.config import OptimizerSection


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases (1-D) and embedding tables get no weight decay."""
    return param.ndim < 2 or "norm" in name or "embeddings" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, other = [], []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (other if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": other, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: nn.Module, cfg: OptimizerSection) -> torch.optim.AdamW:
    # foreach=False: the same kernels on every run, so a resumed run repeats the exact numbers
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             foreach=False)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm (works on DDP and FSDP2 DTensor parameters); returns the norm before."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm <= 0:
        norms = [p.grad.detach().float().norm() for p in params]
        total = torch.stack(norms).norm() if norms else torch.zeros(())
        return total.full_tensor() if hasattr(total, "full_tensor") else total
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False)
    return total.full_tensor() if hasattr(total, "full_tensor") else total


def cpu_supports_bf16() -> bool:
    """Native bf16 math on this CPU: AMX or AVX512-BF16 (read from /proc/cpuinfo, then torch's capability)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
        if "amx_bf16" in flags or "avx512_bf16" in flags:
            return True
    except OSError:
        pass
    return "AMX" in str(torch.backends.cpu.get_cpu_capability())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device does bf16 natively, else ``fp32``; explicit choices pass through."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
