"""The library behind the notebooks: one final copy of every piece the chapters build.

Modules, in the order the book builds them:
    tokenizer   GPT-2 BPE through tiktoken (offline through LLM_MIRROR)
    download    robust downloads with resume, retries and an offline mirror
    data        sliding-window dataset (chapter 2) and memmap batches (chapter 6)
    model       GPTModel: GPT-2 with optional RMSNorm, RoPE and a KV cache
    generate    greedy, temperature and top-k decoding, with an optional KV cache
    train       the simple training loop of chapter 5
    plotting    loss curves against epochs and tokens seen
    files       atomic writes: a crash never leaves half a file under the real name
    checkpoint  atomic save, weights_only load
    gpt2        OpenAI GPT-2 configurations and the weight loader
    device      cuda, else mps, else cpu
"""
