"""Attention over unpadded (varlen) token streams, and the padded reference path.

All real tokens of a batch are concatenated into one stream of N tokens; ``cu_seqlens`` (D+1,) marks where
each sequence starts. Three backends compute the same function:

- ``flash``: flash-attn's varlen kernel (CUDA, fp16/bf16), with ``window_size=(w, w)`` on local layers.
- ``sdpa`` (CPU and fallback): global layers run PyTorch SDPA once per sequence, so no work is spent on
  pads; local layers run *banded*: queries in blocks of ``block`` tokens attend to the keys of their block
  plus ``w`` on each side, one batched SDPA call for the whole stream, masked so a query sees only keys of
  its own sequence within ``|i - j| <= w``. Cost is O(N * (block + 2w)) rather than O(T^2) per sequence.
- ``padded``: dense masked SDPA over (B, T), as transformers computes it; used for ONNX export and as an
  independent reference in tests.
- ``dense`` (``auto``'s choice on CPU in training mode, pieces up to ``DENSE_MAX_LEN``): consecutive pieces are laid into chunks of ``C`` tokens
  (at most ``DENSE_MAX_LEN``; the trainer's packed rows are exactly such chunks, so nothing is padded or
  copied), and each layer is one SDPA call over (chunks, H, C, C) masked to the own piece (and the band on
  local layers). It scores more keys than ``sdpa``'s band (C against 2.5w) but is one kernel with no
  per-sequence loop and no ``unfold`` backward: at the miniature's size (16 rows of 256, w = 32, bf16 on a
  2-core CPU) attention forward + backward ran 3x faster on local and 1.5x on global layers
  (``benchmarks/train_step.py``). The layout and masks are built once per batch and shared by all layers.
  In eval mode (evaluation, serving) ``sdpa`` / ``bmm`` stay the choice: there the masked dense forward was
  slower - except on global layers in bf16 over many short pieces (``VarlenBatch.dense_pays``: the held-out
  set's 75 pieces of <= 128 tokens a batch), where the per-piece loop's op overhead costs more than the chunks'
  padding: 24-29 -> 13 ms a layer, one baddbmm with the mask and the scale folded in.
  In bf16 on CPU each layer is two matmuls with an additive mask and the softmax between them (CPU flash SDPA
  with a mask is slow in bf16): the training step at the miniature's size went from 1.12x to 1.29x
  transformers' (``benchmarks/train_step.py``).

- ``bmm`` (``auto``'s choice for inference in bf16 on CPU): the ``sdpa`` layout, but each attention is
  two matmuls per head with the softmax between them in the input dtype, local layers in query blocks of 64
  with an additive band bias. CPU flash SDPA in bf16 at head_dim 64 ran well below the bf16 matmul peak: on
  mmbert-small's 8,552-token case a global layer took 50-60 ms with it and 31-38 ms this way, a local one 31-34
  against 22-23; twice the rounding of flash SDPA's fp32 accumulation (relative error of the output 1e-2 vs
  5e-3), which moved the embeddings' min cosine to fp32 from 0.999999 to 0.999997.

``w`` = ``local_attention // 2`` (transformers' ModernBERT: a local layer attends to |i - j| <= w).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

try:  # optional GPU kernel
    from flash_attn import flash_attn_varlen_func  # type: ignore
except Exception:  # noqa: BLE001 - absent or broken install: fall back to SDPA
    flash_attn_varlen_func = None


@dataclass
class VarlenBatch:
    """Everything attention needs about a packed stream; built once per forward, shared by all layers."""

    cu_seqlens: torch.Tensor  # (D+1,) int32, starts at 0, ends at N
    max_seqlen: int
    position_ids: torch.Tensor  # (N,) position of each token within its sequence
    seqlens: list[int]  # host copy of the lengths, so per-sequence loops need no device sync
    window: int  # w: local layers see |i - j| <= w
    block: int  # query block of the banded local attention
    _band_masks: dict = field(default_factory=dict)  # block -> mask; (block, dtype) -> additive bias
    _dense: "DenseLayout | None | bool" = False  # False: not computed yet; None: not applicable

    @classmethod
    def from_cu_seqlens(
        cls, cu_seqlens: torch.Tensor, window: int, max_seqlen: int | None = None,
        position_ids: torch.Tensor | None = None, block: int | None = None,
    ) -> "VarlenBatch":
        cu = cu_seqlens.to(torch.int32)
        seqlens = (cu[1:] - cu[:-1]).tolist()
        if any(s <= 0 for s in seqlens):
            raise ValueError(f"cu_seqlens must be strictly increasing, got {cu_seqlens.tolist()}")
        if position_ids is None:
            position_ids = positions_from_seqlens(seqlens, cu.device)
        # Query blocks of w/2: each query then scores block + 2w = 2.5w keys (the band needs 2w + 1); measured
        # on a 2-core CPU at w = 64, blocks of 32 beat 64 and 128 by 10% and 25% (fewer masked-out scores).
        return cls(cu, max_seqlen or max(seqlens), position_ids, seqlens, window, block or max(16, window // 2))

    def band_mask(self, block: int | None = None) -> torch.Tensor:
        """(blocks, 1, block, block + 2w) bool: query may attend key. Built once, reused by every local layer."""
        block = block or self.block
        if block not in self._band_masks:
            self._band_masks[block] = _band_mask(self.cu_seqlens, self.seqlens, self.window, block)
        return self._band_masks[block]

    def band_bias(self, block: int, dtype: torch.dtype) -> torch.Tensor:
        """``band_mask(block)`` as an additive bias (0 / -inf) in ``dtype``, for the ``bmm`` backend."""
        key = (block, dtype)
        if key not in self._band_masks:
            mask = self.band_mask(block)
            self._band_masks[key] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
                ~mask, float("-inf"))
        return self._band_masks[key]


    def dense_pays(self) -> bool:
        """Whether a global layer in bf16 inference is faster dense than piece by piece (``DENSE_OVERHEAD_TOKENS``)."""
        if len(self.seqlens) < DENSE_MIN_PIECES:
            return False
        layout = self.dense_layout()
        if layout is None:
            return False
        mean_len = sum(self.seqlens) / len(self.seqlens)
        bound = 1 + DENSE_OVERHEAD_TOKENS / mean_len
        return layout.n_chunks * layout.length**2 <= bound * sum(s * s for s in self.seqlens)

    def dense_layout(self) -> "DenseLayout | None":
        """Chunks for the ``dense`` backend, or None when a piece is longer than ``DENSE_MAX_LEN``."""
        if self._dense is False:
            self._dense = DenseLayout.build(self.seqlens, self.cu_seqlens.device, self.window)
        return self._dense


DENSE_MAX_LEN = 512  # the dense backend's longest chunk: cost grows with C per token
# bf16 inference on CPU runs a global layer dense when there are at least DENSE_MIN_PIECES pieces and the chunks score
# at most 1 + DENSE_OVERHEAD_TOKENS / (mean piece length) times the keys the per-piece loop scores: the loop's ops
# cost about as much per piece as 64 more keys per query. Measured (one global layer, bf16, 2 cores, ms loop/dense):
# 75 pieces of 100-128 tokens (the held-out batch) at 1.21x the scores 17.5/11.0; 256 of 10-39 at 2.47x 26/14;
# 64 of 16-63 at 1.85x 8.0/3.7; 32 of 200-256 at 1.26x 20.5/21 (even); [500] + 40 x [20] at 2.96x 7.5/7.0 (even);
# [300] + 30 x [100] at 2.61x 8.6/13.5 and 20 x [64] + 4 x [400] at 1.77x 10/14 (loop: both over the bound).
DENSE_MIN_PIECES = 16
DENSE_OVERHEAD_TOKENS = 64


@dataclass
class DenseLayout:
    """Pieces laid end to end into ``n_chunks`` chunks of ``length`` tokens (greedy, in order, never split)."""

    length: int  # C
    n_chunks: int
    slots: torch.Tensor | None  # (N,) slot of each token in the (n_chunks * C) grid; None: the identity
    global_mask: torch.Tensor  # (n_chunks, 1, C, C) bool: query may attend key (same piece)
    local_mask: torch.Tensor  # the same, within |i - j| <= w
    _biases: dict = field(default_factory=dict)  # (local, dtype) -> additive bias, built once a batch

    def bias(self, local: bool, dtype: torch.dtype) -> torch.Tensor:
        """The mask as an additive bias (0 / -inf) in ``dtype``, (n_chunks, 1, C, C), for the matmul path."""
        if (local, dtype) not in self._biases:
            mask = self.local_mask if local else self.global_mask
            self._biases[local, dtype] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
                ~mask, float("-inf"))
        return self._biases[local, dtype]

    def head_bias(self, local: bool, dtype: torch.dtype, heads: int) -> torch.Tensor:
        """``bias`` repeated for each head, (n_chunks * heads, C, C): the additive input of one baddbmm."""
        key = (local, dtype, heads)
        if key not in self._biases:
            self._biases[key] = self.bias(local, dtype).expand(-1, heads, -1, -1).reshape(-1, self.length, self.length)
        return self._biases[key]

    @staticmethod
    def pack(seqlens: list[int], length: int) -> list[int]:
        """The chunk index of each piece when consecutive pieces fill chunks of ``length`` greedily."""
        chunk, used, out = 0, 0, []
        for s in seqlens:
            if used + s > length:
                chunk, used = chunk + 1, 0
            out.append(chunk)
            used += s
        return out

    @classmethod
    def build(cls, seqlens: list[int], device, window: int) -> "DenseLayout | None":
        longest = max(seqlens)
        if longest > DENSE_MAX_LEN:
            return None
        # A chunk length that packs with no padding (the trainer's rows of 128 or 256 tokens) is taken as it is;
        # otherwise the one with the fewest scores (chunks x C^2).
        n = sum(seqlens)
        candidates = {-(-longest // 16) * 16} | {c for c in (64, 128, 256, 512) if longest <= c}
        best = None
        for c in sorted(candidates):
            chunks = cls.pack(seqlens, c)
            cost = (0 if (chunks[-1] + 1) * c == n else 1, (chunks[-1] + 1) * c * c)
            if best is None or cost < best[0]:
                best = (cost, c, chunks)
        _, c, chunks = best
        n_chunks = chunks[-1] + 1
        seq_id = torch.full((n_chunks * c,), -1, dtype=torch.long)
        slots = []
        offset = [0] * n_chunks
        for i, (s, ch) in enumerate(zip(seqlens, chunks)):
            start = ch * c + offset[ch]
            seq_id[start : start + s] = i
            slots.append(torch.arange(start, start + s))
            offset[ch] += s
        slot = torch.cat(slots)
        identity = n == n_chunks * c  # every chunk full: the grid is the stream itself
        q_seq = seq_id.view(n_chunks, c, 1)
        same = (q_seq == seq_id.view(n_chunks, 1, c)) & (q_seq >= 0)
        pos = torch.arange(c)
        band = same & ((pos[:, None] - pos[None, :]).abs() <= window)
        pad_q = q_seq < 0  # padding queries see everything (their output is dropped): no all-masked row, no NaN
        return cls(c, n_chunks, None if identity else slot.to(device), (same | pad_q).unsqueeze(1).to(device),
                   (band | pad_q).unsqueeze(1).to(device))


def _dense_sdpa(q, k, v, layout: DenseLayout, local: bool, dropout_p: float, inference: bool = False
                ) -> torch.Tensor:
    """``inference``: the calling module is in eval mode (not: gradients are off - GradCache's no-grad pass of a
    training-mode model must compute what its grad pass does)."""
    n, heads, dim = q.shape
    c, nc = layout.length, layout.n_chunks

    def grid(x):  # (N, H, D) -> (chunks, H, C, D)
        if layout.slots is not None:
            x = x.new_zeros(nc * c, heads, dim).index_copy(0, layout.slots, x)
        return x.view(nc, c, heads, dim).transpose(1, 2)

    dtype = q.dtype
    with torch.autocast(q.device.type, enabled=False):
        if q.device.type == "cpu" and dtype == torch.bfloat16 and inference and dropout_p == 0:
            # inference (a global layer over many pieces, ``auto_backend``): the scale and the mask folded into one
            # baddbmm - 17 -> 12 ms a layer on the held-out batch (8,080 tokens, 74 chunks)
            qg, kg, vg = (grid(x).reshape(nc * heads, c, dim) for x in (q, k, v))
            scores = torch.baddbmm(layout.head_bias(local, dtype, heads), qg, kg.transpose(1, 2), alpha=dim**-0.5)
            o = torch.bmm(torch.softmax(scores, dim=-1), vg).view(nc, heads, c, dim)
        elif q.device.type == "cpu" and dtype == torch.bfloat16:
            # CPU flash SDPA with a mask is slow in bf16 (forward + backward 270 ms a layer at 16 x 256 rows on a
            # 2-core AMX CPU; 150 ms upcast to fp32): bf16 runs as two matmuls with the softmax between them,
            # which autograd differentiates with bf16 matmuls too - 26 ms a global layer and 20 a local one
            # against fp32 flash's 44 and 33, at a relative error of the output of 5e-3 to fp32.
            scores = torch.matmul(grid(q) * dim**-0.5, grid(k).transpose(-1, -2)) + layout.bias(local, dtype)
            probs = torch.softmax(scores, dim=-1)
            if dropout_p > 0:
                probs = F.dropout(probs, dropout_p)
            o = torch.matmul(probs, grid(v))
        else:
            mask = layout.local_mask if local else layout.global_mask
            o = F.scaled_dot_product_attention(grid(q), grid(k), grid(v), attn_mask=mask, dropout_p=dropout_p)
    o = o.transpose(1, 2).reshape(nc * c, heads, dim)
    return o if layout.slots is None else o.index_select(0, layout.slots)


def positions_from_seqlens(seqlens: list[int], device: torch.device | None = None) -> torch.Tensor:
    lengths = torch.tensor(seqlens, device=device)
    starts = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    return torch.arange(int(lengths.sum()), device=device) - starts


def _band_mask(cu_seqlens: torch.Tensor, seqlens: list[int], w: int, block: int) -> torch.Tensor:
    n = int(sum(seqlens))
    device = cu_seqlens.device
    n_blocks = -(-n // block)
    seq_id = torch.repeat_interleave(torch.arange(len(seqlens), device=device), torch.tensor(seqlens, device=device))
    q_idx = torch.arange(n_blocks * block, device=device).view(n_blocks, block, 1)
    k_idx = (torch.arange(n_blocks, device=device) * block).view(n_blocks, 1, 1) + torch.arange(
        -w, block + w, device=device
    ).view(1, 1, -1)  # (blocks, 1, block + 2w)
    q_seq = torch.full((n_blocks * block,), -1, device=device)
    q_seq[:n] = seq_id
    k_seq = torch.full((n_blocks * block + 2 * w,), -2, device=device)
    k_seq[w : w + n] = seq_id  # keys are shifted by w: padded on the left by w
    q_seq = q_seq.view(n_blocks, block, 1)
    k_seq = k_seq[k_idx + w]
    mask = (q_seq == k_seq) & ((q_idx - k_idx).abs() <= w)
    mask |= q_seq < 0  # padding queries at the stream's end see everything (their output is dropped) - no NaN
    return mask.unsqueeze(1)


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: VarlenBatch, local: bool,
    dropout_p: float = 0.0, backend: str = "auto", training: bool = False,
) -> torch.Tensor:
    """q, k, v: (N, heads, head_dim) -> (N, heads, head_dim). ``training``: the calling module's mode."""
    if backend == "auto":
        backend = auto_backend(q, batch, training, dropout_p, local)
    if backend == "dense":
        layout = batch.dense_layout()
        if layout is None:
            raise ValueError(f"the dense attention backend takes pieces of at most {DENSE_MAX_LEN} tokens, "
                             f"got {batch.max_seqlen}")
        return _dense_sdpa(q, k, v, layout, local, dropout_p, inference=not training)
    if backend == "bmm":
        if dropout_p > 0:
            raise ValueError("the bmm attention backend is for inference: it has no dropout")
        if local and batch.max_seqlen > batch.window + 1:
            return _banded_bmm(q, k, v, batch)
        return _per_sequence_bmm(q, k, v, batch)
    if backend == "flash":
        w = batch.window if local else -1
        return flash_attn_varlen_func(
            q, k, v, batch.cu_seqlens, batch.cu_seqlens, batch.max_seqlen, batch.max_seqlen,
            dropout_p=dropout_p, window_size=(w, w),
        )
    if local and batch.max_seqlen > batch.window + 1:
        return _banded_sdpa(q, k, v, batch, dropout_p)
    return _per_sequence_sdpa(q, k, v, batch, dropout_p)


