"""Merging: the pure math against hand-computed values, the streaming runner, its errors, the CLI, and a
TIES merge of real tiny models loaded back by mmbert and by transformers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmbert.cli import main as cli_main
from mmbert.merge import disjoint_merge, elect_sign, linear, merge, task_arithmetic, ties, trim_magnitude
from mmbert.merge import methods
from mmbert.merge.runner import MergeSpec
from mmbert.merge.safetensors_io import TensorInfo, read_header, write_streaming
from mmbert.model.config import ModelConfig
from tests.conftest import assert_close

T = torch.tensor


# ---- trim ------------------------------------------------------------------------------------------

def test_trim_keeps_top_magnitudes():
    x = T([0.5, -2.0, 1.0, -0.25, 3.0])
    assert torch.equal(trim_magnitude(x, 0.4), T([0.0, -2.0, 0.0, 0.0, 3.0]))  # k = 2
    assert torch.equal(x, T([0.5, -2.0, 1.0, -0.25, 3.0])), "out-of-place trim modified its input"


def test_trim_ties_at_threshold_keep_first_in_row_major_order():
    # k = 2 of three entries with |x| = 2 (indices 1, 2, 3): the first two are kept.
    assert torch.equal(trim_magnitude(T([1.0, -2.0, 2.0, -2.0, 0.5]), 0.4), T([0.0, -2.0, 2.0, 0.0, 0.0]))
    # One entry above the threshold, then one of the tied ones.
    assert torch.equal(trim_magnitude(T([3.0, 2.0, -2.0, 2.0]), 0.5), T([3.0, 2.0, 0.0, 0.0]))
    # 2-D: row-major order decides, across rows.
    x = T([[1.0, 5.0], [5.0, 5.0]])
    assert torch.equal(trim_magnitude(x, 0.5), T([[0.0, 5.0], [5.0, 0.0]]))


def test_trim_ties_split_across_chunks():
    x = T([3.0, 2.0, -2.0, 2.0, 1.0, -2.0])  # k = 3: 3, then the first two 2s (indices 1, 2)
    expected = T([3.0, 2.0, -2.0, 0.0, 0.0, 0.0])
    for chunk in (1, 2, 4, 100):
        assert torch.equal(methods.trim_magnitude_(x.clone(), 0.5, chunk=chunk), expected), chunk


def test_trim_density_edges():
    x = torch.randn(7, 5)
    assert torch.equal(trim_magnitude(x, 1.0), x)
    assert torch.equal(trim_magnitude(x, 0.0), torch.zeros(7, 5))
    assert int((trim_magnitude(torch.randn(100), 0.29) != 0).sum()) == 29  # floor with float slack
    assert int((trim_magnitude(torch.randn(100), 0.295) != 0).sum()) == 29
    # Threshold 0: more kept than there are non-zeros; values are unchanged.
    assert torch.equal(trim_magnitude(T([0.0, 0.0, 1.0, 0.0]), 0.5), T([0.0, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="density"):
        trim_magnitude(x, 1.5)


def test_trim_bf16():
    x = T([0.5, -2.0, 1.0, -0.25], dtype=torch.bfloat16)
    assert torch.equal(trim_magnitude(x, 0.5), T([0.0, -2.0, 1.0, 0.0], dtype=torch.bfloat16))


# ---- sign election, disjoint mean -------------------------------------------------------------------

def test_elect_sign_zero_sum_elects_plus():
    weighted = [T([1.0, -1.0, 0.0, 2.0]), T([-3.0, 1.0, 0.0, -1.0])]
    assert torch.equal(elect_sign(weighted), T([-1.0, 1.0, 1.0, 1.0]))  # sums -2, 0, 0, 1


def test_disjoint_merge_hand_computed():
    weighted = [T([1.0, -1.0, 0.0, 2.0, 2.0]), T([-3.0, 1.0, 0.0, -1.0, 4.0])]
    sign = elect_sign(weighted)  # -1, +1, +1, +1, +1
    # Only agreeing values count; a zero agrees with neither sign; no agreement -> 0.
    assert torch.equal(disjoint_merge(weighted, [1.0, 1.0], sign), T([-3.0, 1.0, 0.0, 2.0, 3.0]))
    assert torch.equal(disjoint_merge(weighted, [1.0, 1.0], sign, normalize=False), T([-3.0, 1.0, 0.0, 2.0, 6.0]))


# ---- the three methods on one tensor -----------------------------------------------------------------

BASE = torch.ones(6)
TAUS = [T([4.0, -1.0, 0.5, -2.0, 0.0, 1.0]),
        T([2.0, 3.0, -0.5, -2.0, -1.0, -1.0]),
        T([-1.0, 2.0, 1.0, 4.0, 0.0, -1.0])]
MODELS = [BASE + t for t in TAUS]


def test_ties_hand_computed():
    # density 0.5 -> k = 3 per model:
    #   A [4,-1,0,-2,0,0] (|1| tied at 1 and 5: first kept), B [2,3,0,-2,0,0], C [-1,2,0,4,0,0] (first |1| kept)
    #   sums [5,4,0,0,0,0] -> all +1 (index 3 sums to exactly 0 -> +1)
    #   disjoint mean: (4+2)/2, (3+2)/2, none, C's 4 alone, none, none
    expected_delta = T([3.0, 2.5, 0.0, 4.0, 0.0, 0.0])
    assert torch.equal(ties(BASE, MODELS, [1, 1, 1], density=0.5), BASE + expected_delta)
    assert torch.equal(ties(BASE, MODELS, [1, 1, 1], density=0.5, lambda_=0.5), BASE + 0.5 * expected_delta)
    # normalize=False sums the agreeing values.
    assert torch.equal(ties(BASE, MODELS, [1, 1, 1], 0.5, normalize=False), BASE + T([6.0, 5.0, 0, 4.0, 0, 0]))


def test_ties_weighted_like_mergekit():
    # weights 1, 2, 1: weighted trimmed A [4,-1,0,-2,0,0], B [4,6,0,-4,0,0], C [-1,2,0,4,0,0]
    # sums [7,7,0,-2,0,0] -> +,+,+,-,+,+ ; (4+4)/(1+2), (6+2)/(2+1), 0, (-2-4)/(1+2), 0, 0
    out = ties(BASE, MODELS, [1.0, 2.0, 1.0], density=0.5)
    assert_close(out, BASE + T([8 / 3, 8 / 3, 0.0, -2.0, 0.0, 0.0]), atol=1e-6, what="weighted ties")


def test_ties_density_one_and_zero():
    # density 1: sums [5,4,1,0,-1,-1] -> +,+,+,+,-,- ; means 3, 2.5, 0.75, 4 (0-sum -> +, C alone), -1, -1
    assert torch.equal(ties(BASE, MODELS, [1, 1, 1], 1.0), BASE + T([3.0, 2.5, 0.75, 4.0, -1.0, -1.0]))
    assert torch.equal(ties(BASE, MODELS, [1, 1, 1], 0.0), BASE)


def test_ties_inplace_matches_and_pure_form_leaves_inputs():
    base = torch.randn(33, 17)
    models = [base + torch.randn(33, 17) for _ in range(3)]
    copies = [m.clone() for m in models]
    expected = ties(base, models, [0.5, 1.0, 2.0], 0.3, lambda_=0.7)
    assert all(torch.equal(m, c) for m, c in zip(models, copies)), "pure ties modified its inputs"
    got = ties(base.clone(), copies, [0.5, 1.0, 2.0], 0.3, lambda_=0.7, inplace=True, chunk=50)
    assert torch.equal(got, expected)


def test_task_arithmetic_hand_computed():
    base, a, b = T([1.0, 2.0]), T([2.0, 2.0]), T([0.0, 4.0])  # τ_a [1, 0], τ_b [-1, 2]
    # 1 + 2 * (1*[1,0] + 0.5*[-1,2]) = [2, 4]
    assert torch.equal(task_arithmetic(base, [a, b], [1.0, 0.5], lambda_=2.0), T([2.0, 4.0]))
    # normalize: the weighted sum [0.5, 1] is divided by 1.5 first
    assert_close(task_arithmetic(base, [a, b], [1.0, 0.5], 2.0, normalize=True), T([1 + 2 / 3, 2 + 4 / 3]),
                 atol=1e-6, what="normalized task arithmetic")
    got = task_arithmetic(base.clone(), [a.clone(), b.clone()], [1.0, 0.5], lambda_=2.0, inplace=True)
    assert torch.equal(got, T([2.0, 4.0]))


def test_linear_hand_computed():
    a, b = T([1.0, 2.0]), T([3.0, 6.0])
    assert torch.equal(linear([a, b], [1.0, 3.0]), T([2.5, 5.0]))  # (1 + 9) / 4, (2 + 18) / 4
    assert torch.equal(linear([a, b], [1.0, 3.0], normalize=False), T([10.0, 20.0]))
    assert torch.equal(linear(iter([a.clone(), b.clone()]), [1.0, 3.0], inplace=True), T([2.5, 5.0]))
    assert torch.equal(a, T([1.0, 2.0]))


# ---- safetensors streaming writer --------------------------------------------------------------------

def test_write_streaming_roundtrips_every_dtype(tmp_path):
    tensors = {
        "a.weight": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.randn(2, 2).to(torch.float16),
        "d": torch.arange(5, dtype=torch.int64),
        "scalar": T(3.5),
        "empty": torch.zeros(0, 4),
    }
    layout = {k: TensorInfo({torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                             torch.int64: "I64"}[v.dtype], tuple(v.shape)) for k, v in tensors.items()}
    path = write_streaming(tmp_path / "x.safetensors", layout, iter(tensors.items()), {"k": "v"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"k": "v"}
        for k, v in tensors.items():
            assert torch.equal(f.get_tensor(k), v), k
    assert list(read_header(path)[0]) == list(tensors)
    with pytest.raises(ValueError, match="'b'.*header says"):
        write_streaming(tmp_path / "y.safetensors", layout, iter([("a.weight", tensors["a.weight"]),
                                                                  ("b", torch.zeros(7))]))


# ---- the runner on checkpoint directories -------------------------------------------------------------

TINY = ModelConfig.from_preset("tiny")


def write_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], config: ModelConfig = TINY,
                     tokenizer: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    config.save(directory)
    if tokenizer:
        (directory / "tokenizer.json").write_text('{"version": "1.0"}')
        (directory / "tokenizer_config.json").write_text('{"model_max_length": 8192}')
    return directory


def load(directory: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def small_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.embeddings.tok_embeddings.weight": torch.randn(11, 4, generator=g),
            "model.layers.0.attn.Wqkv.weight": torch.randn(12, 4, generator=g),
            "decoder.bias": torch.randn(11, generator=g)}


@pytest.fixture
def three(tmp_path):
    """A base and three models of small random tensors; the models carry tokenizer files."""
    base = write_checkpoint(tmp_path / "base", small_state(0), tokenizer=True)
    models = [write_checkpoint(tmp_path / f"m{i}", small_state(i + 1)) for i in range(3)]
    return base, models


def test_runner_ties_matches_pure_math_and_writes_provenance(three, tmp_path):
    base, models = three
    out = merge("ties", models, tmp_path / "out", base=base, weights=[1.0, 2.0, 0.5], density=0.4, lambda_=0.8)
    assert out == (tmp_path / "out").resolve()
    merged, b = load(out), load(base)
    ms = [load(m) for m in models]
    assert list(merged) == list(b)
    for k in b:
        expected = ties(b[k], [m[k] for m in ms], [1.0, 2.0, 0.5], 0.4, lambda_=0.8)
        assert torch.equal(merged[k], expected), k
    # Provenance: method, mergekit-named parameters, inputs with sha256 of their model.safetensors.
    meta = read_header(out / "model.safetensors")[1]
    assert meta["format"] == "pt" and meta["merge_method"] == "ties"
    prov = json.loads(meta["merge"])
    assert prov["parameters"] == {"density": 0.4, "lambda": 0.8, "normalize": True}
    assert prov["base"]["sha256"] == hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()
    assert [m["weight"] for m in prov["models"]] == [1.0, 2.0, 0.5]
    assert prov["models"][2]["path"] == str(models[2].resolve())
    assert prov["models"][2]["sha256"] == hashlib.sha256((models[2] / "model.safetensors").read_bytes()).hexdigest()
    # config + tokenizer files from the base; nothing temporary left beside the output.
    assert (out / "config.json").read_bytes() == (base / "config.json").read_bytes()
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'
    assert (out / "tokenizer_config.json").is_file() and not (out / "special_tokens_map.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "m0", "m1", "m2", "out"]


def test_runner_linear_and_task_arithmetic(three, tmp_path):
    base, models = three
    b, ms = load(base), [load(m) for m in models]
    out = merge("linear", models, tmp_path / "lin", weights=[1, 2, 3])  # no base: config from the first model
    for k, v in load(out).items():
        assert_close(v, (ms[0][k] + 2 * ms[1][k] + 3 * ms[2][k]) / 6, atol=1e-6, what=k)
    assert not (out / "tokenizer.json").exists()  # the first model has none
    out = merge("task_arithmetic", models, tmp_path / "ta", base=base, weights=[1, 2, 3], lambda_=0.5)
    for k, v in load(out).items():
        expected = b[k] + 0.5 * sum(w * (m[k] - b[k]) for w, m in zip([1, 2, 3], ms))
        assert_close(v, expected, atol=1e-5, what=k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merging_identical_models_returns_the_model(tmp_path, dtype):
    state = {k: v.to(dtype) for k, v in small_state(7).items()}
    base = write_checkpoint(tmp_path / "base", {k: v.to(dtype) for k, v in small_state(8).items()})
    models = [write_checkpoint(tmp_path / f"m{i}", state) for i in range(3)]
    runs = {"linear": dict(), "task_arithmetic": dict(base=base, normalize=True),
            "ties": dict(base=base, density=1.0)}
    for method, kw in runs.items():
        merged = load(merge(method, models, tmp_path / method, **kw))
        for k, v in state.items():
            assert merged[k].dtype == dtype
            assert_close(merged[k], v, atol=1e-6 if dtype == torch.float32 else 1e-2, what=f"{method} {k}")
    # Against itself as the base every task vector is 0: bit-exact, whatever the density.
    merged = load(merge("ties", models, tmp_path / "self", base=models[0], density=0.2))
    assert all(torch.equal(merged[k], v) for k, v in state.items())


def test_mismatched_inputs_name_the_tensor_or_field(tmp_path):
    base = write_checkpoint(tmp_path / "base", small_state(0))
    good = write_checkpoint(tmp_path / "good", small_state(1))

    def bad(name, change, config=TINY):
        state = small_state(2)
        change(state)
        return write_checkpoint(tmp_path / name, state, config)

    missing = bad("missing", lambda s: s.pop("decoder.bias"))
    extra = bad("extra", lambda s: s.update({"head.dense.weight": torch.zeros(2, 2)}))
    shape = bad("shape", lambda s: s.update({"decoder.bias": torch.zeros(12)}))
    dtype = bad("dtype", lambda s: s.update({"decoder.bias": s["decoder.bias"].half()}))
    config = bad("config", lambda s: None, TINY.replace(num_hidden_layers=5))
    cases = [(missing, r"tensor 'decoder.bias' is in .*base.* but not in .*missing"),
             (extra, r"tensor 'head.dense.weight' is in .*extra.* but not in .*base"),
             (shape, r"tensor 'decoder.bias': shape \[11\] in .*base.* but \[12\] in .*shape"),
             (dtype, r"tensor 'decoder.bias': dtype F32 in .*base.* but F16 in .*dtype"),
             (config, r"config mismatch: num_hidden_layers is 4 in .*base.* but 5 in .*config")]
    for other, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            merge("ties", [good, other], tmp_path / "out", base=base, density=0.5)
    assert not (tmp_path / "out").exists()


def test_rope_theta_may_differ_but_is_taken_from_the_base(tmp_path):
    base = write_checkpoint(tmp_path / "base", small_state(0))
    other = write_checkpoint(tmp_path / "other", small_state(1), TINY.replace(local_rope_theta=160_000.0))
    out = merge("task_arithmetic", [other], tmp_path / "out", base=base)
    assert ModelConfig.load(out).local_rope_theta == TINY.local_rope_theta


def test_integer_tensors_are_copied_when_equal_and_refused_when_not(tmp_path):
    ids = torch.arange(6, dtype=torch.int64)
    base = write_checkpoint(tmp_path / "base", {**small_state(0), "position_ids": ids})
    a = write_checkpoint(tmp_path / "a", {**small_state(1), "position_ids": ids})
    out = merge("ties", [a], tmp_path / "out", base=base, density=0.5)
    assert torch.equal(load(out)["position_ids"], ids)
    b = write_checkpoint(tmp_path / "b", {**small_state(2), "position_ids": ids + 1})
    with pytest.raises(ValueError, match="tensor 'position_ids' .*differs"):
        merge("ties", [a, b], tmp_path / "out2", base=base, density=0.5)


def test_parameter_errors(three, tmp_path):
    base, models = three
    with pytest.raises(ValueError, match="ties needs a density"):
        merge("ties", models, tmp_path / "o", base=base)
    with pytest.raises(ValueError, match="density applies only to ties"):
        merge("linear", models, tmp_path / "o", density=0.5)
    with pytest.raises(ValueError, match="lambda applies"):
        merge("linear", models, tmp_path / "o", lambda_=2.0)
    with pytest.raises(ValueError, match="needs a base"):
        merge("task_arithmetic", models, tmp_path / "o")
    with pytest.raises(ValueError, match="got 2 weights for 3 models"):
        merge("linear", models, tmp_path / "o", weights=[1, 2])
    with pytest.raises(ValueError, match="unknown merge method 'dare'"):
        merge("dare", models, tmp_path / "o", base=base)
    with pytest.raises(ValueError, match=r"density must be in \[0, 1\]"):
        merge("ties", models, tmp_path / "o", base=base, density=-0.1)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        merge("linear", [tmp_path], tmp_path / "o")
    assert MergeSpec.resolve("task_arithmetic", 2).normalize is False  # mergekit's defaults
    assert MergeSpec.resolve("ties", 2, density=0.2).normalize is True


def test_output_is_atomic_and_not_overwritten_by_default(three, tmp_path, monkeypatch):
    base, models = three
    out = merge("linear", models, tmp_path / "out")
    with pytest.raises(ValueError, match="already exists"):
        merge("linear", models, out)
    before = load(out)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(methods, "ties", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        merge("ties", models, out, base=base, density=0.5, overwrite=True)
    assert all(torch.equal(load(out)[k], v) for k, v in before.items()), "failed merge touched the old output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "m0", "m1", "m2", "out"]
    monkeypatch.undo()
    merge("ties", models, out, base=base, density=0.5, overwrite=True)
    assert json.loads(read_header(out / "model.safetensors")[1]["merge"])["method"] == "ties"


def test_cli(three, tmp_path, capsys):
    base, models = three
    argv = ["merge", "--method", "ties", "--base", str(base), "--models", *map(str, models),
            "--weights", "1", "1", "2", "--density", "0.5", "--lambda", "0.9", "--no-normalize",
            "--out", str(tmp_path / "cli")]
    assert cli_main(argv) == 0
    assert "merged 3 models (ties" in capsys.readouterr().out
    prov = json.loads(read_header(tmp_path / "cli" / "model.safetensors")[1]["merge"])
    assert prov["parameters"] == {"density": 0.5, "lambda": 0.9, "normalize": False}
    b, ms = load(base), [load(m) for m in models]
    for k, v in load(tmp_path / "cli").items():
        assert torch.equal(v, ties(b[k], [m[k] for m in ms], [1, 1, 2], 0.5, lambda_=0.9, normalize=False)), k
    assert cli_main(argv) == 1  # exists: a one-line error, not a traceback
    assert "already exists" in capsys.readouterr().err


# ---- real tiny models ----------------------------------------------------------------------------------

def reference_ties(base, models, density, lambda_=1.0):
    """An independent, naive TIES: a stable descending sort picks each task vector's top k."""
    trimmed = []
    for m in models:
        tau = (m - base).flatten()
        k = int(density * tau.numel() + 1e-6)
        keep = torch.sort(tau.abs(), descending=True, stable=True).indices[:k]
        t = torch.zeros_like(tau)
        t[keep] = tau[keep]
        trimmed.append(t)
    stacked = torch.stack(trimmed)
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = (torch.sign(stacked) == sign).float()
    mean = (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)
    return base + lambda_ * mean.view(base.shape)


