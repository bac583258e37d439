"""Exports of a checkpoint for other runtimes; each writes a self-contained directory (weights + tokenizer).

- ``hf``: transformers' ModernBERT layout (config.json, model.safetensors, tokenizer.json,
  tokenizer_config.json, special_tokens_map.json). ``AutoModel`` / ``AutoModelForMaskedLM`` /
  ``AutoTokenizer`` load it offline. The MLM head is kept when the checkpoint has one.
- ``sentence-transformers``: the bare encoder in the ``hf`` layout plus modules.json
  (Transformer -> Pooling(mean) -> Normalize, the legacy class paths that load in old and new releases),
  sentence_bert_config.json and 1_Pooling/config.json (``model.st_layout``, also what ``mmbert finetune
  --task embedding`` writes). Its ``encode`` equals ``Encoder.encode``.
- ``onnx``: ``model.onnx`` for the embedding model, traced on the dense padded path (``unpad = False``: no
  data-dependent Python loops) with torch's legacy exporter (``dynamo=False``, opset 17), dynamic batch and
  sequence axes. Inputs ``input_ids``, ``attention_mask`` (int64, (B, T)); outputs ``last_hidden_state``
  (B, T, H; zeros at pads) and ``sentence_embedding`` (B, H; mean-pooled, L2-normalised). A fine-tuned task
  model (``mmbert finetune``; config.json's architecture) exports its head's outputs instead: ``logits``
  (sequence classification (B, C), token classification (B, T, C)) or ``start_logits`` / ``end_logits`` (QA,
  (B, T)). The tokenizer files sit beside it.
  ``quantize="int8"``: ``model.onnx`` is then the int8 model from onnxruntime's own
  dynamic quantiser (``onnxruntime.quantization.quantize_dynamic``: int8 weights per output channel,
  activations quantised per tensor at run time), for users who deploy on onnxruntime; same inputs and
  outputs. Its fidelity to fp32 is in benchmarks/README.md (``benchmarks/precision_fidelity.py``).
Writes go to a temporary sibling directory renamed into place, so a failed export leaves nothing half-done.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmbert.model import (
    CheckpointError,
    ModelConfig,
    MmBertForMaskedLM,
    MmBertForQuestionAnswering,
    MmBertForSequenceClassification,
    MmBertForTokenClassification,
    MmBertModel,
    mean_pool,
)
from mmbert.model.checkpoint import atomic_directory_write
from mmbert.model.st_layout import read_embedding_info, write_sentence_transformers_files
from mmbert.serve.encoder import load_tokenizer

FORMATS = ("hf", "sentence-transformers", "onnx")
QUANTIZE = ("int8",)
ONNX_OPSET = 17


def export(checkpoint: str | os.PathLike, to: str, out: str | os.PathLike, *, max_length: int | None = None,
           overwrite: bool = False, quantize: str | None = None) -> Path:
    writers: dict[str, Callable[[Path, Path, int | None], None]] = {
        "hf": _write_hf, "sentence-transformers": _write_sentence_transformers,
        "onnx": lambda ckpt, tmp, n: _write_onnx(ckpt, tmp, n, quantize),
    }
    if to not in writers:
        raise ValueError(f"unknown export format {to!r}; choose one of {list(FORMATS)}")
    if quantize is not None and (to != "onnx" or quantize not in QUANTIZE):
        raise ValueError(f"quantize={quantize!r}: only --to onnx --quantize int8 is supported (onnxruntime's "
                         "dynamic quantiser); mmbert's own int8 is `--precision int8` at load time")
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if out.resolve() == checkpoint.resolve():
        raise ValueError("the export directory must differ from the checkpoint directory")
    ModelConfig.load(checkpoint)  # fail early, with the config's own message
    return atomic_directory_write(out, lambda tmp: writers[to](checkpoint, tmp, max_length))


def _max_length(checkpoint: Path, max_length: int | None, tok) -> int:
    limit = ModelConfig.load(checkpoint).max_position_embeddings
    value = max_length or min(tok.model_max_length, limit)
    if not 1 <= value <= limit:
        raise ValueError(f"max_length must be in [1, {limit}], got {value}")
    return value


def _save_tokenizer(checkpoint: Path, out: Path, max_length: int | None) -> int:
    tok = load_tokenizer(checkpoint, ModelConfig.load(checkpoint).vocab_size)
    tok.model_max_length = _max_length(checkpoint, max_length, tok)
    tok.save(out)
    return tok.model_max_length


def _load_weights(checkpoint: Path, with_head: bool) -> nn.Module:
    if with_head:
        try:
            return MmBertForMaskedLM.from_pretrained(checkpoint)
        except CheckpointError:
            pass  # an encoder-only checkpoint
    return MmBertModel.from_pretrained(checkpoint)


def _write_hf(checkpoint: Path, out: Path, max_length: int | None, with_head: bool = True) -> int:
    model = _load_weights(checkpoint, with_head)
    model.save_pretrained(out, metadata={"exported_from": "mmbert"})
    return _save_tokenizer(checkpoint, out, max_length)


def _write_sentence_transformers(checkpoint: Path, out: Path, max_length: int | None) -> None:
    max_length = _write_hf(checkpoint, out, max_length, with_head=False)
    info = read_embedding_info(checkpoint)  # an embedding model keeps its trained (Matryoshka) sizes
    write_sentence_transformers_files(out, ModelConfig.load(checkpoint).hidden_size, max_length, info)


class OnnxEmbedding(nn.Module):
    """(input_ids, attention_mask) -> (last_hidden_state, sentence_embedding) on the dense padded path."""

    def __init__(self, encoder: MmBertModel):
        super().__init__()
        self.encoder = encoder
        self.encoder.unpad = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.encoder(input_ids, attention_mask).last_hidden_state  # (B, T, H)
        return hidden, F.normalize(mean_pool(hidden, attention_mask), dim=-1)  # (B, H)


class OnnxTask(nn.Module):
    """(input_ids, attention_mask) -> a fine-tuned head's outputs (``logits``, or QA's start / end logits)
    on the dense padded path."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.model.model.unpad = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids, attention_mask)
        return (out.start_logits, out.end_logits) if hasattr(out, "start_logits") else out.logits