def auto_backend(q: torch.Tensor, batch: VarlenBatch, training: bool, dropout_p: float = 0.0,
                 local: bool = True) -> str:
    """What ``backend="auto"`` computes with. Chosen by the module's mode, not by whether gradients are on:
    GradCache's no-grad pass must compute what its grad pass does."""
    if _flash_usable(q):
        return "flash"
    if training:
        # dense only where it was measured faster: training. In inference its masked forward was 1.2-3x slower
        # than sdpa's band (mini 64 x 256, mmbert-small 32 x 16..512; 2-core CPU, 1 thread).
        return "dense" if batch.dense_layout() is not None else "sdpa"
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and dropout_p == 0:
        # inference in bf16 on CPU (precision.py's modes, evaluation under the trainer's autocast); a global layer
        # over many pieces runs dense, where the per-piece loop's op overhead outweighs the chunks' padding
        return "dense" if not local and batch.dense_pays() else "bmm"
    return "sdpa"


def _flash_usable(q: torch.Tensor) -> bool:
    return flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def _per_sequence_sdpa(q, k, v, batch: VarlenBatch, dropout_p: float) -> torch.Tensor:
    if len(batch.seqlens) == 1:
        return _sdpa_one(q, k, v, dropout_p)
    # One unmasked SDPA per sequence: no pads, no mask. split/cat (not slice-assignment into a buffer) so the
    # backward is one concatenation, not a full-size zero gradient per sequence.
    pieces = zip(q.split(batch.seqlens), k.split(batch.seqlens), v.split(batch.seqlens))
    return torch.cat([_sdpa_one(qi, ki, vi, dropout_p) for qi, ki, vi in pieces])


