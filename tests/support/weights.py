"""Test helper: weights at which a swapped, skipped or mis-scaled parameter shows."""
import torch


def randomize_(model, seed=0):
    """Unit-scale activations (matrices N(0, 1/fan_in)) and random norm weights and biases (not
    1 and 0), so a wrong activation or eps, or a swapped or skipped parameter, shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * p.size(1) ** -0.5)
            elif "norm" in name or name.endswith("bias"):
                base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen))
    return model
