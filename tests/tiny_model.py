"""A tiny random Llama with the real SmolLM2 tokenizer, for tests that run vLLM and DeepSpeed in seconds."""

from __future__ import annotations

from pathlib import Path

from rl.models import cache_dir, resolve_model


def build_tiny_model(target: Path | None = None, seed: int = 0) -> Path:
    """Write (once) a 2-layer Llama with random weights and SmolLM2's tokenizer; return its folder."""
    target = target or cache_dir() / "models" / f"tiny-llama-h32-seed{seed}"
    if (target / ".complete").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,  # vLLM's CPU attention supports head sizes 32, 64, 80, ... (not 16)
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / ".complete").write_text("ok\n")
    return target
