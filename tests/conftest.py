"""Shared fixtures. Tests run offline: LLM_MIRROR points at ../shared/mirror when it is not set.

tests/ holds the library's tests, tests/notebooks/ the tests that execute or read the notebooks, and
tests/support/ the helpers both import by module name (fakes, servers, nbrun), put on sys.path here.
"""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

if not os.environ.get("LLM_MIRROR") and (SHARED_DATA / "mirror").is_dir():
    os.environ["LLM_MIRROR"] = str(SHARED_DATA / "mirror")

if "OMP_NUM_THREADS" not in os.environ:
    # Tests run tiny models: on busy cores two OpenMP threads wait on each other at every op
    # (measured 9x slower than one thread on 2 shared cores). Notebooks run in their own kernels.
    import torch
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    from shared.tokenizer import get_tokenizer
    return get_tokenizer()


@pytest.fixture(scope="session")
def verdict_text(tmp_path_factory):
    from shared.download import get_the_verdict
    path = get_the_verdict(tmp_path_factory.mktemp("verdict"))
    return Path(path).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tinystories_sample():
    """Paths of the ~200 KB TinyStories sample (stories separated by blank lines)."""
    train = SHARED_DATA / "data" / "tinystories-sample-train.txt"
    valid = SHARED_DATA / "data" / "tinystories-sample-valid.txt"
    if not train.exists():
        pytest.skip("../shared/data/tinystories-sample-*.txt not found")
    return train, valid


@pytest.fixture(scope="session")
def initial_loss(verdict_text, tokenizer):
    """initial_loss(cfg): cross-entropy of a freshly initialised GPTModel(cfg) (seed 123) on two
    128-token windows of The Verdict."""
    import torch
    from shared.model import GPTModel

    ids = torch.tensor(tokenizer.encode(verdict_text)[:2 * 128 + 1])
    inputs, targets = ids[:-1].view(2, 128), ids[1:].view(2, 128)

    def loss_of(cfg):
        torch.manual_seed(123)
        model = GPTModel(cfg).eval()
        with torch.no_grad():
            logits = model(inputs)  # (2, 128, vocab_size)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()

    return loss_of
