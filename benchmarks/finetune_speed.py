"""Fine-tuning throughput: mmbert's step (unpadded, ``train.step.optimizer_step``) against a transformers loop
on ModernBertForSequenceClassification with padded batches (what ``Trainer`` does: a batch of examples
padded to its longest), same model weights, same examples per step, same process, alternated A B A B.

Texts are real and ragged: UDHR articles of the shipped corpus tokenised with the shipped tokenizer, cut to
``--max-length``; 32 examples per step, random order (as a fine-tuning epoch). Both run AdamW, fp32, cross-
entropy over 4 labels; tokens/s counts real tokens only. Prints the median of each and the ratio.

    python benchmarks/finetune_speed.py --preset mini --max-length 512 --rounds 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch


def examples(max_length: int, n: int, seed: int = 0) -> list[list[int]]:
    from mmbert.corpus import load_corpus
    from mmbert.tokenizer import Tokenizer

    tok = Tokenizer.default()
    texts = [r.text for r in load_corpus()]
    random.Random(seed).shuffle(texts)
    ids = tok.encode_batch(texts[:n], add_special_tokens=True)
    return [x[: max_length - 1] + [x[-1]] if len(x) > max_length else x for x in ids]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="mini")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    from mmbert.model import ModelConfig, MmBertForSequenceClassification
    from mmbert.tokenizer import Tokenizer
    from mmbert.train.finetune import get_task
    from mmbert.train.step import optimizer_step

    tok = Tokenizer.default()
    cfg = ModelConfig.from_preset(args.preset).replace(vocab_size=tok.vocab_size, num_labels=4,
                                                       pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    ours = MmBertForSequenceClassification(cfg).train()
    hf_cfg = transformers.ModernBertConfig(**{k: v for k, v in cfg.to_hf_dict().items()
                                              if k not in ("architectures", "model_type")},
                                           attn_implementation="sdpa")
    theirs = transformers.ModernBertForSequenceClassification(hf_cfg).train()
    missing = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not missing.missing_keys, missing.missing_keys
    seqs = examples(args.max_length, args.batch * (args.rounds + 1))
    labels = [i % 4 for i in range(len(seqs))]
    task = get_task("classification")
    opt_a = torch.optim.AdamW(ours.parameters(), lr=1e-5, foreach=False)
    opt_b = torch.optim.AdamW(theirs.parameters(), lr=1e-5, foreach=False)
    lengths = [len(s) for s in seqs]
    print(f"{args.preset}: {len(seqs)} texts, length mean {statistics.mean(lengths):.0f}, "
          f"max {max(lengths)}; {args.batch} per step; {args.threads} threads")

    def step_ours(batch):
        feats = [{"input_ids": seqs[i], "label": labels[i]} for i in batch]
        optimizer_step(ours, opt_a, [task.collate(feats)], task, device=torch.device("cpu"), grad_clip=1.0)

    def step_theirs(batch):
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), tok.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(batch):
            ids[r, :lengths[i]], mask[r, :lengths[i]] = torch.tensor(seqs[i]), 1
        loss = theirs(input_ids=ids, attention_mask=mask, labels=torch.tensor([labels[i] for i in batch])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)

    rates = {"mmbert (unpadded)": [], "transformers (padded)": []}
    batches = [list(range(k * args.batch, (k + 1) * args.batch)) for k in range(args.rounds + 1)]
    step_ours(batches[0])  # warm-up
    step_theirs(batches[0])
    for b in batches[1:]:
        tokens = sum(lengths[i] for i in b)
        for name, fn in (("mmbert (unpadded)", step_ours), ("transformers (padded)", step_theirs)):
            t0 = time.perf_counter()
            fn(b)
            rates[name].append(tokens / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in med.items():
        print(f"  {k:24s} {v:10,.0f} real tokens/s (median of {args.rounds})")
    pad = [max(lengths[i] for i in b) * len(b) / sum(lengths[i] for i in b) for b in batches[1:]]
    print(f"  ratio {med['mmbert (unpadded)'] / med['transformers (padded)']:.2f}x; the padded batches hold "
          f"{statistics.mean(pad):.2f}x their real tokens")


if __name__ == "__main__":
    main()
