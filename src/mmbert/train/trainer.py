"""The phased MLM trainer: mmBERT's schedule of phases and decay variants, exact resume, DDP/FSDP2.

One step: the global batch of the phase (tokens, possibly warming up) is split into micro-batches of
``micro_batch_tokens`` per rank; each micro-batch's summed token loss is scaled by
``world_size / predicted tokens of the whole step on all ranks``, so after DDP's gradient average the
gradient is that of the mean loss over every predicted token of the global batch — the same as one
process accumulating the same micro-batches. A step whose global loss or gradient norm is not finite
changes no weight and is logged; after ``max_bad_steps`` in a row the run checkpoints and stops.

Between phases only the sequence length, RoPE thetas, languages, τ, mask ratio, batch and LR shape
change: weights and AdamW state carry over unchanged (context extension as in ModernBERT/mmBERT).
The stages, their directories and the resume rules are in ``phases.py``; the checkpoint format in
``checkpoint.py``. SIGINT/SIGTERM finish the current step, write a checkpoint and return.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from mmbert.model import MmBertForMaskedLM, ModelConfig
from mmbert.model.checkpoint import is_disk_full
from mmbert.model.config import tokenizer_fields
from mmbert.train import checkpoint as ckpt
from mmbert.train.batches import Corpus, build_source, load_heldout_texts, prepare_corpus
from mmbert.train.config import TrainConfig, load_config
from mmbert.train.hooks import TrainerHooks
from mmbert.train.metrics import MetricsLog, Progress
from mmbert.train.optim import autocast, build_optimizer, resolve_precision, set_lr
from mmbert.train.parallel import (
    World,
    any_rank,
    barrier,
    destroy_distributed,
    init_distributed,
    is_fsdp,
    parallelize,
    unwrap,
)
from mmbert.train.phases import Stage, plan_stages, resolve_languages, sampling_sizes
from mmbert.train.rundir import lock_run_dir
from mmbert.train.speed import set_threads
from mmbert.train.stop import StopOnSignal
from mmbert.train.schedule import batch_tokens_at, lr_at, phase_steps
from mmbert.train.step import MlmTask, optimizer_step

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path  # the run directory
    phase_checkpoints: dict[str, Path] = field(default_factory=dict)  # phase name -> its final checkpoint
    variant_checkpoints: dict[str, Path] = field(default_factory=dict)  # decay variant name -> its final checkpoint
    step: int = 0  # optimizer steps taken by the last stage run (global count)
    tokens: int = 0  # tokens seen by the last stage run (global count)
    stopped: str | None = None  # None: all stages done; "signal" or "bad_steps": stopped early with a checkpoint
    message: str = ""  # why it stopped
    last_checkpoint: Path | None = None  # the newest checkpoint written or found

    @property
    def completed(self) -> bool:
        return self.stopped is None


def train(config: TrainConfig | str | Path, run_dir: str | Path, resume: bool = False,
          overrides: list[str] | None = None, hooks: TrainerHooks = TrainerHooks()) -> TrainResult:
    """Train every stage of ``config`` into ``run_dir`` (a YAML path or a TrainConfig; ``overrides`` are
    ``key=value`` strings for a path). With ``resume``, continue from the newest complete checkpoint.
    ``hooks`` resolve what the config names but the trainer does not know (``hooks.py``): the shipped
    corpus and mmBERT's tables come with ``mmbert.recipe.training.train``."""
    cfg = config if isinstance(config, TrainConfig) else load_config(config, overrides)
    started_here = not torch.distributed.is_initialized()
    world = init_distributed(cfg.device)
    try:
        with lock_run_dir(Path(run_dir), world):  # one writer per run directory
            result = Trainer(cfg, Path(run_dir), world, hooks).run(resume)
        if started_here:
            # every rank done before any tears its process group down (destroying a gloo group is not collective).
            # This did not cure the rare rank abort at exit; that is exit_process's (train/parallel.py).
            # Only on success: after an error the peers may never arrive, and a barrier would hang them.
            barrier()
        return result
    finally:
        if started_here:
            destroy_distributed()


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, world: World, hooks: TrainerHooks = TrainerHooks()):
        self.cfg, self.run_dir, self.world, self.hooks = cfg, run_dir, world, hooks
        self.precision = resolve_precision(cfg.precision, world.device)
        self.metrics: MetricsLog | None = None
        self.step = 0
        self.tokens = 0
        self.bad_steps = 0

    # ---- set-up -----------------------------------------------------------------------------------------
    def _tokenizer(self):
        if self.cfg.data.synthetic and self.cfg.tokenizer is None:
            return None
        from mmbert.tokenizer import Tokenizer

        return Tokenizer.from_file(self.cfg.tokenizer) if self.cfg.tokenizer else Tokenizer.default()

    def _model_config(self, tokenizer) -> ModelConfig:
        m = self.cfg.model
        config = ModelConfig.load(m.config) if m.config else ModelConfig.from_preset(m.preset)
        overrides = dict(m.overrides)
        if tokenizer is not None:
            if "vocab_size" in overrides and overrides["vocab_size"] != tokenizer.vocab_size:
                raise ValueError(f"model.overrides.vocab_size={overrides['vocab_size']} but the tokenizer has "
                                 f"{tokenizer.vocab_size} tokens")
            overrides = {**tokenizer_fields(tokenizer), **overrides}
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
        if unknown:
            raise ValueError(f"model.overrides: unknown ModelConfig field {unknown[0]!r}")
        return config.replace(**overrides)

    def _check_run_dir(self, stages: list[Stage], resume: bool) -> None:
        existing = [s.dir for s in stages if s.dir.exists() and any(s.dir.iterdir())]
        if existing and not resume:
            raise ValueError(f"run directory {self.run_dir} already holds training output ({existing[0]}); "
                             "pass --resume to continue it or choose another --out")

    def _write_config(self) -> None:
        path = self.run_dir / "config.yaml"
        text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False, allow_unicode=True)
        if path.is_file() and path.read_text() != text:
            path = self.run_dir / f"config.resumed-{int(time.time())}.yaml"
        path.write_text(text)

    # ---- run --------------------------------------------------------------------------------------------
    def run(self, resume: bool) -> TrainResult:
        cfg, world = self.cfg, self.world
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        if world.device.type == "cpu" and cfg.threads:
            set_threads(cfg.threads)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = self._tokenizer()
        model_config = self._model_config(tokenizer)
        stages = plan_stages(cfg, self.run_dir, model_config.global_rope_theta, model_config.local_rope_theta)
        self._check_run_dir(stages, resume)
        if world.is_main:
            self._write_config()
        barrier()
        corpora = {m: prepare_corpus(cfg, self.run_dir, world, self.hooks, manifest=m)
                   for m in dict.fromkeys(s.phase.manifest for s in stages)}  # one per distinct manifest, in order
        self.metrics = MetricsLog(self.run_dir, enabled=world.is_main)
        result = TrainResult(self.run_dir)
        try:
            todo = []
            for s in stages:
                if (s.final / ckpt.TRAINER_STATE).is_file():
                    self._record(result, s)
                else:
                    todo.append(s)
            if not todo:
                return result
            torch.manual_seed(cfg.seed)
            model = MmBertForMaskedLM(model_config)
            if cfg.model.init_from:
                ckpt.load_model_weights(Path(cfg.model.init_from), model)
            model.to(world.device)
            model.train()
            model = parallelize(model, world, cfg.parallel)
            optimizer = build_optimizer(model, cfg.optimizer)
            live: Path | None = None  # the stage dir whose final state the in-memory model holds
            with StopOnSignal() as stop:
                for stage in todo:
                    start = self._start_point(stage, resume, live)
                    data_state, stage_step = None, 0
                    if start is not None:
                        ckpt.load_model_weights(start, model)
                        ckpt.load_optimizer(start, model, optimizer)
                        data_state, stage_step = self._restore(start, stage)
                    if self._run_stage(stage, model, optimizer, tokenizer, corpora[stage.phase.manifest], data_state, stage_step, stop, result):
                        return result
                    live = stage.dir
                    self._record(result, stage)
                    resume = True  # later stages may hold partial output of an earlier attempt
            return result
        except OSError as e:
            if is_disk_full(e):
                self._disk_full(e)
            raise
        finally:
            self.metrics.close()

    def _disk_full(self, e: OSError) -> None:
        """Log a ``stop`` event when the disk still takes one line (the files on disk are consistent)."""
        try:
            self.metrics.write({"event": "stop", "step": self.step, "reason": "disk_full",
                                "message": f"{e}: free space and --resume"})
        except OSError:
            pass

    def _record(self, result: TrainResult, stage: Stage) -> None:
        if stage.variant:
            result.variant_checkpoints[stage.variant] = stage.final
        else:
            result.phase_checkpoints[stage.phase.name] = stage.final
        result.last_checkpoint = stage.final

    def _start_point(self, stage: Stage, resume: bool, live: Path | None) -> Path | None:
        """The checkpoint to load before running ``stage`` (None: keep the model as it is)."""
        if resume:
            latest = ckpt.latest_valid_checkpoint(stage.checkpoints)
            if latest is not None:
                return latest
        if stage.parent is None:
            if live is not None:  # a second variant of a single-phase run: start from the initial model again
                raise RuntimeError(f"stage {stage.label} has no parent phase to start from; decay variants need "
                                   "a phase before them")
            self.step = self.tokens = self.bad_steps = 0
            return None
        if live == stage.parent:
            return None  # the previous phase just ended in this process: its final state is in memory
        if not (stage.parent / "final" / ckpt.TRAINER_STATE).is_file():
            raise RuntimeError(f"stage {stage.label} needs {stage.parent / 'final'}, which does not exist")
        return stage.parent / "final"

    def _restore(self, start: Path, stage: Stage) -> tuple[dict | None, int]:
        """Counters and RNG from ``start``; (data state, stage step) when ``start`` is inside ``stage``."""
        state = ckpt.read_trainer_state(start)
        data_state = ckpt.restore_rank_state(state, self.world.rank, self.world.world_size)
        self.step, self.tokens = state["step"], state["tokens"]
        inside = state["stage_index"] == stage.index and not state.get("stage_done", False)
        self.bad_steps = state["bad_steps"] if inside else 0
        if self.world.is_main:
            log.info("%s starts at step %d from %s", stage.label, self.step, start)
        return (data_state, state["stage_step"]) if inside else (None, 0)

    # ---- one stage ----------------------------------------------------------------------------------------
    def _run_stage(self, stage: Stage, model, optimizer, tokenizer, corpus: Corpus, data_state: dict | None,
                   stage_step: int, stop: StopOnSignal, result: TrainResult) -> bool:
        """Train ``stage`` from ``stage_step``; True when the run stopped early (signal, bad steps)."""
        cfg, world, phase = self.cfg, self.world, stage.phase
        set_rope(model, stage.global_rope_theta, stage.local_rope_theta, phase.seq_len)
        languages = resolve_languages(phase.languages, corpus.sizes, self.hooks)
        sizes = sampling_sizes(phase, languages, corpus.sizes, self.hooks)
        target = phase.global_batch_tokens
        # a micro-batch never holds more than a rank's share of the global batch, so a phase with a smaller batch
        # (the miniature's decay at 2,048 tokens beside micro_batch_tokens 4,096) needs no second setting
        rows = max(1, min(cfg.micro_batch_tokens, target // world.world_size) // phase.seq_len)
        unit = rows * phase.seq_len * world.world_size  # tokens of one micro-batch on every rank
        if target % unit:
            raise ValueError(f"phase {phase.name!r}: global batch {target} tokens is not a multiple of one micro-batch "
                             f"on every rank ({rows} rows x {phase.seq_len} x {world.world_size} ranks = {unit}); "
                             "change batch_tokens/batch_rows or micro_batch_tokens")
        total = phase_steps(phase.steps, phase.tokens, target)
        source = build_source(corpus, tokenizer, languages=languages, sizes=sizes, tau=phase.tau,
                              mask_ratio=phase.mask_ratio, seq_len=phase.seq_len, rows=rows,
                              seed=cfg.seed * 1_000_003 + stage.index, world=world, num_workers=cfg.data.num_workers,
                              vocab_size=unwrap(model).config.vocab_size, state=data_state, groups=phase.groups)
        heldout = self._heldout_texts(corpus, tokenizer, languages)
        peak = phase.lr.peak if phase.lr.peak is not None else cfg.optimizer.lr
        common = {"phase": phase.name, "variant": stage.variant}
        self.metrics.write({"event": "stage_start", "step": self.step, **common, "stage_step": stage_step,
                            "total_steps": total, "languages": languages, "n_languages": len(languages),
                            "mask_ratio": phase.mask_ratio, "tau": phase.tau, "seq_len": phase.seq_len,
                            "batch_tokens": target, "global_rope_theta": stage.global_rope_theta,
                            "local_rope_theta": stage.local_rope_theta, "precision": self.precision,
                            "world_size": world.world_size})
        if world.is_main:
            log.info("stage %s: %d steps, %d languages, seq %d, mask %.2f, tau %.2f, batch %d tokens, %s",
                     stage.label, total, len(languages), phase.seq_len, phase.mask_ratio, phase.tau, target,
                     self.precision)
        bar = Progress(cfg.progress and world.is_main, total, stage_step, f"{stage.label}")
        ac = lambda: autocast(self.precision, world.device)  # noqa: E731
        try:
            while stage_step < total:
                t0 = time.perf_counter()
                lr = lr_at(stage_step, total, peak, phase.lr.warmup, phase.lr.decay, phase.lr.decay_fraction,
                           phase.lr.floor)
                set_lr(optimizer, lr)
                accum = batch_tokens_at(stage_step, total, target, unit, phase.batch_warmup,
                                        phase.batch_warmup_start) // unit
                loss, grad_norm, step_tokens, n_pred = self._step(model, optimizer, source, accum, ac, cfg)
                stage_step += 1
                self.step += 1
                self.tokens += step_tokens
                dt = time.perf_counter() - t0
                ok = math.isfinite(loss) and math.isfinite(grad_norm)
                self.bad_steps = 0 if ok else self.bad_steps + 1
                rec = {"step": self.step, **common, "stage_step": stage_step, "loss": loss, "lr": lr,
                       "mask_ratio": phase.mask_ratio, "tau": phase.tau, "seq_len": phase.seq_len,
                       "n_languages": len(languages), "tokens": self.tokens, "batch_tokens": step_tokens,
                       "predicted": n_pred, "tokens_per_s": step_tokens / dt, "grad_norm": grad_norm,
                       "data_s": round(self._data_s, 4), "step_s": round(dt, 4)}
                if not ok:
                    self.metrics.write({"event": "skip", **rec, "bad_steps": self.bad_steps})
                    if world.is_main:
                        bar.write(f"step {self.step}: loss {loss} / grad norm {grad_norm} not finite; update skipped "
                                  f"({self.bad_steps} in a row)")
                elif self.step % cfg.log_every == 0 or stage_step == total:
                    self.metrics.write(rec)
                bar.update(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{step_tokens / dt:,.0f}",
                           mask=phase.mask_ratio, langs=len(languages))
                done = stage_step == total
                if cfg.eval.every and self.step % cfg.eval.every == 0 and not done:
                    self._evaluate(model, tokenizer, heldout, languages, stage, ac)
                state = self._state(stage, stage_step, total)
                if self.bad_steps >= cfg.max_bad_steps:
                    path = self._checkpoint(stage, model, optimizer, source, tokenizer, state)
                    msg = (f"stopped after {self.bad_steps} consecutive steps with a non-finite loss or gradient "
                           f"(step {self.step}); checkpoint {path}. Lower the learning rate or check the data, "
                           "then --resume")
                    return self._stopped(result, "bad_steps", msg, path, bar)
                if any_rank(stop.signal is not None, world.device):
                    path = self._checkpoint(stage, model, optimizer, source, tokenizer, state)
                    msg = f"interrupted by a signal at step {self.step}; checkpoint {path}; continue with --resume"
                    return self._stopped(result, "signal", msg, path, bar)
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and not done:
                    self._checkpoint(stage, model, optimizer, source, tokenizer, state)
            bar.close()
            if cfg.eval.at_phase_end or cfg.eval.every:
                self._evaluate(model, tokenizer, heldout, languages, stage, ac)
            final = {**self._state(stage, stage_step, total), "stage_done": True}
            ckpt.save_checkpoint(stage.final, model, optimizer, final, None, tokenizer)
            self.metrics.write({"event": "stage_end", "step": self.step, **common, "tokens": self.tokens,
                                "checkpoint": str(stage.final)})
            result.step, result.tokens = self.step, self.tokens
            return False
        finally:
            bar.close()
            source.close()

    def _step(self, model, optimizer, source, accum: int, ac, cfg: TrainConfig) -> tuple[float, float, int, int]:
        """One optimizer step over ``accum`` micro-batches per rank; returns (loss, grad norm, tokens, predicted)."""
        t0 = time.perf_counter()
        micro = [next(source) for _ in range(accum)]
        self._data_s = time.perf_counter() - t0
        r = optimizer_step(model, optimizer, micro, MlmTask(), device=self.world.device,
                           world_size=self.world.world_size, autocast=ac, grad_clip=cfg.optimizer.grad_clip)
        return r.loss, r.grad_norm, r.tokens, r.units

    def _state(self, stage: Stage, stage_step: int, total: int) -> dict:
        return {"step": self.step, "tokens": self.tokens, "stage_index": stage.index, "stage_step": stage_step,
                "stage_total_steps": total, "phase_index": stage.phase_index, "phase": stage.phase.name,
                "variant": stage.variant, "bad_steps": self.bad_steps, "stage_done": False}

    def _checkpoint(self, stage: Stage, model, optimizer, source, tokenizer, state: dict) -> Path:
        path = ckpt.step_dir(stage.checkpoints, self.step)
        ckpt.save_checkpoint(path, model, optimizer, state, source.state_dict(), tokenizer)
        if self.world.is_main:
            ckpt.prune(stage.checkpoints, self.cfg.checkpoint.keep_last)
        self.metrics.write({"event": "checkpoint", "step": self.step, "phase": stage.phase.name,
                            "variant": stage.variant, "path": str(path)})
        return path

    def _stopped(self, result: TrainResult, why: str, msg: str, path: Path, bar: Progress) -> bool:
        bar.close()
        self.metrics.write({"event": "stop", "step": self.step, "reason": why, "message": msg})
        if self.world.is_main:
            log.warning(msg)
        result.stopped, result.message, result.last_checkpoint = why, msg, path
        result.step, result.tokens = self.step, self.tokens
        return True

    # ---- held-out evaluation ------------------------------------------------------------------------------------
    def _heldout_texts(self, corpus: Corpus, tokenizer, languages: list[str]) -> dict[str, list[str]]:
        if corpus.heldout_dir is None or tokenizer is None:
            return {}
        if self.hooks.heldout_loss is None:
            if self.world.is_main:
                log.warning("held-out texts in %s are not evaluated: no held-out loss hook was passed",
                            corpus.heldout_dir)
            return {}
        which = self.cfg.eval.languages
        wanted = languages if which == "active" else (None if which == "all" else list(which))
        return load_heldout_texts(corpus.heldout_dir, wanted)

    def _evaluate(self, model, tokenizer, texts: dict[str, list[str]], active: list[str], stage: Stage, ac) -> None:
        if not texts:
            return
        e, world = self.cfg.eval, self.world
        langs = sorted(texts)
        fsdp = is_fsdp(model)
        mine = langs if fsdp else langs[world.rank :: world.world_size]  # DDP: split languages over ranks
        t0 = time.perf_counter()
        losses = self.hooks.heldout_loss(unwrap(model), tokenizer, {k: texts[k] for k in mine}, e.mask_ratio,
                                         e.seq_len, seed=self.cfg.seed,
                                         max_tokens_per_language=e.max_tokens_per_language, autocast=ac)
        if not fsdp:
            merged: dict[str, float] = {}
            for part in ckpt._gather(losses):
                merged.update(part)
            losses = merged
        active_set = set(active)

        def mean(keys):
            vals = [losses[k] for k in keys if math.isfinite(losses[k])]
            return sum(vals) / len(vals) if vals else None

        rec = {"event": "eval", "step": self.step, "phase": stage.phase.name, "variant": stage.variant,
               "heldout_mean": mean(langs), "heldout_mean_active": mean([k for k in langs if k in active_set]),
               "heldout_mean_inactive": mean([k for k in langs if k not in active_set]),
               "n_eval_languages": len(langs), "eval_seconds": round(time.perf_counter() - t0, 3),
               "heldout": {k: losses[k] for k in langs}}
        self.metrics.write(rec)
        if world.is_main:
            log.info("step %d held-out loss: mean %.4f (active %s, inactive %s) over %d languages", self.step,
                     rec["heldout_mean"] or math.nan, _fmt(rec["heldout_mean_active"]),
                     _fmt(rec["heldout_mean_inactive"]), len(langs))


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def set_rope(model, global_theta: float, local_theta: float, seq_len: int) -> None:
    """Context extension: new RoPE thetas (and max positions) on every config the model holds; no weight changes."""
    for m in unwrap(model).modules():
        c = getattr(m, "config", None)
        if isinstance(c, ModelConfig):
            m.config = c.replace(global_rope_theta=float(global_theta), local_rope_theta=float(local_theta),
                                 max_position_embeddings=max(c.max_position_embeddings, seq_len))
