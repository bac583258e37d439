"""Training configuration: YAML in, typed dataclasses out, every field documented, every typo an error.

Choices:
- One dataclass per section; the one-line comment after each field is its documentation
  (``mmbert train --help-config`` prints them). An unknown key, a missing required key or a value of
  the wrong type is a ``ConfigError`` naming the key path (``phases.1.lr.decay``) and the file.
- A phase is the unit of mmBERT's schedule (arXiv:2509.06888): its own languages, mask ratio, τ,
  sequence length, RoPE thetas, batch size and LR shape. The last phase may list decay ``variants``;
  each variant is a dict of phase fields overriding the phase (plus a ``name``), trained from the same
  start (the end of the previous phase) into its own directory, as mmBERT's Decay-Eng / Decay-Cont /
  Decay-All runs that are merged afterwards.
- ``--set a.b.0.c=value`` overrides are applied to the raw YAML tree before validation, so they get
  the same checks as the file (the value is parsed as YAML: ``5``, ``1e-3``, ``[eng_Latn]``, ``null``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A training config that cannot be used as written; the message names the key and the file."""


@dataclass
class ModelSection:
    preset: str | None = "tiny"  # ModelConfig preset (tiny, mini, mmbert-small, mmbert-base); ignored with `config`
    config: str | None = None  # path to a config.json (or a dir holding one) instead of a preset
    init_from: str | None = None  # checkpoint dir whose weights start the run (None = fresh init with `seed`)
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields changed after the preset/config


@dataclass
class DataSection:
    builtin: str | None = None  # "udhr": export the shipped corpus into RUN_DIR/corpus and train on it
    manifest: str | None = None  # path to a corpus manifest.yaml (exactly one of builtin / manifest / synthetic)
    synthetic: bool = False  # random-token documents (throughput benchmarks and tests; no tokenizer text)
    synthetic_languages: int = 8  # synthetic only: how many fake languages (syn_000, syn_001, ...)
    heldout_dir: str | None = None  # folder of <lang>.jsonl held-out files (default: <manifest dir>/heldout)
    num_workers: int = 0  # data loader worker processes per rank


@dataclass
class OptimizerSection:
    name: str = "adamw"  # adamw | stableadamw | decoupled_stableadamw (ModernBERT/mmBERT: weight decay scaled by lr / optimizer.lr)
    lr: float = 8e-4  # peak learning rate, used by every phase that does not set lr.peak
    betas: tuple[float, float] = (0.9, 0.98)  # Adam betas
    eps: float = 1e-6  # Adam epsilon
    weight_decay: float = 1e-5  # decoupled weight decay; never applied to norms, biases or embeddings
    grad_clip: float = 1.0  # clip the global grad norm to this (0 = off)
    kernel: str = "fused"  # adamw's implementation: fused (one kernel per step; 4x faster than for-loop on CPU) | foreach | for-loop


@dataclass
class LRShape:
    peak: float | None = None  # this phase's peak LR (None = optimizer.lr)
    warmup: float = 0.0  # fraction of the phase's steps spent in linear warmup from 0
    decay: str = "none"  # none | linear | cosine | inv_sqrt: the shape of the final decay
    decay_fraction: float = 0.0  # fraction of the phase's steps spent decaying (at its end)
    floor: float = 0.0  # the LR the decay ends at, as a fraction of peak


@dataclass
class PhaseConfig:
    name: str  # unique phase name; also its directory under the run dir
    steps: int | None = None  # optimizer steps in this phase (exactly one of steps / tokens)
    tokens: int | None = None  # token budget of this phase; steps = ceil(tokens / batch_tokens)
    languages: Any = "all"  # "all" | [lang ids] | {top: K} (largest K) | {except: [ids]} (all others) | {mmbert: pretrain|ext|decay-eng|decay-mid|decay-all}
    sizes: str = "corpus"  # language sizes for p ∝ n^τ: "corpus" (measured) or "mmbert" (published counts)
    sizes_phase: str | None = None  # mmBERT csv column for sizes: "mmbert" (default: the languages.mmbert phase)
    mask_ratio: float = 0.15  # fraction of tokens predicted
    tau: float = 0.5  # language sampling temperature
    seq_len: int = 128  # packed row length in tokens
    global_rope_theta: float | None = None  # RoPE theta of global layers from this phase on (None = unchanged)
    local_rope_theta: float | None = None  # RoPE theta of local layers from this phase on (None = unchanged)
    batch_tokens: int | None = None  # global batch in tokens (exactly one of batch_tokens / batch_rows)
    batch_rows: int | None = None  # global batch in rows of seq_len; batch_tokens = rows * seq_len
    batch_warmup: float = 0.0  # fraction of the phase over which the batch grows linearly from batch_warmup_start
    batch_warmup_start: float = 0.25  # starting batch as a fraction of the full batch
    lr: LRShape = field(default_factory=LRShape)  # this phase's learning-rate shape
    variants: list[dict[str, Any]] = field(default_factory=list)  # last phase only: decay variants (name + phase fields)
    manifest: str | None = None  # this phase's corpus manifest (None = data.manifest): mmBERT's phases are separate datasets
    groups: dict[str, Any] = field(default_factory=dict)  # {name: {share: S, languages: [ids]}}: each group gets share S of the rows, p ∝ n^τ inside it (adapt: new languages vs replay)

    @property
    def global_batch_tokens(self) -> int:
        return self.batch_tokens if self.batch_tokens is not None else self.batch_rows * self.seq_len


