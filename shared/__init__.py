"""The library behind the notebooks: one final copy of every piece the chapters build.

Its modules stand in five layers, top to bottom (README, "Layout"); each imports only from its own
layer and those below it, which tests/test_import_contract.py checks:

    commands   prepare_tinystories, train_tinystories, sample
    trainer    trainer, distributed
    io         checkpoint, gpt2, tf_checkpoint, download, token_files, tinystories_sources, files,
               device
    pieces     tokenizer, data, model, generate, train, metrics, plotting, speedups,
               stories
    rules      checks, cli, config
"""
