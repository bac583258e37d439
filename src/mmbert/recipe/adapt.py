"""``mmbert adapt CKPT --languages ... --data MANIFEST --out DIR``: add languages to a trained model.

mmBERT's finding (arXiv:2509.06888): languages seen only in the short, low-mask decay phase still gain a lot.
This runs that phase on a finished model, as one configuration of the pretraining trainer:

1. checks (before any training): the checkpoint has an MLM head and its tokenizer's size; every new language
   has text in the manifest; a given tokenizer keeps every old piece at its old id.
2. optional vocabulary extension (``--extend-tokenizer N``: ``tokenizer.extend_tokenizer`` on the new
   languages' text, or ``--tokenizer T``), resize (``model.vocab.resize_vocab``: old rows bit-identical, decoder
   tied) and the new rows initialised by FVT (default), FOCUS-style or random (``model/vocab.py`` says what each
   is). Every method is scored on the new languages' held-out text right after initialisation with the *new*
   tokenizer and the same fixed masks (``eval.heldout``), so the numbers compare like with like.
3. one decay-style phase from the checkpoint (``model.init_from``): mask 5%, τ 0.3, two sampling groups (the
   new languages and a ``--replay`` share of the old ones, p ∝ n^τ inside each: ``data.sampling``), LR warmup
   then linear decay to a floor — ``train.Trainer`` unchanged, so resume, bf16 and the held-out loss per
   language during the run come with it. ``OUT/train-config.yaml`` is an ordinary training config:
   ``torchrun -m mmbert.train OUT/train-config.yaml --out OUT/train`` trains it on several processes, and
   running ``mmbert adapt`` again with the same arguments picks up the finished training.
4. merge-back with the original (``merge.merge``: TIES with the original as base, and/or linear; the runner
   takes the new vocabulary rows from the adapted model).
5. held-out loss per language for original → adapted → merged, fertility before/after, a Markdown report with
   plots (``report.py``'s helpers) and ``summary.json``.

Defaults: replay share 0.5 (our choice: mmBERT's decay mixes its new languages into the full old mixture; half
of the rows keeps the old languages' gradient as large as the new ones'), peak LR 5e-4 with a 10% warmup and a
linear decay over the rest to 2% of peak (mmBERT's decay ends at 0.02 of its peak).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from mmbert.recipe import report as rp

REPLAY_SHARE = 0.5


@dataclass
class AdaptOptions:
    checkpoint: Path  # the trained model (config.json + model.safetensors, MLM head)
    languages: list[str]  # the new languages (manifest ids)
    manifest: Path  # corpus manifest (what `mmbert train` reads); held-out text in <manifest dir>/heldout
    out: Path  # output directory
    steps: int = 200  # optimizer steps of the adaptation phase
    extend_tokenizer: int | None = None  # learn this many pieces on the new languages and add the new ones
    tokenizer: str | None = None  # or: a tokenizer that extends the checkpoint's (old pieces at their ids)
    init: str = "fvt"  # fvt | focus | random: how new embedding rows start
    prior: bool = True  # fvt/focus: new decoder biases from the pieces' unigram log-probabilities (model/vocab.py)
    shrink: float | None = None  # fvt/focus: pull new rows toward the old mean by this factor (None: no shrink)
    replay: float = REPLAY_SHARE  # share of rows drawn from the old languages
    replay_languages: list[str] | None = None  # default: every other manifest language with text
    merge: list[str] = field(default_factory=lambda: ["ties", "linear"])  # merge-back methods
    density: float = 0.6  # TIES density (the recipe's)
    linear_weight: float = 0.5  # weight of the adapted model in the linear merge
    mask_ratio: float = 0.05  # mmBERT's decay mask ratio
    tau: float = 0.3  # mmBERT's decay temperature
    seq_len: int = 128  # packed row length
    batch_tokens: int = 4096  # global batch in tokens
    micro_batch_tokens: int = 4096  # tokens per forward
    lr: float = 5e-4  # peak LR
    warmup: float = 0.1  # fraction of steps in warmup
    floor: float = 0.02  # final LR as a fraction of peak
    eval_every: int = 0  # held-out loss during training every N steps (0: at the end)
    eval_mask_ratio: float = 0.15  # masking of the held-out evaluations
    eval_seq_len: int = 256
    eval_max_tokens: int = 512  # held-out tokens per language
    eval_old_languages: int = 50  # old languages evaluated (evenly spaced in sorted order; 0 = all)
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    overrides: list[str] = field(default_factory=list)  # `--set key=value` on the training config
    progress: bool = True


# ---- checks ------------------------------------------------------------------------------------------------
def _base_tokenizer(checkpoint: Path):
    from mmbert.tokenizer import Tokenizer

    return Tokenizer.from_file(checkpoint) if (checkpoint / "tokenizer.json").is_file() else Tokenizer.default()


def check_checkpoint(checkpoint: Path):
    """(ModelConfig, tokenizer) of a checkpoint with an MLM head whose tokenizer matches it; else a ValueError."""
    from mmbert.merge.safetensors_io import read_header
    from mmbert.model import ModelConfig

    if not (checkpoint / "config.json").is_file() or not (checkpoint / "model.safetensors").is_file():
        raise FileNotFoundError(f"{checkpoint}: not a checkpoint (needs config.json and model.safetensors)")
    config = ModelConfig.load(checkpoint)
    names, _ = read_header(checkpoint / "model.safetensors")
    head = ["head.dense.weight", "head.norm.weight"] + (["decoder.bias"] if config.decoder_bias else [])
    missing = [k for k in head if k not in names]
    if missing:
        raise ValueError(f"{checkpoint}: no MLM head ({missing[0]} missing): adaptation continues masked-LM "
                         "training and needs a ModernBertForMaskedLM checkpoint, not an encoder or task model")
    tok = _base_tokenizer(checkpoint)
    if tok.vocab_size != config.vocab_size:
        where = checkpoint / "tokenizer.json" if (checkpoint / "tokenizer.json").is_file() else "the shipped tokenizer"
        raise ValueError(f"tokenizer {where} has {tok.vocab_size} pieces but {checkpoint / 'config.json'} says "
                         f"vocab_size {config.vocab_size}: the tokenizer does not match the checkpoint")
    return config, tok


def check_given_tokenizer(path: str, base) -> "object":
    """A ``--tokenizer`` must hold every old piece at its old id (it extends the checkpoint's)."""
    from mmbert.tokenizer import Tokenizer

    tok = Tokenizer.from_file(path)
    old = base.backend.get_vocab(with_added_tokens=True)
    new = tok.backend.get_vocab(with_added_tokens=True)
    moved = [(p, i) for p, i in old.items() if new.get(p) != i]
    if moved:
        p, i = min(moved, key=lambda x: x[1])
        raise ValueError(f"tokenizer {path} does not match the checkpoint: piece {p!r} (id {i}) is "
                         f"{'at id ' + str(new[p]) if p in new else 'missing'}; it must extend the checkpoint's "
                         f"tokenizer ({len(moved)} pieces differ)")
    if tok.vocab_size < base.vocab_size:
        raise ValueError(f"tokenizer {path} is smaller than the checkpoint's ({tok.vocab_size} < {base.vocab_size})")
    return tok


def check_languages(opts: AdaptOptions) -> tuple[dict[str, int], list[str]]:
    """(manifest language sizes in bytes, replay languages); a new language without text is an error."""
    from mmbert.data import load_manifest
    from mmbert.data.sizes import measure_sizes

    if not opts.manifest.is_file():
        raise FileNotFoundError(f"corpus manifest not found: {opts.manifest}")
    if not opts.languages:
        raise ValueError("--languages: name at least one new language")
    m = load_manifest(opts.manifest)
    sizes = {k: v["bytes"] for k, v in measure_sizes(m).items()}
    for lang in opts.languages:
        if lang not in m.languages:
            raise ValueError(f"--languages {lang}: not in manifest {opts.manifest}")
        if not sizes.get(lang):
            raise ValueError(f"--languages {lang}: no readable text in manifest {opts.manifest}")
    new = set(opts.languages)
    if opts.replay_languages is not None:
        bad = [x for x in opts.replay_languages if not sizes.get(x) or x in new]
        if bad:
            raise ValueError(f"--replay-languages {bad[0]}: no text in {opts.manifest} or also a new language")
        replay = sorted(opts.replay_languages)
    else:
        replay = sorted(k for k, v in sizes.items() if v and k not in new)
    if opts.replay > 0 and not replay:
        raise ValueError(f"--replay {opts.replay}: manifest {opts.manifest} has no other language to replay")
    if not 0 <= opts.replay < 1:
        raise ValueError(f"--replay must be in [0, 1), got {opts.replay}")
    return sizes, replay


# ---- vocabulary ------------------------------------------------------------------------------------------------
def _new_language_texts(opts: AdaptOptions, max_chars: int = 20_000_000) -> list[str]:
    from mmbert.data import load_manifest
    from mmbert.data.sources import iter_texts

    m = load_manifest(opts.manifest)
    return [t for lang in opts.languages for t in iter_texts(m.languages[lang], max_chars=max_chars)]


def init_rows(method: str, model, base_tok, new_tok, texts: list[str], seed: int, prior: bool = True,
              shrink: float | None = None):
    """(rows, bias) of the new vocabulary entries of ``new_tok`` for ``model`` (still at the old size)."""
    from mmbert.model import vocab as mv
    from mmbert.tokenizer import BYTE_TOKENS, unigram_pieces

    emb = model.model.embeddings.tok_embeddings.weight.detach().float()
    bias = mv.old_bias(model)
    n_old, n_new = emb.shape[0], new_tok.vocab_size - emb.shape[0]
    if method == "random":
        c = model.config
        return mv.random_rows(n_new, emb.shape[1], c.initializer_range, c.initializer_cutoff_factor, seed)
    if method not in mv.INIT_METHODS:
        raise ValueError(f"--init {method!r}: choose one of {mv.INIT_METHODS}")
    pieces = [new_tok.backend.id_to_token(i) for i in range(n_old, new_tok.vocab_size)]
    # The old tokenizer's split of each new piece's string; "▁" is the word-initial space.
    splits = []
    for p in pieces:
        ids = base_tok.encode(p.replace("▁", " "), add_special_tokens=False)
        splits.append(ids or [base_tok.unk_id if base_tok.unk_id is not None else 0])
    rows, b = mv.fvt_rows(emb, bias, splits)
    if method == "focus":
        sequences = new_tok.encode_batch(texts, add_special_tokens=False)
        aux, _ = mv.cooccurrence_vectors(sequences, new_tok.vocab_size)
        old_vocab = base_tok.backend.get_vocab(with_added_tokens=True)
        overlap = {i: old_vocab[p] for p, i in new_tok.backend.get_vocab(with_added_tokens=True).items()
                   if i < n_old and p in old_vocab and i not in base_tok.special_ids}
        rows, b = mv.focus_rows(emb, bias, aux, list(range(n_old, new_tok.vocab_size)), overlap, (rows, b))
    if shrink is not None:
        rows, b = mv.calibrate_rows(rows, emb, bias, shrink)
    if prior:
        try:
            scores = unigram_pieces(new_tok)
        except ValueError:  # not a Unigram tokenizer: no scores, keep the transferred bias
            return rows, b
        old = {i: s for i, (p, s) in enumerate(scores[:n_old]) if i not in base_tok.special_ids and p not in BYTE_TOKENS}
        b = mv.prior_bias(bias, old, torch.tensor([s for _, s in scores[n_old:]]))
    return rows, b


def init_label(method: str, prior: bool, shrink: float | None) -> str:
    if method == "random":
        return "random"
    return method + (" + prior bias" if prior else "") + (f" + shrink {shrink:g}" if shrink is not None else "")


def extended_model(checkpoint: Path, base_tok, new_tok, method: str, texts, seed: int, prior: bool = True,
                   shrink: float | None = None):
    from mmbert.model import MmBertForMaskedLM
    from mmbert.model.vocab import resize_vocab

    model = MmBertForMaskedLM.from_pretrained(checkpoint)
    if new_tok.vocab_size > model.config.vocab_size:
        rows, b = init_rows(method, model, base_tok, new_tok, texts, seed, prior, shrink)
        resize_vocab(model, new_tok.vocab_size, rows, b)
        model.config = model.config.replace(**_token_ids(new_tok))
    return model.eval()


def _token_ids(tok) -> dict:
    from mmbert.model.config import tokenizer_fields

    return {k: v for k, v in tokenizer_fields(tok).items() if k != "vocab_size"}


# ---- evaluation ------------------------------------------------------------------------------------------------------
def heldout(model, tok, texts: dict[str, list[str]], opts: AdaptOptions) -> dict[str, float]:
    from mmbert.eval.heldout import heldout_mlm_loss

    return heldout_mlm_loss(model, tok, texts, opts.eval_mask_ratio, opts.eval_seq_len, seed=opts.seed,
                            max_tokens_per_language=opts.eval_max_tokens)


def old_sample(languages: list[str], n: int) -> list[str]:
    """``n`` of ``languages`` evenly spaced in sorted order (all when n is 0 or more than there are)."""
    langs = sorted(languages)
    if n <= 0 or n >= len(langs):
        return langs
    return [langs[round(i * (len(langs) - 1) / (n - 1))] if n > 1 else langs[0] for i in range(n)]


def _mean(values) -> float:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


# ---- the whole thing ------------------------------------------------------------------------------------------------
def adapt(opts: AdaptOptions) -> Path:
    """Run (or finish) an adaptation into ``opts.out``; returns the report's path."""
    from mmbert.train.rundir import hold_run_dir

    opts.out.mkdir(parents=True, exist_ok=True)
    with hold_run_dir(opts.out):
        return _adapt(opts)


def _adapt(opts: AdaptOptions) -> Path:
    from mmbert.model import MmBertForMaskedLM
    from mmbert.tokenizer import extend_tokenizer, fertility
    from mmbert.train.batches import load_heldout_texts

    t0 = time.perf_counter()
    out, ckpt = opts.out, opts.checkpoint.resolve()
    config, base_tok = check_checkpoint(ckpt)
    if opts.init not in ("fvt", "focus", "random"):
        raise ValueError(f"--init {opts.init!r}: choose fvt, focus or random")
    bad = [m for m in opts.merge if m not in ("ties", "linear")]
    if bad:
        raise ValueError(f"--merge {bad[0]!r}: choose ties and/or linear")
    if opts.extend_tokenizer and opts.tokenizer:
        raise ValueError("give --extend-tokenizer N or --tokenizer T, not both")
    sizes, replay = check_languages(opts)
    heldout_dir = opts.manifest.parent / "heldout"
    held = load_heldout_texts(heldout_dir, opts.languages + replay) if heldout_dir.is_dir() else {}
    new_held = {k: held[k] for k in opts.languages if k in held}
    old_held = {k: held[k] for k in old_sample([k for k in replay if k in held], opts.eval_old_languages)}
    if not new_held:
        print(f"[mmbert adapt] warning: no held-out text of the new languages in {heldout_dir}: "
              "the report cannot measure them", flush=True)

    # -- vocabulary and initialisation --
    init_dir = out / "init"
    summary_path = out / "init.json"
    texts: list[str] = []
    if opts.extend_tokenizer or opts.tokenizer:
        if not (init_dir / "model.safetensors").is_file():
            texts = _new_language_texts(opts)
            if opts.extend_tokenizer:
                new_tok, added = extend_tokenizer(base_tok, texts, opts.extend_tokenizer, seed=opts.seed)
            else:
                new_tok = check_given_tokenizer(opts.tokenizer, base_tok)
                added = [new_tok.backend.id_to_token(i) for i in range(base_tok.vocab_size, new_tok.vocab_size)]
            init_losses = {}
            variants = [("random", False, None), ("fvt", False, None), ("fvt", True, None), ("focus", False, None),
                        ("focus", True, None), (opts.init, opts.prior, opts.shrink)]
            chosen, chosen_label = None, init_label(opts.init, opts.prior, opts.shrink)
            for method, prior, shrink in variants:
                label = init_label(method, prior, shrink)
                if label in init_losses:
                    continue
                t = time.perf_counter()
                model = extended_model(ckpt, base_tok, new_tok, method, texts, opts.seed, prior, shrink)
                losses = heldout(model, new_tok, new_held, opts) if new_held else {}
                init_losses[label] = {"mean": _mean(losses.values()), "per_language": losses,
                                      "seconds": round(time.perf_counter() - t, 1)}
                print(f"[mmbert adapt] init {label}: held-out loss on new languages "
                      f"{init_losses[label]['mean']:.3f}", flush=True)
                if label == chosen_label:
                    chosen = model

            def write(tmp: Path) -> None:
                chosen.save_pretrained(tmp)
                new_tok.save(tmp)

            fert = {lang: {"before": fertility(base_tok, held[lang]), "after": fertility(new_tok, held[lang])}
                    for lang in list(new_held) + list(old_held)}
            summary = {"added_pieces": len(added), "vocab_size": {"before": base_tok.vocab_size,
                                                                  "after": new_tok.vocab_size},
                       "examples": added[:40], "init": init_losses, "chosen": chosen_label, "fertility": fert}
            from mmbert.model.checkpoint import atomic_directory_write

            atomic_directory_write(init_dir, write)
            summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        start, start_tok = init_dir, _base_tokenizer(init_dir)
    else:
        start, start_tok = ckpt, base_tok
    init_summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None

    # -- training: one decay-style phase of the ordinary trainer --
    cfg = train_config(opts, start, replay)
    train_dir = out / "train"
    t_train0 = time.perf_counter()
    from mmbert.recipe.training import train

    result = train(cfg, train_dir, resume=(train_dir / "adapt").is_dir())
    if not result.completed:
        raise SystemExit(f"[mmbert adapt] training stopped: {result.message}\nrun the same command again to "
                         f"continue from {result.last_checkpoint}")
    t_train = time.perf_counter() - t_train0
    adapted = result.phase_checkpoints["adapt"]

    # -- merge-back --
    from mmbert.merge import merge

    merged: dict[str, Path] = {}
    for method in opts.merge:
        target = out / f"merged-{method}"
        if not (target / "model.safetensors").is_file():
            if method == "ties":
                merge("ties", [adapted], target, base=ckpt, density=opts.density, lambda_=1.0)
            else:
                merge("linear", [ckpt, adapted], target, weights=[1 - opts.linear_weight, opts.linear_weight])
            print(f"[mmbert adapt] merged with {method} -> {target}", flush=True)
        merged[method] = target

    # -- evaluation --
    checkpoints = {"original": ckpt}
    if start != ckpt:
        checkpoints["initialised"] = start
    checkpoints["adapted"] = adapted
    checkpoints.update({f"merged ({m})": p for m, p in merged.items()})
    evals = {}
    eval_dir = out / "eval"
    eval_dir.mkdir(exist_ok=True)
    for name, path in checkpoints.items():
        target = eval_dir / f"{name.replace(' ', '-').replace('(', '').replace(')', '')}.json"
        if target.is_file() and target.stat().st_mtime >= (path / "model.safetensors").stat().st_mtime:
            evals[name] = json.loads(target.read_text())
            continue
        model = MmBertForMaskedLM.from_pretrained(path)
        tok = _base_tokenizer(path)
        evals[name] = {"new": heldout(model, tok, new_held, opts) if new_held else {},
                       "old": heldout(model, tok, old_held, opts) if old_held else {}, "checkpoint": str(path)}
        target.write_text(json.dumps(evals[name], indent=2) + "\n")
        print(f"[mmbert adapt] {name}: held-out loss new {_mean(evals[name]['new'].values()):.3f}, "
              f"old {_mean(evals[name]['old'].values()):.3f}", flush=True)
    t_total = time.perf_counter() - t0
    return write_report(opts, cfg, replay, checkpoints, evals, init_summary, t_train, t_total)


def train_config(opts: AdaptOptions, start: Path, replay: list[str]):
    """The one-phase decay-style TrainConfig that continues ``start`` (also written to OUT/train-config.yaml)."""
    from mmbert.train.config import apply_override, config_from_dict

    groups = {"new": {"share": 1.0 - opts.replay, "languages": sorted(opts.languages)}}
    if opts.replay > 0:
        groups["replay"] = {"share": opts.replay, "languages": replay}
    tokenizer = str(start) if (start / "tokenizer.json").is_file() else None
    raw = {
        "seed": opts.seed,
        "model": {"preset": None, "config": str(start), "init_from": str(start)},
        "tokenizer": tokenizer,
        "data": {"manifest": str(opts.manifest.resolve())},
        "micro_batch_tokens": opts.micro_batch_tokens,
        "precision": opts.precision,
        "device": opts.device,
        "progress": opts.progress,
        "optimizer": {"lr": opts.lr},
        "eval": {"every": opts.eval_every, "mask_ratio": opts.eval_mask_ratio, "seq_len": opts.eval_seq_len,
                 "max_tokens_per_language": opts.eval_max_tokens,
                 "languages": sorted(opts.languages) + old_sample(replay, opts.eval_old_languages)},  # the trainer skips ids without held-out text
        "checkpoint": {"every": max(50, opts.steps // 4), "keep_last": 2},
        "phases": [{
            "name": "adapt", "steps": opts.steps, "languages": sorted(opts.languages) + replay,
            "groups": groups, "mask_ratio": opts.mask_ratio, "tau": opts.tau, "seq_len": opts.seq_len,
            "batch_tokens": opts.batch_tokens,
            "lr": {"warmup": opts.warmup, "decay": "linear", "decay_fraction": 1.0 - opts.warmup,
                   "floor": opts.floor},
        }],
    }
    where = "mmbert adapt"
    for item in opts.overrides:
        apply_override(raw, item, where)
    cfg = config_from_dict(raw, where)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "train-config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
    return cfg


# ---- report ----------------------------------------------------------------------------------------------------------
def _plot_bars(series: dict[str, dict[str, float]], languages: list[str], path: Path, title: str, ylabel: str) -> Path:
    plt = rp._plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(languages) + 2), 4.2))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(languages))]
        ax.bar(xs, [values.get(lang, math.nan) for lang in languages], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(languages))], languages, rotation=30, fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(opts: AdaptOptions, cfg, replay: list[str], checkpoints: dict[str, Path], evals: dict,
                 init: dict | None, t_train: float, t_total: float) -> Path:
    out = opts.out
    figures = out / "report"
    figures.mkdir(exist_ok=True)
    steps, events = rp.read_metrics(out / "train" / "metrics.jsonl")
    rp.plot_loss(steps, events, figures / "loss.png")
    new_set = set(opts.languages)
    curves = rp.heldout_curves(events, lambda lang: "decay" if lang in new_set else "pretrain")
    names = list(checkpoints)
    new_langs = sorted({k for e in evals.values() for k in e["new"]})
    mean_new = {n: _mean(evals[n]["new"].values()) for n in names}
    mean_old = {n: _mean(evals[n]["old"].values()) for n in names}
    _plot_bars({n: evals[n]["new"] for n in names}, new_langs, figures / "new_languages.png",
               "Held-out MLM loss of the new languages", "loss (nats / masked token)")
    _plot_bars({n: {"new (mean)": mean_new[n], "old (mean)": mean_old[n]} for n in names},
               ["new (mean)", "old (mean)"], figures / "groups.png", "Held-out loss by language group",
               "loss (nats / masked token)")
    tps = [s["tokens_per_s"] for s in steps if s.get("tokens_per_s")]
    tok_s = sorted(tps)[len(tps) // 2] if tps else math.nan
    # From the run's own records, so a second invocation (training already done) reports the real cost.
    t_train = sum(s.get("step_s") or 0.0 for s in steps) + sum(e.get("eval_seconds") or 0.0 for e in events)
    orig, adapted = names[0], "adapted"
    md = [f"# `mmbert adapt` — `{out}`", "",
          f"Checkpoint `{opts.checkpoint}` adapted to **{', '.join(sorted(opts.languages))}** "
          f"({len(replay)} replay languages at share {opts.replay}). Training **{t_train / 60:.1f} min** (sum of the "
          f"step and evaluation times in `train/metrics.jsonl`; median {tok_s:,.0f} tokens/s); this invocation "
          f"{t_total / 60:.1f} min wall time, on this machine.", "",
          "## Phase", "",
          f"{opts.steps} steps, mask {opts.mask_ratio}, τ {opts.tau}, seq len {opts.seq_len}, batch {opts.batch_tokens} "
          f"tokens, LR {opts.lr:g} (warmup {opts.warmup:.0%}, linear decay to {opts.floor:g} × peak); "
          f"the training config is `train-config.yaml`.", "",
          "## Held-out loss (nats per masked token; articles 25–30, fixed masks)", ""]
    if init is not None:
        md += ["Vocabulary extended: rows of *original* are scored with the old tokenizer, every other row with "
               "the extended one (same texts; token counts differ, so the new-language column of *original* is "
               "not the same unit as the others).", ""]
    per_char = per_character(evals, init, names, orig)
    md += ["| checkpoint | new languages (mean) | new, ≈ nats/char | old languages (mean) | change on old vs original |",
           "|---|---|---|---|---|"]
    md += [f"| {n} | {rp._fmt(mean_new[n])} | {rp._fmt(per_char.get(n))} | {rp._fmt(mean_old[n])} | "
           f"{mean_old[n] - mean_old[orig]:+.3f} |" for n in names]
    if per_char:
        md += ["", "≈ nats/char: each new language's loss per masked piece times its pieces per character (the "
               "checkpoint's tokenizer), averaged — a rough common unit across tokenizers."]
    md += ["", "| language | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    md += [f"| {lang} | " + " | ".join(rp._fmt(evals[n]["new"].get(lang)) for n in names) + " |" for lang in new_langs]
    md += ["", "![new languages](report/new_languages.png)", "", "![groups](report/groups.png)", "",
           "## Training", "", "![loss](report/loss.png)", ""]
    if curves:
        plot = figures / "heldout_curves.png"
        _plot_curves(curves, plot)
        md += ["Held-out loss during the phase (group means).", "", "![heldout](report/heldout_curves.png)", ""]
    if init is not None:
        md += ["## Vocabulary extension", "",
               f"{init['added_pieces']} pieces added: {init['vocab_size']['before']} → {init['vocab_size']['after']} "
               f"(e.g. {' '.join(init['examples'][:15])}).", "",
               "Held-out loss on the new languages right after initialisation, before any training (extended "
               "tokenizer, same texts and masks for every method):", "", "| init | loss |", "|---|---|"]
        md += [f"| {k}{' **(used)**' if k == init['chosen'] else ''} | {rp._fmt(v['mean'])} |" for k, v in init["init"].items()]
        _plot_bars({k: v["per_language"] for k, v in init["init"].items()}, new_langs, figures / "init.png",
                   "Held-out loss right after initialisation", "loss")
        md += ["", "![init](report/init.png)", "", "Fertility (pieces per character of the held-out text):", "",
               "| language | before | after |", "|---|---|---|"]
        fert = init["fertility"]
        md += [f"| {lang} | {fert[lang]['before']:.3f} | {fert[lang]['after']:.3f} |" for lang in new_langs if lang in fert]
        old_f = [lang for lang in fert if lang not in new_set]
        if old_f:
            md += [f"| old languages (mean of {len(old_f)}) | {_mean(fert[x]['before'] for x in old_f):.3f} | "
                   f"{_mean(fert[x]['after'] for x in old_f):.3f} |"]
        md += [""]
    md += ["## Files", "", "- `train/` — the run (metrics.jsonl, adapt/final = the adapted model)",
           "- `merged-*/` — the merge-back models; `init/` — the extended, initialised model; `eval/*.json` — per language", ""]
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    summary = {"wall_time_s": round(t_total, 1), "train_time_s": round(t_train, 1), "median_tokens_per_s": tok_s,
               "checkpoints": {n: str(p) for n, p in checkpoints.items()},
               "heldout_new_mean": mean_new, "heldout_old_mean": mean_old,
               "gain_new": mean_new[orig] - mean_new[adapted],
               "gain_new_vs_initialised": (mean_new["initialised"] - mean_new[adapted]) if "initialised" in mean_new else None,
               "new_nats_per_char": per_char,
               "forgetting_old": {n: mean_old[n] - mean_old[orig] for n in names}, "init": init}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str, ensure_ascii=False) + "\n")
    print(f"[mmbert adapt] report: {path}", flush=True)
    return path


def per_character(evals: dict, init: dict | None, names: list[str], orig: str) -> dict[str, float]:
    """Mean over new languages of loss × pieces/char, with the fertility of each checkpoint's tokenizer."""
    if init is None:
        return {}
    fert = init["fertility"]
    out = {}
    for n in names:
        key = "before" if n == orig else "after"
        vals = [v * fert[lang][key] for lang, v in evals[n]["new"].items() if lang in fert]
        out[n] = _mean(vals)
    return out


def _plot_curves(curves, path: Path) -> Path:
    plt = rp._plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for stage, groups in curves.items():
        for g, pts in groups.items():
            label = "new languages" if g == "decay" else "old languages"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set(xlabel="step", ylabel="held-out loss (group mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
