"""Use a checkpoint: embeddings and fill-mask in Python (``Encoder``), the HTTP server (``server``) and the
exports for transformers, sentence-transformers and ONNX (``export``). Only ``Encoder`` is imported here;
the server's and exporters' optional dependencies load when those modules do."""

from mmbert.serve.encoder import Encoder

__all__ = ["Encoder"]