def _sdpa_one(q, k, v, dropout_p: float) -> torch.Tensor:
    # (T, H, D) -> (1, H, T, D) -> (T, H, D)
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
        dropout_p=dropout_p,
    )
    return o.squeeze(0).transpose(0, 1)


def _banded_sdpa(q, k, v, batch: VarlenBatch, dropout_p: float) -> torch.Tensor:
    n, heads, dim = q.shape
    w, block = batch.window, batch.block
    n_blocks = -(-n // block)
    pad_q = n_blocks * block - n
    qb = F.pad(q, (0, 0, 0, 0, 0, pad_q)).view(n_blocks, block, heads, dim).transpose(1, 2)  # (nb, H, blk, D)
    kp = F.pad(k, (0, 0, 0, 0, w, pad_q + w))  # (nb*blk + 2w, H, D)
    vp = F.pad(v, (0, 0, 0, 0, w, pad_q + w))
    # Overlapping key windows of block + 2w tokens, one per query block: (nb, H, D, blk+2w) -> (nb, H, blk+2w, D)
    kb = kp.unfold(0, block + 2 * w, block).permute(0, 1, 3, 2)
    vb = vp.unfold(0, block + 2 * w, block).permute(0, 1, 3, 2)
    o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=batch.band_mask(), dropout_p=dropout_p)
    return o.transpose(1, 2).reshape(n_blocks * block, heads, dim)[:n]


