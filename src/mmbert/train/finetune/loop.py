"""``fit``: the fine-tuning loop every task shares (the task only collates and computes its loss).

One step = one planned batch of at most ``batch_tokens`` tokens (``batches.py``), accumulated over
unpadded micro-batches by ``train.step.optimizer_step`` (loss scaled by the global unit count, no_sync,
bf16 autocast, clipping, the non-finite skip). LR: ``train.schedule.lr_at`` with linear warmup over
``warmup`` of the steps, then ``decay`` to 0 over the rest. AdamW with ``train.optim``'s parameter groups.

Dev evaluation every ``eval_every`` steps (or at each epoch end) calls the injected ``evaluate(model)``
(higher is better; it runs on rank 0 and the score is broadcast); the best weights are kept (in
``OUT/best`` when there is an output directory, else in memory) and restored at the end; after
``patience`` evaluations without improvement training stops early.

With an output directory the run is resumable: ``OUT/checkpoints/step-N`` are ``train.checkpoint``
checkpoints (atomic, checksummed, RNG states per rank) written at every evaluation (or every
``checkpoint_every`` steps), on SIGINT/SIGTERM, and before stopping on bad steps; calling ``fit`` again on the
same directory continues from the newest valid one, exactly: the data order is a pure function of the step
(``batches.plan``), the early-stopping state is in the trainer state. ``OUT`` is held with the run-dir lock.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from mmbert.model.checkpoint import WEIGHTS_NAME, atomic_directory_write
from mmbert.train import checkpoint as ckpt
from mmbert.train.config import OptimizerSection
from mmbert.train.finetune.batches import epoch_ends, micro_batches, plan
from mmbert.train.finetune.config import FinetuneConfig
from mmbert.train.metrics import MetricsLog, Progress
from mmbert.train.optim import autocast, build_optimizer, resolve_precision, set_lr
from mmbert.train.parallel import World, any_rank, barrier, broadcast_object, parallelize, unwrap
from mmbert.train.rundir import lock_run_dir
from mmbert.train.schedule import lr_at
from mmbert.train.step import optimizer_step
from mmbert.train.stop import StopOnSignal

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
BEST = "best"


@dataclass
class FitResult:
    steps: int  # optimizer steps taken (including skipped ones)
    total_steps: int  # steps the plan had
    best_score: float | None = None  # best dev score (None without an evaluate callable)
    best_step: int = 0  # the step whose weights the model holds at the end (0: the last step's, no dev)
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, dev score)
    stopped: str | None = None  # None: finished (maybe early-stopped); "signal" / "bad_steps": stopped, resumable
    early_stopped: bool = False  # patience ran out before the plan's end
    message: str = ""  # why it stopped
    tokens: int = 0  # training tokens processed (all ranks)
    skipped_steps: int = 0  # steps with a non-finite loss or gradient (no update)
    train_seconds: float = 0.0  # wall time of the training steps of this call (evaluation excluded)
    tokens_per_s: float = 0.0  # tokens / train_seconds of this call
    resumed_from: int | None = None  # the step of the checkpoint this call continued from

    @property
    def completed(self) -> bool:
        return self.stopped is None


def fit(model: torch.nn.Module, features: list[dict], task, cfg: FinetuneConfig, out_dir: str | Path | None = None,
        *, evaluate: Callable[[torch.nn.Module], float] | None = None, tokenizer=None, world: World | None = None
        ) -> FitResult:
    """Train ``model`` (a fresh task model on the CPU) on ``features`` with ``task``; on return it holds the
    best dev weights (or the last ones without ``evaluate``), unwrapped, in eval mode."""
    if not features:
        raise ValueError("no training examples")
    world = world or World()
    if out_dir is None:
        return _Fit(model, features, task, cfg, None, evaluate, tokenizer, world).run()
    out_dir = Path(out_dir)
    with lock_run_dir(out_dir, world):
        return _Fit(model, features, task, cfg, out_dir, evaluate, tokenizer, world).run()


class _Fit:
    def __init__(self, model, features, task, cfg, out_dir, evaluate, tokenizer, world):
        self.model, self.features, self.task, self.cfg = model, features, task, cfg
        self.out_dir, self.evaluate, self.tokenizer, self.world = out_dir, evaluate, tokenizer, world
        self.log_every = cfg.log_every
        self.lengths = [task.length(f) for f in features]
        # a task may plan its own steps (task.plan_epoch) and split them itself (task.micro_batches): the
        # embedding task counts examples without duplicate texts and needs a rank's share in one micro-batch
        own_plan = getattr(task, "plan_epoch", None)
        planner = (lambda e: own_plan(features, cfg.seed, e)) if own_plan is not None else None
        self.steps = plan(self.lengths, cfg.seed, cfg.epochs, cfg.batch_tokens, cfg.max_steps, planner)
        self.total = len(self.steps)
        self.ends = epoch_ends(self.lengths, cfg.seed, cfg.epochs, cfg.batch_tokens, self.total, planner)
        self.precision = resolve_precision(cfg.precision, world.device)
        self.state = {"step": 0, "tokens": 0, "best_score": None, "best_step": 0, "bad_evals": 0, "history": [],
                      "bad_steps": 0, "skipped": 0, "early_stopped": False}
        self.best_in_memory: dict | None = None

    # ---- run ------------------------------------------------------------------------------------------
    def run(self) -> FitResult:
        cfg, world = self.cfg, self.world
        torch.manual_seed(cfg.seed)  # dropout; a resume restores the saved RNG state instead
        model = self.model.to(world.device)
        model.train()
        ddp = parallelize(model, world, "ddp")
        opt_cfg = OptimizerSection(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                                   grad_clip=cfg.grad_clip)
        optimizer = build_optimizer(ddp, opt_cfg)
        resumed = self._resume(ddp, optimizer)
        on = self.out_dir is not None and world.is_main
        metrics = self.metrics = MetricsLog(self.out_dir or Path("."), enabled=on)
        result = FitResult(steps=self.state["step"], total_steps=self.total, resumed_from=resumed)
        bar = Progress(cfg.progress and world.is_main, self.total, self.state["step"], self.task.name)
        ac = lambda: autocast(self.precision, world.device)  # noqa: E731
        train_s, tokens_here, dev = 0.0, 0, self._last_score()
        try:
            with StopOnSignal() as stop:
                while self.state["step"] < self.total and not self.state["early_stopped"]:
                    s = self.state["step"]
                    lr = lr_at(s, self.total, cfg.lr, cfg.warmup, cfg.decay, 1.0 - _warmup_share(cfg, self.total))
                    set_lr(optimizer, lr)
                    t0 = time.perf_counter()
                    if hasattr(self.task, "micro_batches"):
                        groups = self.task.micro_batches(self.steps[s], world.rank, world.world_size)
                    else:
                        groups = micro_batches(self.steps[s], self.lengths, cfg.micro_batch_tokens, world.rank,
                                               world.world_size)
                    micro = [self.task.collate([self.features[i] for i in g]) for g in groups]
                    r = optimizer_step(ddp, optimizer, micro, self.task, device=world.device,
                                       world_size=world.world_size, autocast=ac, grad_clip=cfg.grad_clip)
                    dt = time.perf_counter() - t0
                    train_s, tokens_here = train_s + dt, tokens_here + r.tokens
                    self.state["step"] = s = s + 1
                    self.state["tokens"] += r.tokens
                    self.state["bad_steps"] = 0 if r.ok else self.state["bad_steps"] + 1
                    rec = {"step": s, "loss": r.loss, "lr": lr, "grad_norm": r.grad_norm,
                           "tokens": self.state["tokens"], "batch_tokens": r.tokens, "units": r.units,
                           "tokens_per_s": r.tokens / dt}
                    if not r.ok:
                        self.state["skipped"] += 1
                        metrics.write({"event": "skip", **rec, "bad_steps": self.state["bad_steps"]})
                        bar.write(f"step {s}: loss {r.loss} / grad norm {r.grad_norm} not finite; update skipped "
                                  f"({self.state['bad_steps']} in a row)")
                    elif s % self.log_every == 0 or s == self.total:
                        metrics.write(rec)
                    bar.update(loss=f"{r.loss:.4f}", dev="-" if dev is None else f"{dev:.4f}",
                               tok_s=f"{r.tokens / dt:,.0f}")
                    evaluated = False
                    if self.evaluate is not None and self._eval_due(s):
                        dev = self._evaluate(ddp, metrics)
                        evaluated = True
                    if self.state["bad_steps"] >= cfg.max_bad_steps:
                        path = self._checkpoint(ddp, optimizer)
                        msg = (f"stopped after {self.state['bad_steps']} consecutive steps with a non-finite loss or "
                               f"gradient (step {s}); lower lr (now {cfg.lr:g}), check the data, or use precision: "
                               f"fp32" + (f"; checkpoint {path}" if path else ""))
                        return self._stopped(result, "bad_steps", msg, metrics, bar)
                    if any_rank(stop.signal is not None, world.device):
                        path = self._checkpoint(ddp, optimizer)
                        msg = f"interrupted by a signal at step {s}" + (
                            f"; checkpoint {path}: run the same command again to continue" if path else "")
                        return self._stopped(result, "signal", msg, metrics, bar)
                    every = cfg.checkpoint_every
                    if s < self.total and not self.state["early_stopped"] and (
                            (every and s % every == 0) or (not every and evaluated)):
                        self._checkpoint(ddp, optimizer)
            bar.close()
            if self.state["early_stopped"]:
                metrics.write({"event": "early_stop", "step": self.state["step"],
                               "best_step": self.state["best_step"], "best_score": self.state["best_score"]})
            self._restore_best(ddp)
            metrics.write({"event": "end", "step": self.state["step"], "tokens": self.state["tokens"],
                           "best_step": self.state["best_step"], "best_score": self.state["best_score"]})
            return self._result(result, train_s, tokens_here)
        finally:
            bar.close()
            metrics.close()
            result.train_seconds = train_s
            result.tokens_per_s = tokens_here / train_s if train_s > 0 else 0.0
            unwrap(ddp).eval()

    # ---- evaluation and the best weights ---------------------------------------------------------------
    def _eval_due(self, step: int) -> bool:
        if step == self.total:
            return True
        every = self.cfg.eval_every
        return step % every == 0 if every else step in self.ends

    def _evaluate(self, ddp, metrics: MetricsLog) -> float:
        model = unwrap(ddp)
        model.eval()
        t0 = time.perf_counter()
        score = None
        if self.world.is_main:
            with torch.inference_mode():
                score = float(self.evaluate(model))
        score = broadcast_object(score)
        model.train()
        st = self.state
        st["history"].append([st["step"], score])
        improved = st["best_score"] is None or (math.isfinite(score) and score > st["best_score"])
        if improved:
            st["best_score"], st["best_step"], st["bad_evals"] = score, st["step"], 0
            self._save_best(model)
        else:
            st["bad_evals"] += 1
            if self.cfg.patience and st["bad_evals"] >= self.cfg.patience:
                st["early_stopped"] = True
        metrics.write({"event": "eval", "step": st["step"], "dev": score, "best": st["best_score"],
                       "best_step": st["best_step"], "eval_seconds": round(time.perf_counter() - t0, 3)})
        return score

    def _save_best(self, model) -> None:
        if self.out_dir is None:
            self.best_in_memory = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return
        if self.world.is_main:
            save_model_dir(self.out_dir / BEST, model, self.tokenizer)
        barrier()  # other ranks may read it back at the end

    def _restore_best(self, ddp) -> None:
        if self.state["best_step"] == 0 or self.state["best_step"] == self.state["step"]:
            return  # the model holds them already
        model = unwrap(ddp)
        if self.out_dir is None:
            if self.best_in_memory is not None:
                model.load_state_dict(self.best_in_memory)
            return
        ckpt.load_model_weights(self.out_dir / BEST, model)

    def _last_score(self):
        h = self.state["history"]
        return h[-1][1] if h else None

    # ---- checkpoints ---------------------------------------------------------------------------------
    def _checkpoint(self, ddp, optimizer) -> Path | None:
        if self.out_dir is None:
            return None
        root = self.out_dir / CHECKPOINTS
        path = ckpt.step_dir(root, self.state["step"])
        state = {**self.state, "total_steps": self.total, "config": _resume_key(self.cfg)}
        ckpt.save_checkpoint(path, ddp, optimizer, state, None, self.tokenizer)
        if self.world.is_main:
            ckpt.prune(root, self.cfg.keep_last)
        self.metrics.write({"event": "checkpoint", "step": self.state["step"], "path": str(path)})
        return path

    def _resume(self, ddp, optimizer) -> int | None:
        if self.out_dir is None:
            return None
        start = ckpt.latest_valid_checkpoint(self.out_dir / CHECKPOINTS)
        if start is None:
            return None
        saved = ckpt.read_trainer_state(start)
        if saved.get("total_steps") != self.total:
            raise ValueError(f"{start}: written by a run of {saved.get('total_steps')} steps, this one plans "
                             f"{self.total}: the data or the config changed; use another --out")
        if saved.get("config", _resume_key(self.cfg)) != _resume_key(self.cfg):
            changed = sorted(k for k, v in _resume_key(self.cfg).items() if saved["config"].get(k) != v)
            raise ValueError(f"{start}: written with other settings ({', '.join(changed)} differ); run the same "
                             "command to continue, or use another --out")
        ckpt.load_model_weights(start, ddp)
        ckpt.load_optimizer(start, ddp, optimizer)
        ckpt.restore_rank_state(saved, self.world.rank, self.world.world_size)
        self.state = {k: saved[k] for k in self.state}
        if self.world.is_main:
            log.info("resuming at step %d of %d from %s", self.state["step"], self.total, start)
        return self.state["step"]

    # ---- endings -------------------------------------------------------------------------------------
    def _stopped(self, result: FitResult, why: str, msg: str, metrics: MetricsLog, bar: Progress) -> FitResult:
        bar.close()
        metrics.write({"event": "stop", "step": self.state["step"], "reason": why, "message": msg})
        if self.world.is_main:
            log.warning(msg)
        result.stopped, result.message = why, msg
        return self._fill(result)

    def _result(self, result: FitResult, train_s: float, tokens: int) -> FitResult:
        return self._fill(result)

    def _fill(self, result: FitResult) -> FitResult:
        st = self.state
        result.steps, result.tokens, result.skipped_steps = st["step"], st["tokens"], st["skipped"]
        result.best_score, result.best_step = st["best_score"], st["best_step"]
        result.history = [tuple(h) for h in st["history"]]
        result.early_stopped = st["early_stopped"]
        return result


def _resume_key(cfg: FinetuneConfig) -> dict:
    """The settings a resume must share with the run it continues (not the display / device ones)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("progress", "device", "log_every")}


def _warmup_share(cfg: FinetuneConfig, total: int) -> float:
    return round(cfg.warmup * total) / total if total else 0.0


def save_model_dir(path: Path, model: torch.nn.Module, tokenizer=None) -> Path:
    """A task model directory in one atomic write: config.json (architecture, labels), model.safetensors,
    the tokenizer files: what ``AutoModelFor*.from_pretrained`` and ``mmbert predict`` load."""
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("decoder.weight", None)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in state.items()}
    config = model.config.replace(extra={**model.config.extra, "architectures": [model.architecture]})

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        config.save(tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)

    return atomic_directory_write(Path(path), write, checksums=True)