def test_ties_merge_of_tiny_mmbert_loads_in_mmbert_and_transformers(tmp_path):
    MmBertForMaskedLM = pytest.importorskip("mmbert.model").MmBertForMaskedLM
    transformers = pytest.importorskip("transformers")
    base_model = MmBertForMaskedLM(TINY)
    base_dir = base_model.save_pretrained(tmp_path / "base")
    base = load(tmp_path / "base")
    variants = []
    for i in range(3):
        g = torch.Generator().manual_seed(100 + i)
        state = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        write_checkpoint(tmp_path / f"v{i}", state)
        variants.append(state)
    out = merge("ties", [tmp_path / f"v{i}" for i in range(3)], tmp_path / "merged", base=base_dir,
                density=0.3, lambda_=1.0)
    merged = load(out)
    assert list(merged) == list(base)
    for k, v in merged.items():
        assert_close(v, reference_ties(base[k], [s[k] for s in variants], 0.3), atol=1e-6, what=k)

    ids = torch.tensor([[2, 10, 11, 4, 12, 1]])
    ours = MmBertForMaskedLM.from_pretrained(out).eval()
    theirs = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    for name, p in theirs.state_dict().items():
        if name in merged:
            assert torch.equal(p, merged[name]), name
    assert torch.equal(theirs.state_dict()["decoder.weight"], merged["model.embeddings.tok_embeddings.weight"])
    with torch.no_grad():
        a = ours(ids).logits
        b = theirs(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert a.shape == b.shape == (1, 6, TINY.vocab_size) and torch.isfinite(a).all()
    assert_close(a, b, atol=1e-4, what="mmbert vs transformers logits of the merged model")


def test_benchmark_layout_is_the_model_key_set(tmp_path):
    """benchmarks/merge_memory.py writes mmbert-base-shaped files from a hand-written key list: it must be
    exactly what MmBertForMaskedLM saves."""
    import importlib.util

    MmBertForMaskedLM = pytest.importorskip("mmbert.model").MmBertForMaskedLM
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_memory.py"
    spec = importlib.util.spec_from_file_location("merge_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    MmBertForMaskedLM(TINY).save_pretrained(tmp_path / "m")
    saved = read_header(tmp_path / "m" / "model.safetensors")[0]
    assert bench.mmbert_layout(TINY) == saved
