"""The ``dense`` attention backend (chunks of pieces, one masked SDPA per layer) against the banded /
per-sequence ``sdpa`` backend: same outputs and gradients, on packed rows and on ragged pieces."""

import pytest
import torch

from mmbert.model.attention import DENSE_MAX_LEN, DenseLayout, VarlenBatch, varlen_attention


def _pieces(seed: int, full_rows: bool) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    if full_rows:  # the trainer's packed rows: 4 rows of 128, each cut into pieces
        out = []
        for _ in range(4):
            left = 128
            while left:
                n = min(left, int(torch.randint(5, 90, (1,), generator=g)))
                out.append(n)
                left -= n
        return out
    return torch.randint(1, 200, (9,), generator=g).tolist()


@pytest.mark.parametrize("full_rows", [True, False])
@pytest.mark.parametrize("local", [True, False])
def test_dense_matches_sdpa(full_rows, local):
    seqlens = _pieces(3, full_rows)
    cu = torch.nn.functional.pad(torch.cumsum(torch.tensor(seqlens), 0), (1, 0)).to(torch.int32)
    n = int(cu[-1])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 2, 8, generator=g, requires_grad=True) for _ in range(3))
    outs, grads = [], []
    for backend in ("dense", "sdpa"):
        batch = VarlenBatch.from_cu_seqlens(cu, window=16)
        o = varlen_attention(q, k, v, batch, local=local, backend=backend)
        (gq, gk, gv) = torch.autograd.grad((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum(), (q, k, v))
        outs.append(o)
        grads.append((gq, gk, gv))
    layout = VarlenBatch.from_cu_seqlens(cu, window=16).dense_layout()
    assert (layout.slots is None) == full_rows  # packed rows are used in place, ragged pieces are gathered
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_layout_packs_rows_and_refuses_long_pieces():
    assert DenseLayout.pack([100, 28, 128, 60, 68], 128) == [0, 0, 1, 2, 2]
    batch = VarlenBatch.from_cu_seqlens(torch.tensor([0, DENSE_MAX_LEN + 1], dtype=torch.int32), window=16)
    assert batch.dense_layout() is None
    q = torch.zeros(DENSE_MAX_LEN + 1, 1, 4)
    with pytest.raises(ValueError, match="at most"):
        varlen_attention(q, q, q, batch, local=False, backend="dense")
    assert varlen_attention(q, q, q, batch, local=False, training=True).shape == q.shape  # auto falls back to sdpa


def test_auto_picks_by_the_module_mode_not_by_grad_mode():
    """GradCache embeds without a graph, then again with one: both passes of a training-mode model must take
    the same backend, or the cached gradients are of another function."""
    torch.manual_seed(0)
    batch = VarlenBatch.from_cu_seqlens(torch.tensor([0, 40, 100], dtype=torch.int32), window=16)
    q, k, v = (torch.randn(100, 2, 8) for _ in range(3))
    dense = varlen_attention(q, k, v, batch, local=True, backend="dense")
    with torch.no_grad():
        no_grad = varlen_attention(q, k, v, batch, local=True, training=True)
    assert torch.equal(no_grad, dense)


@pytest.mark.parametrize("local", [True, False])
def test_dense_bf16_on_cpu_matches_fp32(local):
    """bf16 on CPU takes the matmul path (scores + additive bias, softmax, matmul), not flash SDPA: its output
    and gradients are the fp32 banded / per-sequence backend's to bf16 rounding, and masked keys get exactly no
    weight (a large value planted in one piece's values must not reach another piece)."""
    seqlens = _pieces(5, True)
    cu = torch.nn.functional.pad(torch.cumsum(torch.tensor(seqlens), 0), (1, 0)).to(torch.int32)
    n = int(cu[-1])
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(n, 2, 16, generator=g) for _ in range(3))
    weight = torch.linspace(-1, 1, q.numel()).view_as(q)

    def run(dtype, backend, values):
        leaves = [x.to(dtype).requires_grad_() for x in (q, k, values)]
        o = varlen_attention(*leaves, VarlenBatch.from_cu_seqlens(cu, window=16), local=local, backend=backend)
        return o.float(), [x.float() for x in torch.autograd.grad((o.float() * weight).sum(), leaves)]

    out, grads = run(torch.bfloat16, "dense", v)
    ref, ref_grads = run(torch.float32, "sdpa", v)
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    for a, b in zip(grads, ref_grads):
        assert ((a - b).norm() / b.norm()) < 1e-2
    planted = v.clone()
    planted[: seqlens[0]] += 1e3
    out, _ = run(torch.bfloat16, "dense", planted)
    torch.testing.assert_close(out[seqlens[0]:], ref[seqlens[0]:], atol=2e-2, rtol=2e-2)
