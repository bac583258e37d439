"""The ``bmm`` attention backend (inference in bf16 on CPU: two batched matmuls per attention, banded local
layers in query blocks of 64) against the padded dense reference, which shares none of its code."""

import pytest
import torch
import torch.nn.functional as F

from mmbert.model.attention import BMM_BLOCK, VarlenBatch, padded_attention, varlen_attention


def _padded_reference(q, k, v, seqlens, window):
    """Each sequence on its own row of a padded batch, masked dense SDPA, back to the stream."""
    heads, dim, t = q.shape[1], q.shape[2], max(seqlens)
    rows = [x.split(seqlens) for x in (q, k, v)]
    grid = [torch.stack([F.pad(p, (0, 0, 0, 0, 0, t - p.shape[0])) for p in r]).transpose(1, 2) for r in rows]
    mask = torch.stack([torch.arange(t) < s for s in seqlens]).long()
    o = padded_attention(*grid, mask, window).transpose(1, 2)  # (B, T, H, D)
    return torch.cat([o[i, :s] for i, s in enumerate(seqlens)])


# lengths across several query blocks, shorter than the window, and of one token; a document boundary
# falls inside most blocks
SEQLENS = [3 * BMM_BLOCK + 5, 1, 40, 2 * BMM_BLOCK, 17, BMM_BLOCK + 1]


@pytest.mark.parametrize("local", [True, False])
def test_bmm_matches_the_padded_reference(local):
    window = 32
    cu = F.pad(torch.cumsum(torch.tensor(SEQLENS), 0), (1, 0)).to(torch.int32)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(int(cu[-1]), 2, 8, generator=g) for _ in range(3))
    batch = VarlenBatch.from_cu_seqlens(cu, window=window)
    with torch.inference_mode():
        got = varlen_attention(q, k, v, batch, local=local, backend="bmm")
        want = _padded_reference(q, k, v, SEQLENS, window if local else None)
        sdpa = varlen_attention(q, k, v, batch, local=local, backend="sdpa")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, sdpa, atol=1e-5, rtol=1e-5)
    # bf16, the dtype it runs in: to bf16's precision (scores and probabilities rounded to 8 bits)
    with torch.inference_mode():
        low = varlen_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), batch, local=local, backend="bmm")
    assert low.dtype == torch.bfloat16
    assert (low.float() - want).norm() / want.norm() < 2e-2


def test_bmm_refuses_dropout():
    cu = torch.tensor([0, 10], dtype=torch.int32)
    q = torch.randn(10, 2, 8)
    with pytest.raises(ValueError, match="bmm attention backend is for inference"):
        varlen_attention(q, q, q, VarlenBatch.from_cu_seqlens(cu, window=4), local=False, dropout_p=0.1,
                         backend="bmm")


def _many_pieces(n_pieces: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    # like the held-out set's pieces: the first <= 128 tokens of an article, most of them full (its chunks of 128
    # score 1.24-1.43x what the pieces need)
    return torch.randint(100, 129, (n_pieces,), generator=g).tolist()


def test_bf16_inference_runs_global_layers_dense_over_many_pieces_and_local_layers_banded():
    from mmbert.model.attention import DENSE_MIN_PIECES, auto_backend

    q = torch.zeros(8, 2, 8, dtype=torch.bfloat16)
    many = VarlenBatch.from_cu_seqlens(F.pad(torch.cumsum(torch.tensor(_many_pieces(40)), 0), (1, 0)), window=32)
    few = VarlenBatch.from_cu_seqlens(torch.tensor([0, 100, 220], dtype=torch.int32), window=32)
    assert len(few.seqlens) < DENSE_MIN_PIECES
    assert auto_backend(q, many, training=False, local=False) == "dense"
    assert auto_backend(q, many, training=False, local=True) == "bmm"
    assert auto_backend(q, few, training=False, local=False) == "bmm"
    assert auto_backend(q.float(), many, training=False, local=False) == "sdpa"  # fp32 inference: flash SDPA
    # many short pieces: the loop's per-piece ops outweigh chunks that score 1.9x what the pieces need
    short = VarlenBatch.from_cu_seqlens(
        F.pad(torch.cumsum(torch.randint(16, 64, (64,), generator=torch.Generator().manual_seed(0)), 0), (1, 0)),
        window=32)
    assert auto_backend(q, short, training=False, local=False) == "dense"
    # one long piece among ~100-token ones: chunks of 304 would score 2.6x what the pieces need; the loop stays
    skewed = VarlenBatch.from_cu_seqlens(
        F.pad(torch.cumsum(torch.tensor([300] + [100] * 30), 0), (1, 0)), window=32)
    assert not skewed.dense_pays() and auto_backend(q, skewed, training=False, local=False) == "bmm"


def test_dense_inference_path_matches_the_reference_and_the_piece_loop():
    seqlens = _many_pieces(24, seed=1)
    cu = F.pad(torch.cumsum(torch.tensor(seqlens), 0), (1, 0)).to(torch.int32)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(int(cu[-1]), 4, 16, generator=g) for _ in range(3))
    batch = VarlenBatch.from_cu_seqlens(cu, window=32)
    want = _padded_reference(q, k, v, seqlens, None)
    with torch.inference_mode():
        dense = varlen_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), batch, local=False, backend="dense")
        loop = varlen_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), batch, local=False, backend="bmm")
    assert dense.dtype == torch.bfloat16 and dense.shape == q.shape
    err = (dense.float() - want).norm() / want.norm()
    assert err < 1e-2
    assert abs(err - (loop.float() - want).norm() / want.norm()) < 2e-3  # the same rounding as the piece loop


def test_dense_bf16_arithmetic_follows_the_module_mode_not_grad_mode():
    """GradCache runs a training-mode model without a graph, then with one: in bf16 on CPU both passes must take
    the training path's arithmetic, not the inference path's baddbmm (whose rounding differs)."""
    seqlens = _many_pieces(20, seed=2)
    cu = F.pad(torch.cumsum(torch.tensor(seqlens), 0), (1, 0)).to(torch.int32)
    g = torch.Generator().manual_seed(0)
    # head_dim 24: a scale of 1/sqrt(24) rounds differently folded into the matmul than applied to q (at a power-of-two
    # head_dim such as the presets' 64 the two paths happen to agree bit for bit)
    q, k, v = (torch.randn(int(cu[-1]), 4, 24, generator=g).bfloat16() for _ in range(3))
    batch = VarlenBatch.from_cu_seqlens(cu, window=32)
    with torch.no_grad():
        no_graph = varlen_attention(q, k, v, batch, local=False, backend="dense", training=True)
        inference = varlen_attention(q, k, v, batch, local=False, backend="dense", training=False)
    q.requires_grad_(True)
    with_graph = varlen_attention(q, k, v, batch, local=False, backend="dense", training=True)
    assert torch.equal(no_graph, with_graph.detach())
    assert not torch.equal(no_graph, inference)  # the two paths do differ: the check above could fail
