"""Speed benchmarks: our GPT against Hugging Face's GPT-2 on the same machine, in one process.

    python -m benchmarks            # training, generation and data, as one markdown report

See benchmarks/__main__.py for the flags and docs/performance.md for the latest numbers.
"""
