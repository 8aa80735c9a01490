"""Are the course's models as fast as Hugging Face's implementations of the same architectures?

    python benchmarks/bench_models.py [--batch 16] [--length 256] [--images 32] [--repeats 7] [--threads 2]
                                      [--only gpt2 llama vit swin]

Language models: the GPT-2 layout (GPT2LMHeadModel) and the Llama layout (LlamaForCausalLM,
grouped-query attention) against `course_lib.models.GPT`. Vision: ViTModel against
`course_lib.models.ViT` and SwinModel against `course_lib.models.Swin`. Each pair gets the same
weights, then forward+backward passes are timed alternately in one process. Prints tokens/s (or
images/s) of each and the ratio ours/theirs (median of the repeats). Target: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import transformers

from course_lib.models import GPT, Swin, ViT

IMAGE_SIZE = 64  # small enough for a CPU; every Swin stage (32, 16, 8 tokens a side) still fills a window


def gpt2_pair(vocab: int, length: int) -> tuple[torch.nn.Module, Callable]:
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=length, n_embd=256, n_layer=4, n_head=8,
                                     activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    reference = transformers.GPT2LMHeadModel(config)
    return GPT.from_hf(reference), lambda tokens: reference(tokens).logits


def llama_pair(vocab: int, length: int) -> tuple[torch.nn.Module, Callable]:
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=length,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    reference = transformers.LlamaForCausalLM(config)
    return GPT.from_hf(reference), lambda tokens: reference(tokens).logits


def vit_pair() -> tuple[torch.nn.Module, Callable]:
    config = transformers.ViTConfig(image_size=IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=192,
                                    num_hidden_layers=6, num_attention_heads=3, intermediate_size=768)
    reference = transformers.ViTModel(config, add_pooling_layer=False)
    ours = ViT.from_hf(reference)
    return ours.features, lambda images: reference(images).last_hidden_state


def swin_pair() -> tuple[torch.nn.Module, Callable]:
    config = transformers.SwinConfig(image_size=IMAGE_SIZE, patch_size=2, num_channels=3, embed_dim=48,
                                     depths=[2, 2, 2], num_heads=[2, 4, 8], window_size=8, drop_path_rate=0.0,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    reference = transformers.SwinModel(config)
    ours = Swin.from_hf(reference)
    return ours.forward_features, lambda images: reference(images).last_hidden_state


def step_seconds(forward: Callable, inputs: torch.Tensor) -> float:
    """One forward and backward pass of the mean output (enough to run every backward kernel)."""
    started = time.perf_counter()
    forward(inputs).mean().backward()
    return time.perf_counter() - started


def compare(name: str, ours: Callable, theirs: Callable, inputs: torch.Tensor, items: int, unit: str,
            repeats: int) -> float:
    """Median items/s of both over `repeats` alternating steps, printed with their ratio ours/theirs."""
    for _ in range(2):  # warm-up: allocator, kernel selection
        step_seconds(ours, inputs)
        step_seconds(theirs, inputs)
    ours_times, theirs_times = [], []
    for _ in range(repeats):  # alternate, so both see the same machine load
        ours_times.append(step_seconds(ours, inputs))
        theirs_times.append(step_seconds(theirs, inputs))
    ours_speed, theirs_speed = items / statistics.median(ours_times), items / statistics.median(theirs_times)
    ratio = ours_speed / theirs_speed
    print(f"{name:>7}: ours {ours_speed:>9,.0f} {unit}/s, transformers {theirs_speed:>9,.0f} {unit}/s, ratio {ratio:.2f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="sequences per language-model step")
    parser.add_argument("--length", type=int, default=256, help="bytes per sequence")
    parser.add_argument("--images", type=int, default=32, help=f"{IMAGE_SIZE}x{IMAGE_SIZE} images per vision step")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=["gpt2", "llama", "vit", "swin"], default=["gpt2", "llama", "vit", "swin"])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"forward+backward in train mode, median of {args.repeats}")
    tokens = torch.randint(0, 256, (args.batch, args.length), generator=torch.Generator().manual_seed(0))
    images = torch.randn(args.images, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    pairs = {"gpt2": (lambda: gpt2_pair(256, args.length), tokens, tokens.numel(), "tok"),
             "llama": (lambda: llama_pair(256, args.length), tokens, tokens.numel(), "tok"),
             "vit": (vit_pair, images, args.images, "img"),
             "swin": (swin_pair, images, args.images, "img")}
    ratios = []
    for name in args.only:
        build, inputs, items, unit = pairs[name]
        ours, theirs = build()
        ratios.append(compare(name, ours, theirs, inputs, items, unit, args.repeats))
    print(f"lowest ratio {min(ratios):.2f} (target >= 0.95)")


if __name__ == "__main__":
    main()
