"""mmbert info PRESET_OR_CHECKPOINT: the configuration, layer layout and parameter counts."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("target", help="a preset name (tiny, mini, mmbert-small, mmbert-base) or a checkpoint directory")


def parameter_counts(config) -> dict[str, int]:
    """Exact counts from the config (no model is built): embeddings, encoder layers, MLM head."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    norm = h * (2 if config.norm_bias else 1)
    attn = h * 3 * h + h * h + (4 * h if config.attention_bias else 0)
    mlp = h * 2 * i + i * h + (2 * i + h if config.mlp_bias else 0)
    layers = config.num_hidden_layers * (attn + mlp + 2 * norm) - norm  # layer 0 has no attention norm
    head = h * h + (h if config.classifier_bias else 0) + norm + (v if config.decoder_bias else 0)
    return {"embeddings": v * h + norm, "encoder_layers": layers + norm, "mlm_head": head}


def run(args) -> int:
    from mmbert.model import PRESETS, ModelConfig

    target = args.target
    config = ModelConfig.from_preset(target) if target in PRESETS else ModelConfig.load(Path(target))
    counts = parameter_counts(config)
    kinds = "".join("G" if config.is_global(i) else "l" for i in range(config.num_hidden_layers))
    print(f"{target}: {config.num_hidden_layers} layers x hidden {config.hidden_size}, intermediate "
          f"{config.intermediate_size}, {config.num_attention_heads} heads (head dim {config.head_dim}), "
          f"vocab {config.vocab_size:,}")
    print(f"layers (G global, l local +-{config.local_attention // 2}): {kinds}")
    print(f"RoPE theta: global {config.global_rope_theta:g}, local {config.local_rope_theta:g}; "
          f"max positions {config.max_position_embeddings}")
    total = sum(counts.values())
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()) + f"; total {total / 1e6:.2f}M "
          f"(non-embedding {(total - counts['embeddings']) / 1e6:.2f}M)")
    return 0
