"""The library behind the notebooks: one final copy of every piece the chapters build.

Modules, in the order the book builds them:
    tokenizer   GPT-2 BPE through tiktoken (offline through LLM_MIRROR)
    download    robust downloads with resume, retries and an offline mirror
    data        sliding-window dataset (chapter 2) and memmap batches (chapter 6)
    model       GPTModel: GPT-2 with optional RMSNorm, RoPE and a KV cache
    generate    greedy, temperature and top-k decoding, with an optional KV cache
    train       the simple training loop of chapter 5
    plotting    loss curves against epochs and tokens seen
    files       atomic writes and one writer per folder
    checkpoint  atomic save, all-or-nothing weights_only load
    gpt2        GPT-2 configurations, OpenAI's and Hugging Face's copies, the weight loader
    tf_checkpoint  OpenAI's TensorFlow checkpoint read without TensorFlow
    device      cuda, else mps, else cpu; a non-CPU device is checked against the CPU once

Beside the core: checks (the edge's input rules), cli (argparse types), stories (TinyStories'
stories and their ids), token_files (train.bin, val.bin, meta.json), tinystories_sources (where
the text comes from), trainer / distributed (chapter 6's trainer and its DDP calls), speedups,
prepare_tinystories, train_tinystories and sample (command lines).
"""
