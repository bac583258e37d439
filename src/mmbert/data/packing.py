"""Packing: full rows of document pieces, flattened into the unpadded batch the trainer consumes.

Choices:
- Every row holds exactly ``seq_len`` tokens: documents (each tokenized as ``<bos> ... <eos>``) are laid
  end to end; the one that does not fit is split and its remainder opens the next row of the *same
  language*. A continuation piece gets no extra ``<bos>`` (we pack the raw token stream, as ModernBERT
  does; a <bos> mid-document would be a token the model never sees at inference).
- Attention never crosses a document piece: ``cu_seqlens`` marks piece boundaries over the flat batch
  (the varlen / FlashAttention convention) and ``position_ids`` restart at 0 in each piece.
- Pre-tokenized data (e.g. mmBERT's 8,192-token MDS chunks, several documents laid end to end) is cut
  back into documents by :func:`split_documents` before packing: a piece starts at each ``<bos>`` and
  ends after each ``<eos>``, so documents inside a chunk get their own ``cu_seqlens`` segments exactly as
  tokenized text does; the chunk's tokens are then packed into ``seq_len`` rows like any documents.
- ``languages`` is per row (a row is one language: the sampler draws rows, see sampling.py).
"""

from __future__ import annotations

import numpy as np
import torch


def split_documents(ids: np.ndarray, bos_id: int | None, eos_id: int | None) -> list[np.ndarray]:
    """Cut a 1-D token array at document boundaries: before every ``bos_id`` and after every ``eos_id``
    (None: no such boundary). No token is dropped; the pieces concatenate back to ``ids``."""
    cuts = np.zeros(len(ids) + 1, dtype=bool)
    if bos_id is not None:
        cuts[:-1] |= ids == bos_id
    if eos_id is not None:
        cuts[1:] |= ids == eos_id
    cuts[0] = cuts[-1] = False
    at = np.flatnonzero(cuts)
    return [p for p in np.split(ids, at) if len(p)]


def assemble_batch(rows: list[list[np.ndarray]], languages: list[str]) -> dict:
    """Flatten rows of pieces into ``input_ids``/``cu_seqlens``/``position_ids``/``max_seqlen``.

    Returns the batch dict without ``labels`` (masking is applied after). Pieces are 1-D int arrays;
    empty pieces are not allowed (they would create zero-length segments).
    """
    pieces = [p for row in rows for p in row]
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    if len(pieces) == 0 or lengths.min() == 0:
        raise ValueError("assemble_batch needs non-empty pieces")
    ids = np.concatenate(pieces).astype(np.int64)  # (N,)
    cu = np.zeros(len(pieces) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu[1:])
    # position within its piece: global index minus the start of the piece it is in
    starts = np.repeat(cu[:-1].astype(np.int64), lengths)  # (N,)
    pos = np.arange(len(ids), dtype=np.int64) - starts
    return {
        "input_ids": torch.from_numpy(ids),
        "cu_seqlens": torch.from_numpy(cu),
        "max_seqlen": int(lengths.max()),
        "position_ids": torch.from_numpy(pos),
        "languages": list(languages),
        "num_tokens": int(len(ids)),
    }
