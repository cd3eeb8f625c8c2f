"""The reference: Hugging Face's GPT2LMHeadModel with the same shape, and our weights copied into it."""
import torch

from shared.config import non_gpt2_switches, with_defaults
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
    """Load our GPTModel's weights into GPT2LMHeadModel.

    HF keeps GPT-2's original Conv1D layout: weights are (in, out), the transpose of nn.Linear's,
    and the query, key and value projections are one fused (d, 3d) matrix, c_attn.
    """
    check_gpt2_layout(ours.cfg)
    t = hf.transformer
    tied = ours.out_head.weight is ours.tok_emb.weight
    if tied != (hf.lm_head.weight is t.wte.weight):
        raise ValueError("tie the output head in both models or in neither")
    t.wte.weight.copy_(ours.tok_emb.weight)
    if not tied:
        hf.lm_head.weight.copy_(ours.out_head.weight)
    t.wpe.weight.copy_(ours.pos_emb.weight)
    for block, h in zip(ours.trf_blocks, t.h):
        att = block.att
        h.attn.c_attn.weight.copy_(torch.cat([att.W_query.weight, att.W_key.weight,
                                              att.W_value.weight]).T)
        h.attn.c_attn.bias.copy_(torch.cat([att.W_query.bias, att.W_key.bias, att.W_value.bias]))
        h.attn.c_proj.weight.copy_(att.out_proj.weight.T)
        h.attn.c_proj.bias.copy_(att.out_proj.bias)
        h.mlp.c_fc.weight.copy_(block.ff.layers[0].weight.T)
        h.mlp.c_fc.bias.copy_(block.ff.layers[0].bias)
        h.mlp.c_proj.weight.copy_(block.ff.layers[2].weight.T)
        h.mlp.c_proj.bias.copy_(block.ff.layers[2].bias)
        for ours_norm, hf_norm in [(block.norm1, h.ln_1), (block.norm2, h.ln_2)]:
            hf_norm.weight.copy_(ours_norm.weight)
            hf_norm.bias.copy_(ours_norm.bias)
    t.ln_f.weight.copy_(ours.final_norm.weight)
    t.ln_f.bias.copy_(ours.final_norm.bias)
