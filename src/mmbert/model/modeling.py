"""The mmBERT encoder: ModernBERT (Warner et al., 2024) as mmBERT (Marone et al., 2025) uses it.

Read top to bottom: embeddings -> N x [pre-norm attention, pre-norm GeGLU MLP] -> final norm -> MLM head.
Parameter names are transformers' ``modeling_modernbert.py`` names (``tok_embeddings``, ``Wqkv``, ``Wo``,
``Wi``, ``attn_norm``, ``mlp_norm``, ``final_norm``, ``head``, ``decoder``), so checkpoints move between the
two unchanged. Choices that differ from transformers, and why:

- Execution is *unpadded*: the padded call drops pad tokens, runs every layer on the concatenated stream
  (``cu_seqlens``) and scatters the result back. No compute is spent on pads; local layers are banded
  (see ``attention.py``); RoPE tables and the band mask are built once per forward, not per layer.
- The MLM loss decodes only the predicted positions (sparse prediction), which is most of the head's cost.
Layer ``i`` is global when ``i % global_attn_every_n_layers == 0`` (RoPE ``global_rope_theta``), otherwise
it attends to ``|i - j| <= local_attention // 2`` (RoPE ``local_rope_theta``). The first layer's attention
norm is the identity, because the embedding norm has just normalised its input.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmbert.model.attention import VarlenBatch, padded_attention, varlen_attention
from mmbert.model.checkpoint import PretrainedMixin
from mmbert.model.config import ModelConfig
from mmbert.model.loss import linear_cross_entropy
from mmbert.model.rope import apply_rotary, rotary_cos_sin

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (B, T, H) for padded input, (N, H) for unpadded input


@dataclass
class MaskedLMOutput:
    loss: torch.Tensor | None
    # (B, T, V) / (N, V); with labels: (M, V) over the M predicted positions only; None when the loss was
    # computed fused with the decoder (training: see loss.py)
    logits: torch.Tensor | None
    last_hidden_state: torch.Tensor


def layer_norm(config: ModelConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.norm = layer_norm(config)
        self.drop = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.tok_embeddings(input_ids)))


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.is_global = config.is_global(layer_idx)
        self.window = None if self.is_global else config.local_attention // 2
        self.dropout = config.attention_dropout
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
        self.out_drop = nn.Dropout(config.attention_dropout) if config.attention_dropout > 0 else nn.Identity()
        self.backend = "auto"  # attention.py's backends (auto_backend: by device, dtype and mode)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: VarlenBatch) -> torch.Tensor:
        n = x.shape[0]
        qkv = linear(self.Wqkv, x).view(n, 3, self.num_heads, self.head_dim)  # (N, 3, H, D)
        q, k = apply_rotary(qkv[:, :2], cos, sin).unbind(dim=1)  # q and k in one pass; cos/sin: (N, 1, 1, D/2)
        v = qkv[:, 2]  # (N, H, D)
        dropout = self.dropout if self.training else 0.0
        out = varlen_attention(q, k, v, batch, local=not self.is_global, dropout_p=dropout,
                               backend=self.backend, training=self.training)
        return self.out_drop(linear(self.Wo, out.reshape(n, -1)))

    def forward_padded(self, x: torch.Tensor, cos, sin, attention_mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.Wqkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        q, k = apply_rotary(qkv[0], cos, sin), apply_rotary(qkv[1], cos, sin)  # cos/sin: (1, 1, T, D/2)
        dropout = self.dropout if self.training else 0.0
        out = padded_attention(q, k, qkv[2], attention_mask, self.window, dropout)  # (B, H, T, D)
        return self.out_drop(self.Wo(out.transpose(1, 2).reshape(b, t, -1)))


# GELU that oneDNN can apply inside a linear's epilogue (fp32/bf16 here, int8 in precision.py):
# config.hidden_activation -> oneDNN's algorithm
EPILOGUE_GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def _linear_gelu_usable(x: torch.Tensor) -> bool:
    """oneDNN's fused linear + GELU: CPU, eager (not while tracing for ONNX or compiling), fp32 / bf16."""
    return (x.device.type == "cpu" and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.backends.mkldnn.is_available() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; for fp32 inference on CPU through oneDNN's linear instead of MKL's sgemm, which runs the
    encoder's shapes slower (8,552 tokens, mmbert-small, 2 cores: 155-188 vs 165-212 GFLOP/s alone, and the
    difference grows inside a forward). bf16 (autocast) and anything autograd records keep ``F.linear``: oneDNN's
    op has no backward, and in bf16 the two are equal here."""
    if (not layer.training and x.dtype == torch.float32 and type(layer) is nn.Linear
            and not torch.is_autocast_enabled(x.device.type)
            and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))
            and _linear_gelu_usable(x)):
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
    return layer(x)


class MLP(nn.Module):
    """GeGLU: Wi projects to [input | gate]; act(input) * gate; Wo projects back."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.act = activation(config.hidden_activation)
        self.gelu_algorithm = EPILOGUE_GELU.get(config.hidden_activation)
        self.drop = nn.Dropout(config.mlp_dropout)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            inp, gate = self.Wi(x).chunk(2, dim=-1)
            return self.Wo(self.drop(self.act(inp) * gate))
        if not self.training and self.gelu_algorithm is not None and _linear_gelu_usable(x):
            return linear(self.Wo, self._fused_geglu(x))
        inp, gate = self.Wi(x).chunk(2, dim=-1)
        # No graph: gate in place (no (N, intermediate) temporary). Dropout still applies in training mode,
        # so a no-grad forward draws the same masks as one with grad (GradCache's first pass, train/gradcache.py).
        return self.Wo(self.drop(self.act(inp).mul_(gate)))

    def _fused_geglu(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on CPU: the input and gate halves of ``Wi`` (contiguous row views, no copy) as two linears,
        GELU in the first one's oneDNN epilogue. No (N, 2I) projection is written and split, and there is no
        GELU pass: 8,552 x 384 -> 1,152, 2 cores, linear + GELU 65 -> 51 ms in fp32, 33 -> 21 ms in bf16."""
        half = self.Wi.out_features // 2
        w, b = self.Wi.weight, self.Wi.bias
        w_in, w_gate = w[:half], w[half:]
        b_in, b_gate = (None, None) if b is None else (b[:half], b[half:])
        if torch.is_autocast_enabled("cpu"):  # oneDNN's op is not on autocast's list: cast as autocast would
            dtype = torch.get_autocast_dtype("cpu")
            x, w_in = x.to(dtype), w_in.to(dtype)
            b_in = None if b_in is None else b_in.to(dtype)
        inp = torch.ops.mkldnn._linear_pointwise(x, w_in, b_in, "gelu", [], self.gelu_algorithm)
        if x.dtype == torch.float32:  # the gate's product in its epilogue too (fp32: oneDNN beats MKL here)
            return torch.ops.mkldnn._linear_pointwise.binary(x, inp, w_gate, b_gate, "mul")
        return inp.mul_(F.linear(x, w_gate, b_gate))


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = nn.Identity() if layer_idx == 0 else layer_norm(config)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = layer_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, batch: VarlenBatch) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, batch)
        return x + self.mlp(self.mlp_norm(x))

    def forward_padded(self, x, cos, sin, attention_mask) -> torch.Tensor:
        x = x + self.attn.forward_padded(self.attn_norm(x), cos, sin, attention_mask)
        return x + self.mlp(self.mlp_norm(x))


class MmBertPreTrainedModel(PretrainedMixin, nn.Module):
    """Shared init (transformers' ModernBERT scheme: truncated normal, output projections scaled by depth)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def init_weights(self, seed: int | None = None, skip: str | None = None) -> "MmBertPreTrainedModel":
        """Initialise every parameter (or those outside the submodule prefix ``skip``, already initialised)."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        c = self.config
        std_in, std_out = c.initializer_range, c.initializer_range / math.sqrt(2.0 * c.num_hidden_layers)
        std_final = c.hidden_size**-0.5

        def init(linear_or_emb: nn.Module, std: float) -> None:
            w = linear_or_emb.weight
            cut = c.initializer_cutoff_factor * std
            with torch.no_grad():
                w.copy_(torch.nn.init.trunc_normal_(torch.empty_like(w), 0.0, std, -cut, cut, generator=generator))
                if getattr(linear_or_emb, "bias", None) is not None:
                    linear_or_emb.bias.zero_()

        for name, module in self.named_modules():
            if skip and name.startswith(skip):
                continue
            if isinstance(module, nn.LayerNorm):
                with torch.no_grad():
                    module.weight.fill_(1.0)
                    if module.bias is not None:
                        module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                init(module, std_in)
            elif isinstance(module, nn.Linear):
                leaf = name.rsplit(".", 1)[-1]
                parent = name.rsplit(".", 2)[-2] if name.count(".") else ""
                if leaf == "classifier":
                    init(module, std_final)
                elif leaf in ("Wo", "decoder") or (parent == "head" and leaf == "dense"):
                    init(module, std_out)
                else:
                    init(module, std_in)
        self.tie_weights()
        return self

    def tie_weights(self) -> None:
        pass


class MmBertModel(MmBertPreTrainedModel):
    architecture = "ModernBertModel"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList([EncoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.final_norm = layer_norm(config)
        self.unpad = True  # False: the dense padded path (export, reference); same numbers
        self.autocast_dtype: torch.dtype | None = None  # inference precision bf16/int8 (model/precision.py)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Padded: ``input_ids`` (B, T) and ``attention_mask`` (B, T), 1 = real token; output (B, T, H) with
        zeros at pads. Unpadded: ``input_ids`` (N,) and ``cu_seqlens`` (D+1,); output (N, H)."""
        if cu_seqlens is not None:
            if input_ids.dim() != 1:
                raise ValueError(f"with cu_seqlens, input_ids must be 1-D (N,), got shape {tuple(input_ids.shape)}")
            batch = VarlenBatch.from_cu_seqlens(cu_seqlens, self._window, max_seqlen, position_ids)
            return EncoderOutput(self._forward_varlen(input_ids, batch))
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq) or 1-D with cu_seqlens, got {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not self.unpad:
            return EncoderOutput(self._forward_padded(input_ids, attention_mask))
        flat, indices, cu = unpad_input(input_ids, attention_mask)
        if flat.numel() == 0:
            raise ValueError("the batch holds no real tokens (attention_mask is all zeros)")
        hidden = self._forward_varlen(flat, VarlenBatch.from_cu_seqlens(cu, self._window))
        return EncoderOutput(pad_output(hidden, indices, input_ids.shape))

    @property
    def _window(self) -> int:
        return self.config.local_attention // 2

    def _rope(self, position_ids: torch.Tensor) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
        c = self.config
        tables = {}
        for is_global, theta in ((True, c.global_rope_theta), (False, c.local_rope_theta)):
            if is_global and not any(c.is_global(i) for i in range(c.num_hidden_layers)):
                continue
            cos, sin = rotary_cos_sin(position_ids, c.head_dim, theta)
            tables[is_global] = (cos[:, None, None], sin[:, None, None])  # broadcast over (q|k, heads)
        return tables

    def _precision(self, device: torch.device):
        """The inference precision's autocast (``apply_precision``), else nothing: training autocasts from outside."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def _forward_varlen(self, input_ids: torch.Tensor, batch: VarlenBatch) -> torch.Tensor:
        with self._precision(input_ids.device):
            x = self.embeddings(input_ids)  # (N, H)
            rope = self._rope(batch.position_ids)
            for i, layer in enumerate(self.layers):
                cos, sin = rope[self.config.is_global(i)]
                x = layer(x, cos, sin, batch)
            hidden = self.final_norm(x)
        return hidden if self.autocast_dtype is None else hidden.float()  # callers of every precision see fp32

    def _forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self._precision(input_ids.device):
            x = self.embeddings(input_ids)  # (B, T, H)
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            rope = {g: (cos.view(1, 1, -1, cos.shape[-1]), sin.view(1, 1, -1, sin.shape[-1]))  # (1, 1, T, D/2)
                    for g, (cos, sin) in self._rope(positions).items()}
            for i, layer in enumerate(self.layers):
                cos, sin = rope[self.config.is_global(i)]
                x = layer.forward_padded(x, cos, sin, attention_mask)
            x = self.final_norm(x)
        x = x if self.autocast_dtype is None else x.float()
        return x * attention_mask.unsqueeze(-1).to(x.dtype)


def unpad_input(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(B, T) -> real tokens (N,), their flat indices (N,), cu_seqlens (B'+1,) over non-empty rows."""
    mask = attention_mask.bool()
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    lengths = mask.sum(dim=1, dtype=torch.int32)
    lengths = lengths[lengths > 0]
    cu = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    return input_ids.flatten()[indices], indices, cu


def pad_output(hidden: torch.Tensor, indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    out = hidden.new_zeros(shape[0] * shape[1], *hidden.shape[1:])
    out[indices] = hidden
    return out.view(*shape, *hidden.shape[1:])


class PredictionHead(nn.Module):
    """dense -> act -> norm, shared by the MLM head and (as transformers does) the task heads."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.classifier_bias)
        self.act = activation(config.classifier_activation)
        self.norm = layer_norm(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class MmBertForMaskedLM(MmBertPreTrainedModel):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.model = MmBertModel(config)
        self.head = PredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)
        self.init_weights(skip="model.")

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.decoder.weight = self.model.embeddings.tok_embeddings.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> MaskedLMOutput:
        """Without labels: logits at every position. With labels (-100 = not predicted): the loss and the
        logits of the predicted positions only, (M, V) in flattened order - except when gradients are on,
        where the loss is fused with the decoder and no logits are returned."""
        hidden = self.model(
            input_ids, attention_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, position_ids=position_ids
        ).last_hidden_state
        if labels is None:
            return MaskedLMOutput(None, self.decoder(self.head(hidden)), hidden)
        flat_labels = labels.reshape(-1)
        selected = flat_labels != -100
        predicted = self.head(hidden.reshape(-1, hidden.shape[-1])[selected])  # (M, H)
        if predicted.shape[0] == 0:  # nothing masked in this batch: a zero loss that still has a graph
            return MaskedLMOutput(predicted.sum() * 0.0, None, hidden)
        if torch.is_grad_enabled() and predicted.requires_grad:
            loss = linear_cross_entropy(predicted, self.decoder.weight, self.decoder.bias, flat_labels[selected])
            return MaskedLMOutput(loss, None, hidden)
        logits = self.decoder(predicted)
        return MaskedLMOutput(F.cross_entropy(logits.float(), flat_labels[selected]), logits, hidden)
