"""The streaming merge: checkpoint directories in, one checkpoint directory out, one tensor at a time.

For each tensor name (in the reference file's order) the runner reads that tensor from the base and every
model, merges it with ``mmbert.merge.methods`` and appends the result to the output file, whose header was
written before any merging. Peak memory, in units of the largest tensor S (in float32):

- ties:                 base + N task vectors + one transient (a file's pages while copying out, or the
                        |τ| copy ``trim`` partitions)                               ≈ (N + 2) S
- task_arithmetic:      base + accumulator + the model being read (+ its pages)     ≈ 4 S, any N
- linear:               accumulator + the model being read (+ its pages)            ≈ 3 S, any N

plus the interpreter. Nothing is ever N × the model.

Vocabulary extension (``mmbert adapt``): inputs may differ in ``vocab_size`` only, by appending rows. The output
takes the largest vocabulary, and config and tokenizer files from the input that has it. Vocabulary-indexed
tensors (those whose first dimension is the vocabulary size: embeddings, decoder bias) are merged on the rows
every input has; the rows beyond them come unchanged from the one input that has them (two inputs extending
the vocabulary are refused: their new rows need not mean the same pieces).

The output directory (model.safetensors, config.json, tokenizer files) is built in a temporary sibling and
renamed into place, so a crash never leaves a half-written checkpoint under the target name. The merge's
provenance goes into the safetensors metadata: ``merge_method`` and ``merge`` (JSON: method, parameters,
each input's path, weight and the sha256 of its model.safetensors).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmbert.merge import methods
from mmbert.merge.safetensors_io import TensorInfo, read_header, read_tensor, sha256_file, write_streaming
from mmbert.model.checkpoint import atomic_directory_write
from mmbert.model.config import ModelConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Copied from the reference directory (base, else first model) when present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
# Fields that define the network's shapes and graph; inputs must agree on all of them. Rope thetas, norm
# eps, dropouts, token ids and the like are taken from the reference config without comparison.
ARCHITECTURE_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "hidden_activation", "global_attn_every_n_layers", "local_attention", "norm_bias", "attention_bias",
    "mlp_bias", "decoder_bias", "classifier_bias", "tie_word_embeddings",
)
# mergekit's defaults: ties and linear normalise by the (agreeing) weights, task arithmetic does not.
DEFAULT_NORMALIZE = {"linear": True, "task_arithmetic": False, "ties": True}


@dataclass(frozen=True)
class MergeSpec:
    """A merge's method and parameters, with mergekit's names (``lambda`` is ``lambda_`` in Python)."""

    method: str  # "linear" | "task_arithmetic" | "ties"
    weights: tuple[float, ...]  # one per model; default 1.0 each
    density: float | None = None  # ties only: fraction of each task vector kept, per tensor
    lambda_: float = 1.0  # task_arithmetic / ties: scale of the merged task vector
    normalize: bool = True  # divide by the (agreeing) weights' sum; see DEFAULT_NORMALIZE

    @classmethod
    def resolve(
        cls,
        method: str,
        n_models: int,
        weights: Sequence[float] | None = None,
        density: float | None = None,
        lambda_: float | None = None,
        normalize: bool | None = None,
        has_base: bool = True,
    ) -> "MergeSpec":
        """Fill defaults and reject parameters that do not apply, naming them."""
        if method not in methods.METHODS:
            raise ValueError(f"unknown merge method {method!r}; choose one of {list(methods.METHODS)}")
        if n_models < 1:
            raise ValueError("a merge needs at least one model")
        if method != "linear" and not has_base:
            raise ValueError(f"{method} needs a base model (task vectors are taken against it)")
        weights = tuple(float(w) for w in (weights if weights is not None else [1.0] * n_models))
        if len(weights) != n_models:
            raise ValueError(f"got {len(weights)} weights for {n_models} models")
        if method == "ties":
            if density is None:
                raise ValueError("ties needs a density (the fraction of each task vector kept, e.g. 0.2)")
            methods.keep_count(1, density)  # range check
        elif density is not None:
            raise ValueError(f"density applies only to ties, not {method}")
        if method == "linear" and lambda_ is not None:
            raise ValueError("lambda applies to task_arithmetic and ties, not linear")
        normalize = DEFAULT_NORMALIZE[method] if normalize is None else bool(normalize)
        return cls(method, weights, None if density is None else float(density),
                   1.0 if lambda_ is None else float(lambda_), normalize)

    def parameters(self) -> dict[str, object]:
        """mergekit-named parameters, for provenance."""
        d = {"normalize": self.normalize}
        if self.method != "linear":
            d["lambda"] = self.lambda_
        if self.method == "ties":
            d["density"] = self.density
        return d


def merge(
    method: str,
    models: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    base: str | os.PathLike | None = None,
    weights: Sequence[float] | None = None,
    density: float | None = None,
    lambda_: float | None = None,
    normalize: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge checkpoint directories into ``out`` and return its path (see the module doc and ``methods``).

    ``base`` is required for task_arithmetic and ties. For linear it is optional and *not* averaged: it
    only supplies config and tokenizer files (list it in ``models`` to average it too).
    """
    model_dirs = [Path(m).resolve() for m in models]
    base_dir = Path(base).resolve() if base is not None else None
    spec = MergeSpec.resolve(method, len(model_dirs), weights, density, lambda_, normalize, base_dir is not None)
    out = Path(out).resolve()
    inputs = ([base_dir] if base_dir is not None else []) + model_dirs
    if out in inputs:
        raise ValueError(f"the output {out} is one of the inputs")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    for d in inputs:
        if not (d / WEIGHTS_NAME).is_file():
            extra = " (sharded checkpoints are not supported)" if (d / f"{WEIGHTS_NAME}.index.json").is_file() else ""
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {d}{extra}")
        if not (d / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {d}")
    vocab = check_configs(inputs)
    reference = vocab.source if vocab is not None else inputs[0]
    layout = check_tensors(inputs, vocab)

    provenance = {
        "method": spec.method,
        "parameters": spec.parameters(),
        "base": None if base_dir is None else {"path": str(base_dir), "sha256": sha256_file(base_dir / WEIGHTS_NAME)},
        "models": [
            {"path": str(d), "weight": w, "sha256": sha256_file(d / WEIGHTS_NAME)}
            for d, w in zip(model_dirs, spec.weights)
        ],
        "tie_breaking": "trim keeps floor(density*n) per tensor, ties at the threshold in row-major order; "
                        "a zero sum elects +1",
        "mmbert_version": _version(),
    }
    if vocab is not None:
        provenance["vocabulary"] = {"merged_rows": vocab.common, "rows": vocab.size,
                                    "rows_beyond_from": str(vocab.source)}
    metadata = {"format": "pt", "merge_method": spec.method, "merge": json.dumps(provenance, sort_keys=True)}

    def write(tmp: Path) -> None:
        tensors = _merged_tensors(spec, base_dir, model_dirs, layout, vocab)
        write_streaming(tmp / WEIGHTS_NAME, layout, tensors, metadata)
        for name in (CONFIG_NAME, *TOKENIZER_FILES):
            if (reference / name).is_file():
                shutil.copyfile(reference / name, tmp / name)

    return atomic_directory_write(out, write)


@dataclass(frozen=True)
class VocabExtension:
    """Inputs whose vocabularies differ: rows ``[:common]`` are merged, ``[common:size]`` come from ``source``."""

    common: int  # the smallest vocabulary among the inputs
    size: int  # the largest: the output's
    source: Path  # the one input with the largest vocabulary


def check_configs(dirs: Sequence[Path]) -> VocabExtension | None:
    """All configs agree on ``ARCHITECTURE_FIELDS`` (the error names the first field that differs), except that
    one input may extend the vocabulary of the others; then the extension is returned."""
    configs = [ModelConfig.load(d / CONFIG_NAME) for d in dirs]
    ref = configs[0]
    for d, cfg in zip(dirs[1:], configs[1:]):
        for field in ARCHITECTURE_FIELDS:
            a, b = getattr(ref, field), getattr(cfg, field)
            if a != b and field != "vocab_size":
                raise ValueError(
                    f"config mismatch: {field} is {a!r} in {dirs[0] / CONFIG_NAME} but {b!r} in {d / CONFIG_NAME}"
                )
    sizes = [c.vocab_size for c in configs]
    if len(set(sizes)) == 1:
        return None
    big = [d for d, n in zip(dirs, sizes) if n == max(sizes)]
    if len(set(sizes)) > 2 or len(big) > 1:
        raise ValueError("config mismatch: vocab_size is " + ", ".join(f"{n} in {d}" for d, n in zip(dirs, sizes))
                         + "; only one input may extend the vocabulary of the others")
    return VocabExtension(min(sizes), max(sizes), big[0])


def _vocab_rows(name: str, info: TensorInfo, other: TensorInfo, vocab: VocabExtension | None) -> bool:
    """Is ``name`` vocabulary-indexed, with ``info`` the larger vocabulary's and ``other`` the smaller's shape?"""
    return (vocab is not None and len(info.shape) >= 1 and info.shape[0] == vocab.size
            and other.shape == (vocab.common, *info.shape[1:]))


def check_tensors(dirs: Sequence[Path], vocab: VocabExtension | None = None) -> dict[str, TensorInfo]:
    """Same tensor names, shapes and dtypes in every input (vocabulary-indexed tensors may be shorter by the
    extension's rows); returns the reference layout (file order; with an extension, that input's)."""
    ref_dir = vocab.source if vocab is not None else dirs[0]
    ref_path = ref_dir / WEIGHTS_NAME
    layout, _ = read_header(ref_path)
    for d in dirs:
        if d == ref_dir:
            continue
        path = d / WEIGHTS_NAME
        other, _ = read_header(path)
        missing = [k for k in layout if k not in other]
        if missing:
            raise ValueError(f"tensor {missing[0]!r} is in {ref_path} but not in {path} ({len(missing)} missing)")
        extra = [k for k in other if k not in layout]
        if extra:
            raise ValueError(f"tensor {extra[0]!r} is in {path} but not in {ref_path} ({len(extra)} extra)")
        for name, info in layout.items():
            o = other[name]
            if o.shape != info.shape and not _vocab_rows(name, info, o, vocab):
                raise ValueError(f"tensor {name!r}: shape {list(info.shape)} in {ref_path} but {list(o.shape)} in {path}")
            if o.dtype != info.dtype:
                raise ValueError(f"tensor {name!r}: dtype {info.dtype} in {ref_path} but {o.dtype} in {path}")
    return layout


def _merged_tensors(
    spec: MergeSpec, base_dir: Path | None, model_dirs: Sequence[Path], layout: dict[str, TensorInfo],
    vocab: VocabExtension | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    for name, info in layout.items():
        dtype = info.torch_dtype
        if not dtype.is_floating_point:
            yield name, _unmergeable(name, [d for d in [base_dir, *model_dirs] if d is not None])
            continue
        cdt = methods.compute_dtype(dtype)
        rows = vocab is not None and len(info.shape) >= 1 and info.shape[0] == vocab.size
        if rows:
            yield name, _extended(spec, base_dir, model_dirs, name, cdt, vocab).to(dtype)
            continue
        # A generator, so each model tensor is read only when the method reaches it.
        models = (read_tensor(d / WEIGHTS_NAME, name, cdt) for d in model_dirs)
        if spec.method == "linear":
            merged = methods.linear(models, spec.weights, spec.normalize, inplace=True)
        else:
            base = read_tensor(base_dir / WEIGHTS_NAME, name, cdt)
            if spec.method == "task_arithmetic":
                merged = methods.task_arithmetic(base, models, spec.weights, spec.lambda_, spec.normalize, inplace=True)
            else:
                merged = methods.ties(base, models, spec.weights, spec.density, spec.lambda_, spec.normalize,
                                      inplace=True)
            del base
        yield name, merged.to(dtype)
        del merged


def _extended(spec: MergeSpec, base_dir: Path | None, model_dirs: Sequence[Path], name: str, cdt: torch.dtype,
              vocab: VocabExtension) -> torch.Tensor:
    """A vocabulary-indexed tensor: the shared rows merged as any tensor, the extension's rows copied."""
    def common(d: Path) -> torch.Tensor:
        return read_tensor(d / WEIGHTS_NAME, name, cdt)[: vocab.common]

    models = (common(d) for d in model_dirs)
    if spec.method == "linear":
        merged = methods.linear(models, spec.weights, spec.normalize, inplace=True)
    elif spec.method == "task_arithmetic":
        merged = methods.task_arithmetic(common(base_dir), models, spec.weights, spec.lambda_, spec.normalize,
                                         inplace=True)
    else:
        merged = methods.ties(common(base_dir), models, spec.weights, spec.density, spec.lambda_, spec.normalize,
                              inplace=True)
    beyond = read_tensor(vocab.source / WEIGHTS_NAME, name, cdt)[vocab.common :]
    return torch.cat([merged, beyond])


def _unmergeable(name: str, dirs: Sequence[Path]) -> torch.Tensor:
    """Integer / bool tensors (buffers) cannot be averaged: they must be equal, and are copied."""
    ref = read_tensor(dirs[0] / WEIGHTS_NAME, name)
    for d in dirs[1:]:
        if not torch.equal(ref, read_tensor(d / WEIGHTS_NAME, name)):
            raise ValueError(f"tensor {name!r} ({ref.dtype}) differs between {dirs[0]} and {d}; it cannot be merged")
    return ref


def _version() -> str:
    from mmbert import __version__

    return __version__


__all__ = ["ARCHITECTURE_FIELDS", "MergeSpec", "VocabExtension", "check_configs", "check_tensors", "merge"]
