"""The reference: Hugging Face's GPT2LMHeadModel with the same shape, and our weights copied into it."""
import torch

from shared.config import non_gpt2_switches, with_defaults
from shared.gpt2 import gpt2_array_name, gpt2_arrays
from shared.model import GPTModel
from shared.tokenizer import EOT_ID


def hf_gpt2(cfg: dict, attn_implementation: str = "sdpa"):
    """A randomly initialised transformers.GPT2LMHeadModel with the shape of our config.

    GPT-2's own layout: biases on the query/key/value projections, learned positions, LayerNorm,
    tanh-GELU. The output head is tied to the token embedding when cfg["tie_weights"] is (as in
    GPT-2), a separate matrix otherwise.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    check_gpt2_layout(cfg)
    end_of_text = min(EOT_ID, cfg["vocab_size"] - 1)  # tiny test vocabularies have no id 50256
    config = GPT2Config(
        vocab_size=cfg["vocab_size"], n_positions=cfg["context_length"], n_embd=cfg["emb_dim"],
        n_layer=cfg["num_layers"], n_head=cfg["num_heads"], resid_pdrop=cfg["drop_rate"],
        embd_pdrop=cfg["drop_rate"], attn_pdrop=cfg["drop_rate"], layer_norm_epsilon=1e-5,
        activation_function="gelu_new", tie_word_embeddings=with_defaults(cfg)["tie_weights"],
        bos_token_id=end_of_text, eos_token_id=end_of_text,
        attn_implementation=attn_implementation)
    return GPT2LMHeadModel(config)


def check_gpt2_layout(cfg: dict) -> None:
    """Only a GPT-2-shaped GPTModel has a Hugging Face twin."""
    wrong = non_gpt2_switches(cfg)
    if not cfg["qkv_bias"]:
        wrong["qkv_bias"] = cfg["qkv_bias"]
    if wrong:
        raise ValueError(f"GPT2LMHeadModel has qkv_bias=True and GPT-2's own layout (the defaults "
                         f"of shared/config.py's MODEL_SWITCHES); this config has {wrong}")


@torch.no_grad()
def copy_weights_to_hf(ours: GPTModel, hf) -> None:
    """Load our GPTModel's weights into GPT2LMHeadModel, through the map the GPT-2 loader uses
    (shared.gpt2.gpt2_arrays): HF keeps GPT-2's own arrays, Conv1D weights (in, out) and the
    fused query/key/value matrix c_attn."""
    check_gpt2_layout(ours.cfg)
    tied = ours.out_head.weight is ours.tok_emb.weight
    if tied != (hf.lm_head.weight is hf.transformer.wte.weight):
        raise ValueError("tie the output head in both models or in neither")
    arrays = gpt2_arrays(ours)
    for name, param in hf.transformer.named_parameters():
        param.copy_(arrays[gpt2_array_name(name)])
    if not tied:
        hf.lm_head.weight.copy_(ours.out_head.weight)
