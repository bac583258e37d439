"""CPU speed settings: the allocator tuning the trainer applies, and the fused loss's chunk size rule."""

import platform

import pytest
import torch

from mmbert.model.loss import CHUNK_LOGITS, SMALL_CHUNK_BYTES, chunk_rows, linear_cross_entropy
from mmbert.train.speed import tune_allocator


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_tune_allocator_takes_effect_on_glibc_and_memory_still_works():
    assert tune_allocator() is True
    x = torch.ones(20 * 2**20 // 4)  # a 20 MiB block, now below the mmap threshold
    assert float(x.sum()) == x.numel()


def test_small_vocabularies_get_chunks_under_the_mmap_threshold_large_ones_keep_big_chunks():
    assert chunk_rows(16_384) == 256 and chunk_rows(16_384) * 16_384 * 4 == SMALL_CHUNK_BYTES
    assert chunk_rows(256_000) == CHUNK_LOGITS // 256_000 == 1048
    assert chunk_rows(10**9) == 1


def test_default_chunking_equals_one_chunk():
    torch.manual_seed(0)
    h = torch.randn(600, 16, requires_grad=True)  # 600 rows at a 16k vocabulary: 3 chunks of 256, 256, 88
    w = (torch.randn(16_384, 16) * 0.1).requires_grad_()
    y = torch.randint(0, 16_384, (600,))
    grads = []
    for chunk in (None, 600):
        loss = linear_cross_entropy(h, w, None, y, chunk=chunk)
        grads.append((loss.detach(), *torch.autograd.grad(loss, (h, w))))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