TASK_HEADS = {"ModernBertForSequenceClassification": MmBertForSequenceClassification,
              "ModernBertForTokenClassification": MmBertForTokenClassification,
              "ModernBertForQuestionAnswering": MmBertForQuestionAnswering}


def _write_onnx(checkpoint: Path, out: Path, max_length: int | None, quantize: str | None = None) -> None:
    # Example long enough to cross a local window and with a padded row, so no branch is traced away.
    config = ModelConfig.load(checkpoint)
    arch = (config.extra.get("architectures") or [""])[0]
    if arch in TASK_HEADS:  # a fine-tuned task model: export what it predicts
        module = OnnxTask(TASK_HEADS[arch].from_pretrained(checkpoint)).eval()
        names = ["start_logits", "end_logits"] if arch.endswith("QuestionAnswering") else ["logits"]
        axes = {n: {0: "batch"} if arch.endswith("SequenceClassification") else {0: "batch", 1: "sequence"}
                for n in names}
    else:
        module = OnnxEmbedding(MmBertModel.from_pretrained(checkpoint)).eval()
        names = ["last_hidden_state", "sentence_embedding"]
        axes = {"last_hidden_state": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"}}
    t = min(config.local_attention + 8, config.max_position_embeddings)
    ids = torch.randint(5, config.vocab_size, (2, t), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, t, dtype=torch.long)
    mask[1, t // 2 :] = 0
    # rope.apply_rotary takes its exportable (torch.cat) branch while tracing; see its comment.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings of the legacy exporter
        torch.onnx.export(
            module, (ids, mask), str(out / "model.onnx"), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["input_ids", "attention_mask"], output_names=names,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          **axes},
        )
    if quantize == "int8":
        quantize_onnx_int8(out / "model.onnx", out / "model.onnx")
    arch = arch if arch in TASK_HEADS else "ModernBertModel"
    config.replace(extra={**config.extra, "architectures": [arch]}).save(out)
    _save_tokenizer(checkpoint, out, max_length)


def quantize_onnx_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic int8 quantisation of every MatMul (per-channel int8 weights); in place if
    ``source == target``."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ImportError("--quantize int8 needs onnxruntime (pip install 'mmbert[onnx]')") from e
    tmp = target.with_name(target.stem + ".int8.tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
    tmp.replace(target)
    for leftover in target.parent.glob("*-opt.onnx"):  # the quantiser's pre-processing copy, where it writes one
        leftover.unlink()
