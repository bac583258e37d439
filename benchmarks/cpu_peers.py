"""mmbert on CPU against what CPU users deploy: one process, same weights, same tokens, alternated.

Contenders (each skipped with a note when its package is absent):
  mmbert-fp32 / -bf16 / -int8   ``MmBertModel.from_pretrained(ckpt, precision=...)``, one unpadded call (as
                                ``Encoder`` batches: all 32 texts fit its 16k-token budget)
  mmbert-bf16-autocast          the earlier bf16 path (fp32 weights under torch.autocast), for reference
  transformers-fp32             ``ModernBertModel`` (sdpa), one padded call of 32
  ort-fp32 / ort-int8           onnxruntime on our ONNX export (``mmbert export --to onnx [--quantize int8]``),
                                its best call: length-sorted batches of 16, each padded to its longest
  openvino-fp32 / -bf16         OpenVINO (``pip install 'mmbert[bench]'``) compiling the same ONNX file, same
                                batches as onnxruntime; -bf16 is its inference-precision hint bf16 (what it
                                picks by default on CPUs with AMX), -fp32 forces f32

Case: the preset's shape with the shipped 16k vocabulary (random weights, seeded), 32 sequences of lengths
uniform in 16..512 (``benchmarks/speed.py``'s ``infer-var`` batch: 8,552 real tokens). Prints one JSON line per
contender: median real tokens/s, ratio to mmbert-fp32 and to each peer, and fidelity to mmbert-fp32 (cosine
of the mean-pooled, L2-normalised embeddings: mean and min; max |diff| of the hidden states).

    python benchmarks/cpu_peers.py --preset mmbert-small --rounds 3
    python benchmarks/cpu_peers.py --preset mmbert-base --rounds 2 --skip transformers-fp32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.speed import make_batch  # noqa: E402
from mmbert import ModelConfig, MmBertModel  # noqa: E402
from mmbert.model.heads import mean_pool  # noqa: E402
from mmbert.model.modeling import unpad_input  # noqa: E402
from mmbert.model.precision import cpu_supports_bf16, cpu_supports_int8  # noqa: E402

SHIPPED_VOCAB = 16_384


def load_avg() -> str:
    return "%.2f %.2f %.2f" % os.getloadavg()  # 1, 5, 15 minutes, as `uptime` prints it


def make_checkpoint(preset: str, directory: Path) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, vocab_size=SHIPPED_VOCAB)
    MmBertModel(cfg).init_weights(seed=0).save_pretrained(directory)
    return directory


def sorted_batches(lengths: list[int], size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]


def contenders(ckpt: Path, ids: torch.Tensor, mask: torch.Tensor, lengths: list[int], skip: set[str], work: Path,
               ort_batch: int, threads: int):
    """name -> zero-argument function returning the (B, T, H) hidden states (zeros at pads, float32)."""
    flat, indices, cu = unpad_input(ids, mask)
    out: dict = {}
    notes: dict[str, str] = {}

    def mmbert(precision: str | None, autocast: bool = False):
        model = MmBertModel.from_pretrained(ckpt, precision=precision)

        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                hidden = model(flat, cu_seqlens=cu).last_hidden_state.float()
            padded = hidden.new_zeros(ids.numel(), hidden.shape[-1])
            padded[indices] = hidden
            return padded.view(*ids.shape, -1)
        return run

    out["mmbert-fp32"] = mmbert("fp32")
    if cpu_supports_bf16():
        out["mmbert-bf16"] = mmbert("bf16")
        out["mmbert-bf16-autocast"] = mmbert("fp32", autocast=True)
    else:
        notes["mmbert-bf16"] = "no native bf16 on this CPU"
    if cpu_supports_int8():
        out["mmbert-int8"] = mmbert("int8")
    else:
        notes["mmbert-int8"] = "no AMX / VNNI int8 on this CPU"

    if "transformers-fp32" not in skip:
        try:
            import transformers

            cfg = ModelConfig.load(ckpt)
            hf_cfg = transformers.ModernBertConfig(
                **{k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")},
                attn_implementation="sdpa")
            hf = transformers.ModernBertModel(hf_cfg).eval()
            hf.load_state_dict(MmBertModel.from_pretrained(ckpt).state_dict(), strict=False)

            def run_hf():
                with torch.inference_mode():
                    h = hf(input_ids=ids, attention_mask=mask).last_hidden_state
                return h * mask.unsqueeze(-1)
            out["transformers-fp32"] = run_hf
        except ImportError:
            notes["transformers-fp32"] = "transformers not installed"

    batches = sorted_batches(lengths, ort_batch)

    def batched(call):
        def run():
            hidden = torch.zeros(*ids.shape, ModelConfig.load(ckpt).hidden_size)
            for b in batches:
                t = max(lengths[i] for i in b)
                h = call(ids[b, :t].numpy(), mask[b, :t].numpy())
                hidden[b, :t] = torch.from_numpy(np.asarray(h))
            return hidden
        return run

    try:
        import onnxruntime as ort

        from mmbert.serve.export import export

        tok_dir = ckpt  # the export needs a tokenizer: the shipped one (16k) fits the shipped vocabulary
        for kind, quantize in (("ort-fp32", None), ("ort-int8", "int8")):
            if kind in skip:
                continue
            d = export(tok_dir, "onnx", work / kind, quantize=quantize, overwrite=True)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(d / "model.onnx"), opts, providers=["CPUExecutionProvider"])
            out[kind] = batched(lambda i, m, s=sess: s.run(["last_hidden_state"], {"input_ids": i,
                                                                                   "attention_mask": m})[0])
    except ImportError:
        notes["ort"] = "onnxruntime not installed"

    openvino_kinds = [k for k in ("openvino-fp32", "openvino-bf16") if k not in skip]
    if openvino_kinds:
        try:
            import openvino as ov

            onnx_path = work / "ort-fp32" / "model.onnx"
            if not onnx_path.is_file():
                from mmbert.serve.export import export

                export(ckpt, "onnx", work / "ort-fp32", overwrite=True)
            core = ov.Core()
            hint = {"openvino-fp32": "f32", "openvino-bf16": "bf16"}
            for kind in openvino_kinds:
                compiled = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                      "INFERENCE_PRECISION_HINT": hint[kind]})
                request = compiled.create_infer_request()
                out[kind] = batched(lambda i, m, r=request, o=compiled.output("last_hidden_state"):
                                    r.infer({"input_ids": i, "attention_mask": m})[o])
        except ImportError:
            for kind in openvino_kinds:
                notes[kind] = "openvino not installed (pip install 'mmbert[bench]')"
    return out, notes


def fidelity(hidden: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> dict:
    e = F.normalize(mean_pool(hidden, mask), dim=-1)
    r = F.normalize(mean_pool(ref, mask), dim=-1)
    cos = (e * r).sum(-1)
    real = mask.bool()
    return {"cos_mean": round(float(cos.mean()), 6), "cos_min": round(float(cos.min()), 6),
            "max_abs_diff": round(float((hidden[real] - ref[real]).abs().max()), 5)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mmbert-small")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ort-batch", type=int, default=16, help="onnxruntime/OpenVINO batch (length-sorted)")
    p.add_argument("--skip", nargs="*", default=[], help="contenders to leave out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ids, mask, lengths = make_batch("infer-var", SHIPPED_VOCAB)
    tokens = sum(lengths)
    print(json.dumps({"preset": args.preset, "real_tokens": tokens, "threads": args.threads,
                      "load_average_start": load_avg(), "torch": torch.__version__}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = make_checkpoint(args.preset, work / "ckpt")
        from mmbert.tokenizer import Tokenizer

        Tokenizer.default().save(ckpt)
        fns, notes = contenders(ckpt, ids, mask, lengths, set(args.skip), work, args.ort_batch, args.threads)
        for name, note in notes.items():
            print(json.dumps({"skipped": name, "why": note}), flush=True)
        outputs = {name: fn() for name, fn in fns.items()}  # warm-up, and the outputs for fidelity
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.rounds):  # A B C ... A B C: drift in machine load hits every contender alike
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(t) for name, t in times.items()}
    ref = outputs["mmbert-fp32"]
    rows = []
    for name in fns:
        row = {"contender": name, "tok_s": round(tokens / med[name]),
               "vs_mmbert_fp32": round(med["mmbert-fp32"] / med[name], 2), **fidelity(outputs[name], ref, mask)}
        for peer in ("transformers-fp32", "ort-fp32", "ort-int8", "openvino-fp32", "openvino-bf16"):
            if peer in med and name.startswith("mmbert"):
                row[f"x_{peer}"] = round(med[peer] / med[name], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"load_average_end": load_avg(), "rounds": args.rounds}), flush=True)


if __name__ == "__main__":
    main()
