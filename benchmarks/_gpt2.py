"""The random GPT-2 of the language-model benchmarks: built from a config, nothing downloaded."""

import torch


def random_gpt2(width, vocab, positions, seed=0, initializer_range=0.2, *, n_layer=2, n_head=4):
    """A ``GPT2LMHeadModel`` (eager attention), by default with weights far from linear.

    Parameters
    ----------
    width : int
        ``n_embd``.
    vocab : int
        ``vocab_size``, the logits' width.
    positions : int
        ``n_positions``, the longest sequence.
    seed : int, default=0
    initializer_range : float, default=0.2
        The weights' scale: 0.2 is far from linear; transformers' own default
        is 0.02.
    n_layer, n_head : int, default=2, 4
        Blocks and attention heads (GPT-2 small: 12 and 12).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=width,
        n_head=n_head,
        vocab_size=vocab,
        n_positions=positions,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=initializer_range,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config).eval()