@dataclass
class EvalSection:
    every: int = 0  # per-language held-out MLM loss every this many steps (0 = only at phase ends)
    at_phase_end: bool = True  # evaluate at the end of every phase and variant
    mask_ratio: float = 0.15  # fixed masking ratio of the held-out text
    seq_len: int = 256  # held-out rows are cut to this length
    max_tokens_per_language: int = 4096  # cap of held-out tokens per language
    languages: Any = "all"  # "all" | "active" (the current phase's) | [lang ids]


@dataclass
class CheckpointSection:
    every: int = 100  # write a checkpoint every this many steps (0 = only at phase ends / on exit)
    keep_last: int = 3  # checkpoints kept per phase directory (phase-end "final" ones are always kept)


@dataclass
class TrainConfig:
    phases: list[PhaseConfig]  # the ordered phases of the schedule
    seed: int = 0  # seeds the model init, the data order and the masking
    model: ModelSection = field(default_factory=ModelSection)  # which encoder to train
    tokenizer: str | None = None  # tokenizer.json or folder (None = the shipped tokenizer)
    data: DataSection = field(default_factory=DataSection)  # where the training text comes from
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)  # AdamW settings
    micro_batch_tokens: int = 4096  # tokens per rank per forward; gradient accumulation fills the global batch
    threads: int = 0  # torch CPU threads, set when training starts (0 = leave torch's setting: by default every core)
    precision: str = "auto"  # auto (bf16 autocast where the device supports it) | bf16 | fp32
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    parallel: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard), used when more than one process runs
    deterministic: bool = False  # torch.use_deterministic_algorithms(True); CPU kernels are deterministic without it
    max_bad_steps: int = 5  # stop (with a checkpoint) after this many consecutive NaN/inf losses
    log_every: int = 1  # write a metrics line every this many steps
    progress: bool = True  # show a tqdm progress bar (rank 0)
    eval: EvalSection = field(default_factory=EvalSection)  # per-language held-out loss
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)  # checkpoint cadence

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


LANGUAGE_PHASES = ("pretrain", "ext", "decay-eng", "decay-mid", "decay-all")
DECAYS = ("none", "linear", "cosine", "inv_sqrt")
OPTIMIZERS = ("adamw", "stableadamw", "decoupled_stableadamw")
KERNELS = ("fused", "foreach", "for-loop")


