"""Inference precision: ``fp32``, ``bf16``, ``int8`` (and ``auto``) applied to a loaded encoder, in place.

    model = MmBertModel.from_pretrained("ckpt/", precision="bf16")   # same forward, same output dtype (fp32)

Choices, each measured on a 2-core Sapphire Rapids (AMX) CPU, torch 2.13 (benchmarks/README.md):
- ``bf16`` runs the encoder's forward under bf16 autocast, as training does: the weights stay fp32, each
  matmul runs in bf16 (AMX), the residual stream, norms and output stay fp32. Measured against casting the
  weights once (``model.to(bfloat16)``, this mode's first form; ``benchmarks/cpu_peers.py``, mmbert-small,
  2026-12-03, alone): autocast 2,487 vs bf16 weights 2,357 tokens/s, and min cosine to fp32 over the case's 32
  texts 1.000000 vs 0.99917 (max |diff| of the hidden states 8e-4 vs 9e-2): the bf16 residual stream cost three
  orders of magnitude of fidelity and bought no speed, so it went. The cost: fp32 weights in memory.
- ``int8`` replaces the linear layers of the encoder layers with :class:`Int8Linear`: weights int8 per
  output channel (symmetric), activations quantised per tensor at run time (dynamic, the scheme of
  onnxruntime's dynamic quantiser and of ``torch.ao``'s ``quantize_dynamic``), one oneDNN
  ``qlinear_pointwise`` call (AMX / VNNI int8) that writes bf16 (fp32 on CPUs without bf16). Everything
  else runs as in ``bf16`` (or fp32 there), under autocast with the residual stream in fp32. The embeddings
  and norms are never quantised, and
  ``INT8_KEEP`` (the MLP output projections ``mlp.Wo``, whose inputs are the GeGLU products with the widest
  range) stays in bf16/fp32: per-tensor scales lose most on heavy-tailed inputs.
  ``torch.ao.quantization.quantize_dynamic`` still exists in torch 2.13 (deprecated, engines ``x86``,
  ``fbgemm``, ``onednn``); its error is twice ours (0.025 vs 0.014 relative per linear). Per linear
  (benchmarks/int8_linears.py, loaded machine) int8 was no faster than bf16 on this AMX CPU; over a whole
  mmbert-small forward (``cpu_peers.py``, alone, 2026-12-03) int8 made 4,234 tokens/s against bf16's 3,137, at a
  max |diff| to fp32 of 1.9e-3 against bf16's 7e-4 (onnxruntime's int8: 1,705 tokens/s, 7e-3). ``auto`` picks bf16, the more faithful one;
  ``int8`` is the fastest mode here and the one for CPUs with VNNI but no native bf16.
- On CPU both bf16 modes compute attention with the ``bmm`` backend (``attention.py``, ``auto``'s choice for bf16 inference there: scores and softmax
  in bf16 through two batched matmuls) instead of the CPU flash SDPA kernel, which at head_dim 64 reached
  about a fifth of the bf16 matmul peak: int8 mmbert-small 3,237 -> 3,829 tokens/s, bf16 2,768 -> 3,025
  (``cpu_peers.py``'s case, flash SDPA vs ``bmm`` in one process, medians of 5, alternated), min cosine to fp32 over 1,000 corpus texts of the
  miniature's merged model 0.999999 -> 0.999997 in bf16, unchanged in int8 (``precision_fidelity.py``).
- ``auto`` is ``bf16`` where the CPU does bf16 natively (AMX / AVX512-BF16, the same detection the trainer
  uses) or the GPU supports it, else ``fp32``. A mode the device cannot do is a :class:`PrecisionError`
  that says what to use instead.
Precision is an inference setting: the converted model is not meant for training (int8 has no backward).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "int8")
INT8_KEEP = ("mlp.Wo",)  # linear layers left in bf16/fp32 in int8 mode (name suffixes); see the docstring


class PrecisionError(ValueError):
    """An unknown precision, or one this device cannot run."""


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_supports_bf16() -> bool:
    """Native bf16 math on this CPU: AMX or AVX512-BF16 (read from /proc/cpuinfo, then torch's capability)."""
    flags = _cpu_flags()
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        return True
    return "AMX" in str(torch.backends.cpu.get_cpu_capability())


def cpu_supports_int8() -> bool:
    """int8 dot products (AMX-INT8, AVX512-VNNI or AVX-VNNI) and torch's oneDNN quantised linear."""
    flags = _cpu_flags()
    has_isa = any(f in flags for f in ("amx_int8", "avx512_vnni", "avx_vnni")) or "AMX" in str(
        torch.backends.cpu.get_cpu_capability())
    return has_isa and hasattr(torch.ops.onednn, "qlinear_pointwise") and hasattr(torch.ops.onednn, "qlinear_prepack")


def bf16_supported(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_supports_bf16()


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``bf16`` or ``fp32``; an unknown or unsupported mode is a PrecisionError."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        raise PrecisionError(f"precision 'bf16' needs native bf16 (AMX / AVX512-BF16 CPU, or a bf16 GPU); this "
                             f"{device.type} device has none: use 'fp32' or 'auto'")
    if precision == "int8":
        if device.type != "cpu":
            raise PrecisionError(f"precision 'int8' runs on CPU only (oneDNN); on {device.type} use 'bf16' or 'auto'")
        if not cpu_supports_int8():
            raise PrecisionError("precision 'int8' needs a CPU with AMX-INT8 or AVX(512)-VNNI and torch's oneDNN "
                                 "quantised linear; this one has neither: use 'fp32' or 'auto'")
    return precision


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per output channel) and dynamically quantised activations (per tensor).

    ``y = (s_x * s_w) * (q_x @ q_w^T) + b`` in one oneDNN call; activations are quantised to uint8 with zero
    point 128 (symmetric around 0, the layout oneDNN's u8s8 kernels take), their scale taken from this
    call's max |x|, so no calibration data is needed.
    """

    def __init__(self, linear: nn.Linear, out_dtype: torch.dtype):
        super().__init__()
        w = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (out,)
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.register_buffer("packed", torch.ops.onednn.qlinear_prepack(q, None), persistent=False)
        self.register_buffer("w_scale", scale, persistent=False)
        self.register_buffer("w_zero", torch.zeros(self.out_features, dtype=torch.long), persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias, persistent=False)
        self.out_dtype = out_dtype

    def _apply(self, fn, recurse=True):
        # .to(dtype) of the surrounding model must not touch the packed weight, its fp32 scales or the bias
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, out_dtype={self.out_dtype}"

    @staticmethod
    def quantize(x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(M, K) activations -> uint8 (zero point 128) and their per-tensor scale; one call's input can feed
        several projections (Int8GeGLU quantises once for both halves)."""
        lo, hi = torch.aminmax(x)  # one pass, no |x| temporary
        scale = max(-float(lo), float(hi), 1e-12) / 127.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns that quantized tensor creation is deprecated
            q = torch.quantize_per_tensor(x.float(), scale, 128, torch.quint8)
        return _uint8_view(q), scale

    def project(self, q: torch.Tensor, scale: float, post_op: str = "none", algorithm: str = "") -> torch.Tensor:
        """One oneDNN int8 GEMM on quantised activations; ``post_op`` ("gelu", algorithm "none" or "tanh")
        runs in its epilogue, on the fp32 accumulator, before the output is written."""
        return torch.ops.onednn.qlinear_pointwise(
            q, scale, 128, self.packed, self.w_scale, self.w_zero, self.bias, 1.0, 0, self.out_dtype, post_op, [],
            algorithm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self.project(*self.quantize(x.reshape(-1, shape[-1])))
        return y.view(*shape[:-1], self.out_features)


def _uint8_view(q: torch.Tensor) -> torch.Tensor:
    """The uint8 codes of a quint8 tensor without a copy (``int_repr()`` copies: 1.6 ms for 8,552 x 384 here,
    3.5% of an int8 mmbert-small forward)."""
    return torch.empty(0, dtype=torch.uint8, device=q.device).set_(
        q.untyped_storage(), q.storage_offset(), q.size(), q.stride())


class Int8GeGLU(nn.Module):
    """``act(x W_in^T) * (x W_gate^T)`` of an MLP's ``Wi`` (rows [input | gate]) as two int8 GEMMs on one
    quantised input, GELU fused into the first one's epilogue: no (N, 2I) projection is written, split and
    re-read, and there is no separate GELU pass (``aten::gelu`` was 6% of an int8 mmbert-small forward)."""

    def __init__(self, wi: nn.Linear, algorithm: str | None, activation, out_dtype: torch.dtype):
        super().__init__()
        half = wi.out_features // 2
        parts = []
        for rows in (slice(0, half), slice(half, None)):
            part = nn.Linear(wi.in_features, half, bias=wi.bias is not None)
            with torch.no_grad():
                part.weight.copy_(wi.weight[rows])
                if wi.bias is not None:
                    part.bias.copy_(wi.bias[rows])
            parts.append(Int8Linear(part, out_dtype))
        self.input, self.gate = parts
        self.algorithm = algorithm  # oneDNN's GELU algorithm (modeling.EPILOGUE_GELU), None: not a GELU
        self.act = activation  # applied after the GEMM only when oneDNN cannot fuse it

    def _apply(self, fn, recurse=True):
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        q, scale = Int8Linear.quantize(x.reshape(-1, shape[-1]))
        if self.algorithm is None:
            inp = self.act(self.input.project(q, scale))
        else:
            inp = self.input.project(q, scale, "gelu", self.algorithm)
        return inp.mul_(self.gate.project(q, scale)).view(*shape[:-1], -1)


class Int8MLP(nn.Module):
    """An encoder layer's MLP in int8 mode: Int8GeGLU, then its (kept) output projection."""

    def __init__(self, mlp: nn.Module, out_dtype: torch.dtype):
        super().__init__()
        self.gated = Int8GeGLU(mlp.Wi, mlp.gelu_algorithm, mlp.act, out_dtype)
        self.drop, self.Wo = mlp.drop, mlp.Wo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Wo(self.drop(self.gated(x)))


def quantize_linears_int8(encoder: nn.Module, out_dtype: torch.dtype, keep: tuple[str, ...] = INT8_KEEP) -> int:
    """In every encoder layer: the MLP's ``Wi`` becomes an Int8GeGLU (the layer's MLP an Int8MLP) and every
    other nn.Linear an Int8Linear, except names ending in ``keep``; returns how many projections were replaced."""
    replaced = 0
    for layer in encoder.layers:
        if not isinstance(layer.mlp, Int8MLP):
            layer.mlp = Int8MLP(layer.mlp, out_dtype)
            replaced += 1
        for name, child in list(layer.named_modules()):
            for attr, sub in list(child.named_children()):
                full = f"{name}.{attr}" if name else attr
                if isinstance(sub, nn.Linear) and not full.endswith(keep):
                    # attn.Wo's output goes straight into the fp32 residual add: written in fp32 by the GEMM, it
                    # spares the add a materialised bf16 -> fp32 cast (CPU TensorIterator copies mixed inputs)
                    dtype = torch.float32 if full == "attn.Wo" else out_dtype
                    setattr(child, attr, Int8Linear(sub, dtype))
                    replaced += 1
    return replaced


def apply_precision(model: nn.Module, precision: str, device: torch.device | str = "cpu") -> nn.Module:
    """Convert a loaded model (MmBertModel or a model holding one as ``.model``) for inference in
    ``precision``, in place; returns it. The output dtype of the encoder stays fp32 in every mode."""
    precision = resolve_precision(precision, device)
    model.eval()
    encoder = model if hasattr(model, "final_norm") else getattr(model, "model", None)
    if encoder is None or not hasattr(encoder, "final_norm"):
        raise TypeError(f"apply_precision expects an mmbert encoder or a model with one as .model, got "
                        f"{type(model).__name__}")
    if precision == "fp32":
        return model
    compute = torch.bfloat16 if precision == "bf16" or bf16_supported(device) else torch.float32
    if precision == "int8":
        quantize_linears_int8(encoder, compute)
    if compute == torch.bfloat16:
        # The forward autocasts; weights, norms, residual stay fp32. On CPU, attention's "auto" then takes "bmm".
        encoder.autocast_dtype = torch.bfloat16
    model.precision = precision
    return model


def model_precision(model: nn.Module) -> str:
    """The precision ``apply_precision`` gave the model (``fp32`` if never applied)."""
    return getattr(model, "precision", "fp32")


__all__ = [
    "INT8_KEEP", "PRECISIONS", "Int8GeGLU", "Int8Linear", "Int8MLP", "PrecisionError", "apply_precision",
    "bf16_supported", "cpu_supports_bf16", "cpu_supports_int8", "model_precision", "quantize_linears_int8", "resolve_precision",
]
