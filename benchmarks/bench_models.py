"""Is the course's GPT as fast as Hugging Face's implementation of the same architecture?

    python benchmarks/bench_models.py [--batch 16] [--length 256] [--repeats 7] [--threads 2]

For the GPT-2 layout (GPT2LMHeadModel) and the Llama layout (LlamaForCausalLM, grouped-query
attention), both models get the same weights, then forward+backward passes are timed alternately in
one process. Prints tokens/s of each and the ratio ours/theirs (median of the repeats).
Target: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import transformers

from course_lib.models import GPT


def gpt2_reference(vocab: int, length: int) -> torch.nn.Module:
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=length, n_embd=256, n_layer=4, n_head=8,
                                     activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def llama_reference(vocab: int, length: int) -> torch.nn.Module:
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=length,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(config)


def step_seconds(forward, tokens: torch.Tensor) -> float:
    """One forward and backward pass of the mean logit (enough to run every backward kernel)."""
    started = time.perf_counter()
    forward(tokens).mean().backward()
    return time.perf_counter() - started


def compare(name: str, reference: torch.nn.Module, batch: int, length: int, repeats: int) -> float:
    ours = GPT.from_hf(reference.eval()).train()
    reference.train()
    tokens = torch.randint(0, reference.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    ours_forward = ours
    theirs_forward = lambda t: reference(t).logits  # noqa: E731
    for _ in range(2):  # warm-up: allocator, kernel selection
        step_seconds(ours_forward, tokens)
        step_seconds(theirs_forward, tokens)
    ours_times, theirs_times = [], []
    for _ in range(repeats):  # alternate, so both see the same machine load
        ours_times.append(step_seconds(ours_forward, tokens))
        theirs_times.append(step_seconds(theirs_forward, tokens))
    tokens_per_step = batch * length
    ours_speed = tokens_per_step / statistics.median(ours_times)
    theirs_speed = tokens_per_step / statistics.median(theirs_times)
    ratio = ours_speed / theirs_speed
    parameters = sum(p.numel() for p in ours.parameters())
    print(f"{name:>7} ({parameters / 1e6:.2f}M params): ours {ours_speed:>9,.0f} tok/s, "
          f"transformers {theirs_speed:>9,.0f} tok/s, ratio {ratio:.2f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"batch {args.batch} x {args.length} bytes, forward+backward, median of {args.repeats}")
    ratios = [compare("gpt2", gpt2_reference(256, args.length), args.batch, args.length, args.repeats),
              compare("llama", llama_reference(256, args.length), args.batch, args.length, args.repeats)]
    print(f"lowest ratio {min(ratios):.2f} (target >= 0.95)")


if __name__ == "__main__":
    main()