# ---- loading ------------------------------------------------------------------------------------------
def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training config, apply ``--set key=value`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    raw = raw if raw is not None else {}
    for item in overrides or []:
        apply_override(raw, item, str(path))
    return config_from_dict(raw, str(path))


def config_from_dict(raw: dict[str, Any], where: str = "<dict>") -> TrainConfig:
    cfg = _build(TrainConfig, raw, "", where)
    validate(cfg, where)
    return cfg


def apply_override(raw: dict[str, Any], item: str, where: str = "<config>") -> None:
    """Apply one ``a.b.0.c=value`` to the raw tree (lists are indexed by number; missing dicts are created)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from e
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {here} is not an index of a list of {len(node)} in {where}")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}: {here} is not a section in {where}")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {key}: {last} is not an index of a list of {len(node)} in {where}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: parent is not a section in {where}")


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its one-line description (the comment after it in this file)."""
    import inspect

    docs = {}
    for line in inspect.getsource(cls).splitlines():
        s = line.strip()
        if ":" in s and "#" in s and not s.startswith(("#", "def", "@", "return")):
            name = s.split(":", 1)[0].strip()
            if name.isidentifier():
                docs[name] = s.split("#", 1)[1].strip()
    return docs


def describe() -> str:
    """Every section and field with its description, for ``--help-config``."""
    out = []
    for title, cls in (("top level", TrainConfig), ("model", ModelSection), ("data", DataSection),
                       ("optimizer", OptimizerSection), ("phases[]", PhaseConfig), ("phases[].lr", LRShape),
                       ("eval", EvalSection), ("checkpoint", CheckpointSection)):
        out.append(f"{title}:")
        out += [f"  {k}: {v}" for k, v in field_docs(cls).items()]
    return "\n".join(out)


# ---- building and validation ----------------------------------------------------------------------------
def _build(cls: type, raw: Any, prefix: str, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'} in {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {_join(prefix, unknown[0])!r} in {where}; known keys here: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required key {key!r} in {where}")
            continue
        kwargs[name] = _convert(hints[name], raw[name], key, where)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str, where: str):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key, where)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key!r} in {where}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key!r} in {where} must be a list, got {value!r}")
        if dataclasses.is_dataclass(item):
            return [_build(item, v, f"{key}.{i}", where) for i, v in enumerate(value)]
        return [_convert(item, v, f"{key}.{i}", where) for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key!r} in {where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{key}.{i}", where) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key!r} in {where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key!r} in {where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key!r} in {where} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key!r} in {where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key!r} in {where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key!r} in {where}: unsupported type {tp}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check(cond: bool, key: str, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key!r} in {where}: {msg}")


def validate_languages(spec: Any, key: str, where: str) -> None:
    if spec == "all":
        return
    if isinstance(spec, list):
        _check(bool(spec) and all(isinstance(x, str) for x in spec), key, where, "must be a non-empty list of ids")
        return
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, value), = spec.items()
        if kind == "top":
            _check(isinstance(value, int) and value > 0, key, where, "top: K needs a positive integer")
            return
        if kind == "except":
            _check(isinstance(value, list) and all(isinstance(x, str) for x in value), key, where,
                   "except: needs a list of language ids")
            return
        if kind == "mmbert":
            _check(value in LANGUAGE_PHASES, key, where, f"mmbert: must be one of {LANGUAGE_PHASES}, got {value!r}")
            return
    raise ConfigError(f"{key!r} in {where}: expected 'all', a list of language ids, {{top: K}}, {{except: [ids]}} or "
                      f"{{mmbert: {'|'.join(LANGUAGE_PHASES)}}}; got {spec!r}")


def validate_phase(p: PhaseConfig, key: str, where: str) -> None:
    _check((p.steps is None) != (p.tokens is None), key, where, "set exactly one of steps / tokens")
    _check((p.batch_tokens is None) != (p.batch_rows is None), key, where, "set exactly one of batch_tokens / batch_rows")
    _check(p.steps is None or p.steps > 0, f"{key}.steps", where, "must be > 0")
    _check(p.tokens is None or p.tokens > 0, f"{key}.tokens", where, "must be > 0")
    _check(0.0 < p.mask_ratio < 1.0, f"{key}.mask_ratio", where, "must be in (0, 1)")
    _check(p.tau >= 0.0, f"{key}.tau", where, "must be >= 0")
    _check(p.seq_len > 0, f"{key}.seq_len", where, "must be > 0")
    _check(p.global_batch_tokens > 0, f"{key}.batch_tokens", where, "must be > 0")
    _check(0.0 <= p.batch_warmup <= 1.0, f"{key}.batch_warmup", where, "must be in [0, 1]")
    _check(0.0 < p.batch_warmup_start <= 1.0, f"{key}.batch_warmup_start", where, "must be in (0, 1]")
    validate_languages(p.languages, f"{key}.languages", where)
    _check(p.sizes in ("corpus", "mmbert"), f"{key}.sizes", where, "must be 'corpus' or 'mmbert'")
    if p.sizes == "mmbert":
        phase = p.sizes_phase or (p.languages.get("mmbert") if isinstance(p.languages, dict) else None)
        _check(phase in LANGUAGE_PHASES, f"{key}.sizes_phase", where,
               f"sizes: mmbert needs sizes_phase (or languages: {{mmbert: ...}}) in {LANGUAGE_PHASES}")
    seen: dict[str, str] = {}
    for name, g in p.groups.items():
        gkey = f"{key}.groups.{name}"
        _check(isinstance(g, dict) and set(g) == {"share", "languages"}, gkey, where,
               "a sampling group is {share: S, languages: [ids]}")
        _check(isinstance(g["share"], (int, float)) and not isinstance(g["share"], bool) and g["share"] > 0,
               f"{gkey}.share", where, "must be a number > 0")
        _check(isinstance(g["languages"], list) and bool(g["languages"])
               and all(isinstance(x, str) for x in g["languages"]), f"{gkey}.languages", where,
               "must be a non-empty list of ids")
        for lang in g["languages"]:
            _check(lang not in seen, f"{gkey}.languages", where, f"{lang} is also in group {seen.get(lang)!r}")
            seen[lang] = name
    lr = p.lr
    _check(p.manifest is None or isinstance(p.manifest, str), f"{key}.manifest", where, "must be a path")
    _check(lr.decay in DECAYS, f"{key}.lr.decay", where, f"must be one of {DECAYS}")
    _check(0.0 <= lr.warmup <= 1.0 and 0.0 <= lr.decay_fraction <= 1.0 and lr.warmup + lr.decay_fraction <= 1.0,
           f"{key}.lr", where, "warmup and decay_fraction must be fractions summing to <= 1")
    _check(lr.decay != "none" or lr.decay_fraction == 0.0, f"{key}.lr.decay", where, "decay_fraction > 0 needs a decay shape")
    _check(0.0 <= lr.floor <= 1.0, f"{key}.lr.floor", where, "must be in [0, 1]")


def variant_phase(phase: PhaseConfig, variant: dict[str, Any], where: str, key: str) -> PhaseConfig:
    """The phase a decay variant trains: the phase's fields overridden by the variant's."""
    if not isinstance(variant, dict) or not isinstance(variant.get("name"), str):
        raise ConfigError(f"{key!r} in {where}: a variant must be a mapping with a 'name'")
    if "variants" in variant:
        raise ConfigError(f"{key}.variants in {where}: variants cannot nest")
    base = _plain(dataclasses.asdict(phase))
    base["variants"] = []
    lr = {**base["lr"], **(variant.get("lr") or {})}
    merged = {**base, **{k: v for k, v in variant.items() if k != "name"}, "lr": lr}
    merged["name"] = phase.name  # the variant's name is kept by the caller; the phase keeps its own
    p = _build(PhaseConfig, merged, key, where)
    validate_phase(p, key, where)
    return p


def validate(cfg: TrainConfig, where: str) -> None:
    _check(len(cfg.phases) > 0, "phases", where, "needs at least one phase")
    names = [p.name for p in cfg.phases]
    _check(len(set(names)) == len(names), "phases", where, f"phase names must be unique, got {names}")
    for i, p in enumerate(cfg.phases):
        validate_phase(p, f"phases.{i}", where)
        if p.variants:
            _check(i == len(cfg.phases) - 1, f"phases.{i}.variants", where, "only the last phase may have variants")
            vnames = []
            for j, v in enumerate(p.variants):
                variant_phase(p, v, where, f"phases.{i}.variants.{j}")
                vnames.append(v["name"])
            _check(len(set(vnames)) == len(vnames), f"phases.{i}.variants", where, f"names must be unique: {vnames}")
    _check(cfg.optimizer.name in OPTIMIZERS, "optimizer.name", where, f"expected one of {OPTIMIZERS}")
    _check(cfg.optimizer.kernel in KERNELS, "optimizer.kernel", where, f"expected one of {KERNELS}")
    _check(cfg.threads >= 0, "threads", where, "must be >= 0 (0 = the available cores)")
    d = cfg.data
    sources = [d.builtin is not None, d.manifest is not None, d.synthetic]
    _check(sum(sources) == 1, "data", where, "set exactly one of builtin / manifest / synthetic")
    _check(d.builtin in (None, "udhr"), "data.builtin", where, "the only builtin corpus is 'udhr'")
    _check(cfg.precision in ("auto", "bf16", "fp32"), "precision", where, "must be auto, bf16 or fp32")
    _check(cfg.device in ("auto", "cpu", "cuda"), "device", where, "must be auto, cpu or cuda")
    _check(cfg.parallel in ("ddp", "fsdp"), "parallel", where, "must be ddp or fsdp")
    _check(cfg.micro_batch_tokens > 0, "micro_batch_tokens", where, "must be > 0")
    _check(cfg.max_bad_steps >= 1, "max_bad_steps", where, "must be >= 1")
    _check(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last", where, "must be >= 1")
    _check(cfg.eval.languages in ("all", "active") or isinstance(cfg.eval.languages, list), "eval.languages",
           where, "must be 'all', 'active' or a list of ids")
    _check(cfg.model.preset is not None or cfg.model.config is not None, "model", where, "set preset or config")


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
