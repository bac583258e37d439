"""The recipe's evaluation of one checkpoint (issue #19: all corpus languages in <= 15 s), and its loss against
the plain cross-entropy it replaced, in one process.

    python benchmarks/heldout_eval.py --checkpoint runs/miniature/merged --rounds 3

(a) ``eval.udhr.heldout_and_bitext`` over every corpus version's held-out articles 25-30 (first 128 tokens, 15%
    masked, bf16 where the CPU has it): one forward gives the per-language loss and the bitext vectors. The held-out
    set is built once (the first call, reported apart), then each round re-evaluates it, as the recipe does for
    each checkpoint. Without ``--checkpoint``: a freshly initialised ``mini`` model (same shapes, same cost).
(b) The per-token loss of one evaluation batch's masked rows (``model.loss.token_cross_entropy``: ``cross_entropy``
    in chunks of ~8M logits) against its peer, ``F.cross_entropy`` over the whole (M, V) block of the same bf16
    logits (what the evaluation did first), alternated; ratio and max |diff|.
Benchmark alone: two torch processes on 2 cores slow each other 4-9x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def plain_token_loss(hidden, weight, bias, labels):
    """The peer: one bf16 matmul, the bias in fp32, cross_entropy over the whole fp32 block."""
    logits = (hidden.bfloat16() @ weight.bfloat16().T).float()
    if bias is not None:
        logits = logits + bias.float()
    return F.cross_entropy(logits, labels, reduction="none")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="an MLM checkpoint folder (default: a fresh mini model)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    from mmbert.corpus import load_corpus
    from mmbert.eval.udhr import heldout_and_bitext
    from mmbert.model import MmBertForMaskedLM, ModelConfig
    from mmbert.model.loss import token_cross_entropy
    from mmbert.tokenizer import Tokenizer
    from mmbert.train.optim import autocast, resolve_precision

    device = torch.device("cpu")
    precision = resolve_precision("auto", device)
    ctx = lambda: autocast(precision, device)  # noqa: E731
    records = load_corpus()
    if args.checkpoint:
        model, tok = MmBertForMaskedLM.from_pretrained(args.checkpoint), Tokenizer.from_file(args.checkpoint)
    else:
        torch.manual_seed(0)
        tok = Tokenizer.default()
        model = MmBertForMaskedLM(ModelConfig.from_preset("mini", tok))
    t = time.perf_counter()
    heldout, _ = heldout_and_bitext(model, tok, records=records, seq_len=128, autocast=ctx)
    first = time.perf_counter() - t
    times = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        heldout_and_bitext(model, tok, records=records, seq_len=128, autocast=ctx)
        times.append(time.perf_counter() - t)
    n_lang = heldout["average"]["languages"]
    print(f"(a) evaluation of {n_lang} languages, precision {precision}: first call {first:.1f} s (builds the set), "
          f"then {', '.join(f'{x:.1f}' for x in times)} s (median {statistics.median(times):.1f} s; target <= 15 s)")

    # (b) the masked rows of one evaluation batch
    from mmbert.eval.heldout import _SETS

    batch = next(iter(_SETS.values()))[1].batches[0]
    with torch.no_grad(), ctx():
        hidden = model.model(batch["input_ids"], cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"],
                             position_ids=batch["position_ids"]).last_hidden_state
        rows = model.head(hidden[batch["labels"] != -100]).float()
    w, b, y = model.decoder.weight.detach(), model.decoder.bias, batch["target"]
    b = None if b is None else b.detach()
    ours, peer = [], []
    for _ in range(5):
        for fn, out in ((lambda: token_cross_entropy(rows, w, b, y), ours),
                        (lambda: plain_token_loss(rows, w, b, y), peer)):
            with torch.no_grad(), ctx():
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
    with torch.no_grad(), ctx():
        diff = (token_cross_entropy(rows, w, b, y) - plain_token_loss(rows, w, b, y)).abs().max().item()
    a, c = statistics.median(ours) * 1e3, statistics.median(peer) * 1e3
    print(f"(b) loss of {rows.shape[0]} masked rows x {w.shape[0]} classes: token_cross_entropy {a:.0f} ms, "
          f"plain cross_entropy {c:.0f} ms -> {c / a:.2f}x (max |diff| {diff:.1e})")


if __name__ == "__main__":
    main()
