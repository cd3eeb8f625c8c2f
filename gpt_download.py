"""Download GPT-2's weights and read them into numpy arrays (no TensorFlow needed).

    python gpt_download.py --model-size 124M --models-dir gpt2
    python gpt_download.py --model-size 124M --models-dir gpt2 --source huggingface

The default source, openai, fetches checkpoint, encoder.json, hparams.json,
model.ckpt.{data-00000-of-00001,index,meta} and vocab.bpe into gpt2/124M/ (resumable, through
LLM_MIRROR when set) and reads the TensorFlow checkpoint. --source huggingface fetches the same weights as Hugging Face's
config.json and model.safetensors (openai-community/gpt2, ...) into gpt2/huggingface/124M/.

From Python, as in the book:

    from gpt_download import download_and_load_gpt2
    settings, params = download_and_load_gpt2(model_size="124M", models_dir="gpt2")

The code lives in shared/gpt2.py, so notebooks and `python -m shared.sample` can import it from
any folder; this file is the chapter's familiar entry point.
"""
import argparse
import sys
import time

from shared.download import DownloadError
from shared.gpt2 import GPT2_SIZES, GPT2_SOURCES, CorruptCheckpointError, download_and_load_gpt2

__all__ = ["download_and_load_gpt2"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Download GPT-2 and read its weights.")
    parser.add_argument("--model-size", default="124M", choices=GPT2_SIZES)
    parser.add_argument("--models-dir", default="gpt2",
                        help="the weights go to MODELS_DIR/<size>/ (default: gpt2)")
    parser.add_argument("--source", default="openai", choices=GPT2_SOURCES,
                        help="openai: OpenAI's TensorFlow checkpoint (default); huggingface: "
                             "Hugging Face's model.safetensors, in MODELS_DIR/huggingface/<size>/")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        settings, params = download_and_load_gpt2(args.model_size, args.models_dir,
                                                  source=args.source)
    except (DownloadError, CorruptCheckpointError, OSError) as err:  # the message says it all
        raise SystemExit(f"error: {err}") from None
    seconds = time.perf_counter() - start
    print(f"GPT-2 {args.model_size} from {args.source}: {settings}")
    print(f"{len(params['blocks'])} blocks, token embedding {tuple(params['wte'].shape)}; "
          f"loaded in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
