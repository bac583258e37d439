"""The contrastive loss (hand computation, sentence-transformers' formulas), Matryoshka, cross-rank gathering
(2 gloo processes) and GradCache (loss and gradients equal the uncached ones, dropout on)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from mmbert.model import ModelConfig, MmBertForEmbedding
from mmbert.train.contrastive import ContrastiveLoss, matryoshka_loss, mnrl_loss, shrink
from mmbert.train.gradcache import RngState, cached_forward_backward, forward_backward
from tests.conftest import assert_close


def test_mnrl_matches_hand_computed_infonce_on_3x3():
    # unit vectors at known angles: cos(a_i, p_j) is read off directly
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    cos = [[1.0, 0.6, 0.0], [0.0, 0.8, 1.0], [math.sqrt(0.5), 1.4 * math.sqrt(0.5), math.sqrt(0.5)]]
    expected = 0.0
    for i in range(3):
        logits = [20 * c for c in cos[i]]
        expected += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    expected /= 3
    got = mnrl_loss(a * 3.0, p * 0.5)  # scaled inputs: cosine similarity does not care
    assert abs(got.item() - expected) < 1e-5, (got.item(), expected)
    # symmetric: the mean with each positive picking its anchor among the anchors (columns of cos)
    backward = sum(-(20 * cos[j][j] - math.log(sum(math.exp(20 * cos[i][j]) for i in range(3))))
                   for j in range(3)) / 3
    assert abs(mnrl_loss(a, p, symmetric=True).item() - (expected + backward) / 2) < 1e-5


def test_mnrl_equals_sentence_transformers_formula():
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    g = torch.Generator().manual_seed(1)
    a, p, n1, n2 = (torch.randn(8, 16, generator=g) for _ in range(4))

    class _Model:  # compute_loss_from_embeddings needs no model
        pass

    for kwargs, ours in [
        (dict(), dict()),
        (dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"), dict(symmetric=True)),
        (dict(scale=7.0), dict(scale=7.0)),
    ]:
        ref = st_losses.MultipleNegativesRankingLoss.__new__(st_losses.MultipleNegativesRankingLoss)
        torch.nn.Module.__init__(ref)
        ref.__dict__.update(scale=20.0, similarity_fct=_cos_sim(), gather_across_devices=False,
                            directions=("query_to_doc",), partition_mode="joint", hardness_mode=None,
                            hardness_strength=0.0)
        ref.__dict__.update(kwargs)
        for negs in ([], [n1], [n1, n2]):
            expected = ref.compute_loss_from_embeddings([a, p, *negs], None)
            got = mnrl_loss(a, p, negs, **ours)
            assert abs(got.item() - expected.item()) < 1e-5, (kwargs, len(negs), got.item(), expected.item())


def _cos_sim():
    from sentence_transformers.util import cos_sim

    return cos_sim


def test_matryoshka_renormalises_each_truncation():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 32, generator=g)
    s = shrink(x, 8)
    assert s.shape == (5, 8)
    assert_close(s.norm(dim=-1), torch.ones(5), 1e-6, "norm of a truncation")
    assert_close(s, x[:, :8] / x[:, :8].norm(dim=-1, keepdim=True), 1e-6, "truncate then normalise")
    seen = []

    def probe(a, p):
        seen.append((a.shape[-1], a.norm(dim=-1)))
        return mnrl_loss(a, p)

    a, p = torch.randn(4, 32, generator=g), torch.randn(4, 32, generator=g)
    total = matryoshka_loss(probe, [a, p], dims=(32, 16, 4), weights=(1.0, 0.5, 2.0))
    assert [d for d, _ in seen] == [32, 16, 4]
    for _, norms in seen:
        assert_close(norms, torch.ones(4), 1e-6, "loss input norms")
    expected = mnrl_loss(a, p) + 0.5 * mnrl_loss(a[:, :16], p[:, :16]) + 2.0 * mnrl_loss(a[:, :4], p[:, :4])
    assert abs(total.item() - expected.item()) < 1e-5
    loss = ContrastiveLoss(matryoshka_dims=(32, 16, 4), matryoshka_weights=(1.0, 0.5, 2.0))
    assert abs(loss(a, p).item() - expected.item()) < 1e-5
    with pytest.raises(ValueError, match="must be in"):
        shrink(x, 64)


# ---- GradCache --------------------------------------------------------------------------------------


def _model(dropout: float) -> MmBertForEmbedding:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny").replace(attention_dropout=dropout, mlp_dropout=dropout,
                                                  embedding_dropout=dropout)
    return MmBertForEmbedding(cfg).train()


def _chunks(n_texts: int, per_chunk: int, vocab: int):
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(4, 24, (n_texts,), generator=g).tolist()
    seqs = [torch.randint(5, vocab, (n,), generator=g) for n in lengths]
    out = []
    for s in range(0, n_texts, per_chunk):
        group = seqs[s : s + per_chunk]
        cu = F.pad(torch.tensor([len(x) for x in group]).cumsum(0), (1, 0)).to(torch.int32)
        out.append((torch.cat(group), cu))
    return out


def _pair_loss(emb: torch.Tensor) -> torch.Tensor:
    half = emb.shape[0] // 2
    return ContrastiveLoss(matryoshka_dims=(emb.shape[1], 16))(emb[:half], emb[half:])


def _run(model, chunks, cached: bool):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)

    def embed(c):
        return model(c[0], cu_seqlens=c[1])

    if cached:
        loss = cached_forward_backward(embed, chunks, _pair_loss, device=torch.device("cpu"), scale=3.0)
    else:
        loss = forward_backward(embed, chunks, _pair_loss, scale=3.0)
    return loss, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradcache_equals_uncached_loss_and_gradients(dropout):
    model = _model(dropout)
    chunks = _chunks(16, 3, model.config.vocab_size)  # 16 texts (8 pairs) in chunks of 3: uneven chunks
    loss_ref, grads_ref = _run(model, chunks, cached=False)
    loss, grads = _run(model, chunks, cached=True)
    assert abs(loss.item() - loss_ref.item()) < 1e-5, (loss.item(), loss_ref.item())
    assert grads.keys() == grads_ref.keys() and len(grads) == len(list(model.parameters()))
    for k in grads:
        assert_close(grads[k], grads_ref[k], 1e-5, f"grad {k}")
    if dropout:  # dropout really is drawn: without replaying the RNG, the second pass differs
        model.eval()
        loss_eval, _ = _run(model, chunks, cached=False)
        assert abs(loss_eval.item() - loss_ref.item()) > 1e-4
        model.train()


def test_rng_state_replays_dropout():
    model = _model(0.1)
    (ids, cu), = _chunks(4, 4, model.config.vocab_size)
    state = RngState(torch.device("cpu"))
    with torch.no_grad():
        first = model(ids, cu_seqlens=cu)
        other = model(ids, cu_seqlens=cu)  # fresh masks
    with state.restore():
        again = model(ids, cu_seqlens=cu)
    assert (first - other).abs().max() > 1e-4, "dropout is not active"
    assert_close(again.detach(), first, 1e-6, "no-grad and grad forwards from one RNG state")


# ---- gathering across ranks (2 gloo processes) ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, data: dict, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sl = slice(*data["slices"][rank])
        a = data["a"][sl].clone().requires_grad_()
        p = data["p"][sl].clone().requires_grad_()
        n = data["n"][sl].clone().requires_grad_()
        loss = ContrastiveLoss(symmetric=True, matryoshka_dims=(8, 4), gather=True)(a, p, n)
        # each rank's mean weighted by its share n_r / N: their sum is the global mean (the step's scaling,
        # before DDP's average over ranks, which the world_size factor it also applies cancels)
        (loss * (a.shape[0] / data["a"].shape[0])).backward()
        queue.put((rank, loss.item(), a.grad.tolist(), p.grad.tolist(), n.grad.tolist()))  # lists: no shared memory
    finally:
        dist.destroy_process_group()


def test_gathered_loss_and_gradients_equal_one_process():
    g = torch.Generator().manual_seed(4)
    a, p, n = (torch.randn(7, 8, generator=g) for _ in range(3))
    slices = [(0, 3), (3, 7)]  # unequal local batches
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_gather_worker, args=(r, 2, port, dict(a=a, p=p, n=n, slices=slices), queue))
             for r in range(2)]
    for proc in procs:
        proc.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    ref_a, ref_p, ref_n = (x.clone().requires_grad_() for x in (a, p, n))
    ref = ContrastiveLoss(symmetric=True, matryoshka_dims=(8, 4), gather=True)(ref_a, ref_p, ref_n)
    ref.backward()
    # the global mean is the share-weighted mean of the ranks' local means
    mean = sum(loss * (s[1] - s[0]) for (_, loss, *_), s in zip(results, slices)) / 7
    assert abs(mean - ref.item()) < 1e-5
    for (rank, _, ga, gp, gn), (lo, hi) in zip(results, slices):
        # every rank's loss reached this rank's rows: their gradient is the one-process gradient
        assert_close(torch.tensor(ga), ref_a.grad[lo:hi], 1e-5, f"anchor grad rank {rank}")
        assert_close(torch.tensor(gp), ref_p.grad[lo:hi], 1e-5, f"positive grad rank {rank}")
        assert_close(torch.tensor(gn), ref_n.grad[lo:hi], 1e-5, f"negative grad rank {rank}")
