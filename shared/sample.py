"""Sample text from OpenAI's GPT-2, printing each token as soon as it is generated.

    python -m shared.sample --gpt2 124M --prompt "Every effort moves you" \\
        --max-new-tokens 50 --temperature 1.5 --top-k 50 --seed 123

The weights are downloaded on first use into --models-dir (default: gpt2). The text goes to
stdout; download progress and messages go to stderr.
"""
import argparse
import codecs
import sys

import torch

from shared.device import get_device
from shared.download import DownloadError
from shared.checks import check_sampling, check_token_ids
from shared.cli import non_negative_float, non_negative_int, positive_int, seed, stdout_may_close
from shared.generate import generate_stream
from shared.gpt2 import GPT2_SIZES, GPT2_SOURCES, CorruptCheckpointError, load_pretrained_gpt2
from shared.tokenizer import EOT_ID, get_tokenizer, text_to_token_ids


def decode_stream(token_ids, tokenizer):
    """Yield the text of each token id as it arrives.

    A token can end in the middle of a multi-byte character (an emoji is often two or three
    tokens), so the bytes go through an incremental UTF-8 decoder, which holds an incomplete
    character back until its last byte arrives. The pieces join to tokenizer.decode(all ids).
    """
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token_id in token_ids:
        yield utf8.decode(tokenizer.decode_single_token_bytes(token_id))
    yield utf8.decode(b"", final=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m shared.sample",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--gpt2", default="124M", choices=GPT2_SIZES,
                        help="GPT-2 size (default: 124M)")
    parser.add_argument("--models-dir", default="gpt2",
                        help="where the weights are downloaded (default: gpt2)")
    parser.add_argument("--source", default="openai", choices=GPT2_SOURCES,
                        help="where the weights come from (default: openai)")
    parser.add_argument("--prompt", default="Every effort moves you")
    parser.add_argument("--max-new-tokens", type=non_negative_int, default=50)
    parser.add_argument("--temperature", type=non_negative_float, default=1.0,
                        help="0 means greedy")
    parser.add_argument("--top-k", type=positive_int, default=None,
                        help="sample among the k likeliest tokens only")
    parser.add_argument("--seed", type=seed, default=None, help="fix the random choices")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or mps (default: the fastest available)")
    parser.add_argument("--eos", action="store_true", help="stop at <|endoftext|>")
    args = parser.parse_args(argv)
    tokenizer = get_tokenizer()
    args.prompt_ids = text_to_token_ids(args.prompt, tokenizer)
    try:  # fail before the (slow) model load, with the library's own messages
        check_token_ids(args.prompt_ids, name="the prompt")
        check_sampling(args.temperature, args.top_k)
    except ValueError as err:
        parser.error(str(err))
    return args, tokenizer


def main(argv=None) -> int:
    try:  # downloads and the device: the message says it all, no traceback
        args, tokenizer = parse_args(argv)
        device = get_device(args.device)  # ValueError: no such device here
        model, settings = load_pretrained_gpt2(args.gpt2, args.models_dir, device,
                                               source=args.source)
    except (DownloadError, CorruptCheckpointError, ValueError, OSError) as err:
        raise SystemExit(f"error: {err}") from None  # one line: no traceback to read past
    if args.seed is not None:
        torch.manual_seed(args.seed)

    tokens = generate_stream(model, args.prompt_ids.to(device), args.max_new_tokens,
                             context_size=settings["n_ctx"], temperature=args.temperature,
                             top_k=args.top_k, eos_id=EOT_ID if args.eos else None,
                             use_cache=True)
    with stdout_may_close():  # `python -m shared.sample ... | head`
        print(args.prompt, end="", flush=True)
        for piece in decode_stream((t.item() for t in tokens), tokenizer):
            print(piece, end="", flush=True)
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
