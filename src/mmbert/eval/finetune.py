"""The fine-tuning loop every supervised task shares: AdamW with linear warm-up and decay, a fixed seed
(initialisation of the new head, shuffling, dropout), evaluation on a dev split every ``eval_every`` steps
and early stopping after ``patience`` evaluations without improvement; the best weights are restored.

Tasks hand it features (one dict of Python lists per example) and a ``collate`` that turns a list of
features into the model's keyword arguments, so the loop knows nothing of the task.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class FinetuneConfig:
    lr: float = 5e-5  # peak learning rate (mmBERT's GLUE sweeps: 1e-5 .. 8e-5 for base)
    batch_size: int = 16
    max_steps: int = 500  # upper bound; early stopping usually ends sooner
    eval_every: int = 50  # steps between dev evaluations
    patience: int = 3  # dev evaluations without improvement before stopping
    warmup_ratio: float = 0.06  # share of max_steps spent warming up linearly
    weight_decay: float = 0.01
    max_length: int = 128  # tokens per input sequence (QA: per window)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    best_score: float
    best_step: int
    steps: int
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, dev score)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def finetune(model: torch.nn.Module, features: list[dict], collate: Callable[[list[dict]], dict],
             dev_score: Callable[[torch.nn.Module], float], config: FinetuneConfig) -> FinetuneResult:
    """Train ``model`` in place on ``features``; ``dev_score(model)`` is higher-is-better."""
    if not features:
        raise ValueError("no training examples")
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    warmup = max(1, int(config.warmup_ratio * config.max_steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (config.max_steps - s) / max(1, config.max_steps - warmup))))
    best = FinetuneResult(best_score=float("-inf"), best_step=0, steps=0)
    best_state, bad, step = None, 0, 0
    while step < config.max_steps:
        order = torch.randperm(len(features), generator=generator).tolist()
        for start in range(0, len(order), config.batch_size):
            model.train()
            batch = collate([features[i] for i in order[start:start + config.batch_size]])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % config.eval_every == 0 or step == config.max_steps:
                model.eval()
                score = dev_score(model)
                best.history.append((step, score))
                if score > best.best_score:
                    best.best_score, best.best_step, bad = score, step, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad += 1
            if step >= config.max_steps or bad >= config.patience:
                break
        if bad >= config.patience:
            break
    best.steps = step
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best