# the bmm backend's query block: 64 beat 32 and 128 (27-33 vs 46-55 vs 29-35 ms a local layer, all heads in one
# matmul; per head, as now, 64 gave 22-23 ms)
BMM_BLOCK = 64


def _per_sequence_bmm(q, k, v, batch: VarlenBatch) -> torch.Tensor:
    # Head-major copies (H, N, D), one each: every sequence's (H, T, D) slice is then a plain strided batch
    # for the matmuls, with no per-sequence transposes or copies.
    dim = q.shape[-1]
    qh, kh, vh = (x.transpose(0, 1).contiguous() for x in (q, k, v))
    qh.mul_(dim**-0.5)
    out = torch.empty_like(qh)
    start = 0
    for length in batch.seqlens:
        sl = slice(start, start + length)
        scores = torch.matmul(qh[:, sl], kh[:, sl].transpose(1, 2))
        torch.matmul(torch.softmax(scores, dim=-1), vh[:, sl], out=out[:, sl])
        start += length
    return out.transpose(0, 1)


def _banded_bmm(q, k, v, batch: VarlenBatch, block: int = BMM_BLOCK) -> torch.Tensor:
    n, heads, dim = q.shape
    w = batch.window
    n_blocks = -(-n // block)
    pad_q = n_blocks * block - n
    keys = block + 2 * w
    qh = F.pad(q, (0, 0, 0, 0, 0, pad_q)).transpose(0, 1).contiguous().mul_(dim**-0.5)  # (H, nb * blk, D)
    kh = F.pad(k, (0, 0, 0, 0, w, pad_q + w)).transpose(0, 1).contiguous()  # (H, nb * blk + 2w, D)
    vh = F.pad(v, (0, 0, 0, 0, w, pad_q + w)).transpose(0, 1).contiguous()
    bias = batch.band_bias(block, q.dtype)[:, 0]  # (nb, blk, blk + 2w)
    out = q.new_empty(heads, n_blocks * block, dim)
    # One head at a time: its overlapping key windows (unfold) are a batch of constant stride that the matmul
    # reads in place; all heads at once would make the matmul copy every window (3x the keys, measured 6% of
    # an int8 mmbert-small forward and more at mmbert-base).
    for h in range(heads):
        kw = kh[h].unfold(0, keys, block)  # (nb, D, blk + 2w): k^T of each window
        vw = vh[h].unfold(0, keys, block).transpose(1, 2)  # (nb, blk + 2w, D)
        scores = torch.baddbmm(bias, qh[h].view(n_blocks, block, dim), kw)
        torch.bmm(torch.softmax(scores, dim=-1), vw, out=out[h].view(n_blocks, block, dim))
    return out.transpose(0, 1)[:n]


def padded_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor, window: int | None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Dense reference: q, k, v (B, H, T, D); attention_mask (B, T) with 1 for real tokens."""
    keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
    if window is not None:
        t = q.shape[-2]
        idx = torch.arange(t, device=q.device)
        keep = keep & ((idx[:, None] - idx[None, :]).abs() <= window)
    keep = keep | ~attention_mask.bool()[:, None, :, None]  # pad queries: avoid all-masked rows (NaN)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p)
