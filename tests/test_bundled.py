"""The files the repository ships (bundled/): what bundled/README.md says they are, and that the
library finds them with no network and no LLM_MIRROR."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from nbrun import REPO
from shared.stories import EOT_LINES, iter_stories, story_separator

BUNDLED = REPO / "bundled"
EXCERPTS = {  # file: (SHA-256, stories)
    "TinyStories-train-excerpt.txt":
        ("0f2bb6c6fc5146cdf331285ecbeefff67460dd9404a0d0195b7d6476b67e42d7", 488),
    "TinyStories-valid-excerpt.txt":
        ("e5619e2ab4de733bd9029bee5c18d65ddc8a634c834d6492428f86e56cbfd385", 63),
}


@pytest.mark.parametrize("name", sorted(EXCERPTS))
def test_tinystories_excerpts_are_whole_stories_in_the_official_format(name):
    path = BUNDLED / "tinystories" / name
    data = path.read_bytes()
    digest, n_stories = EXCERPTS[name]
    assert hashlib.sha256(data).hexdigest() == digest
    assert data.endswith(b"\n<|endoftext|>\n")            # ends right after a story
    assert story_separator(path) == EOT_LINES
    stories = list(iter_stories(path))
    assert len(stories) == n_stories == data.count(b"<|endoftext|>\n")
    # Stories, not paragraphs: several lines each, hundreds of characters (a paragraph of the
    # blank-line sample averages ~160 characters).
    assert sum(len(s) for s in stories) / len(stories) > 600
    assert sum(s.count("\n") + 1 for s in stories) / len(stories) > 2


def test_validation_excerpt_continues_the_training_excerpt_without_overlap():
    train = list(iter_stories(BUNDLED / "tinystories" / "TinyStories-train-excerpt.txt"))
    val = list(iter_stories(BUNDLED / "tinystories" / "TinyStories-valid-excerpt.txt"))
    assert not set(train) & set(val)


def test_the_verdict_and_the_tokenizer_come_from_the_bundled_copies_without_a_network(tmp_path):
    """No LLM_MIRROR, and every connection goes to a closed local port: the bundled copies serve."""
    script = (
        "import json, sys; from pathlib import Path\n"
        "from shared.download import get_the_verdict\n"
        "from shared.tokenizer import get_tokenizer\n"
        "text = get_the_verdict(sys.argv[1]).read_text(encoding='utf-8')\n"
        "ids = get_tokenizer().encode('Hello, world! <|endoftext|>', allowed_special='all')\n"
        "print(json.dumps([len(text), ids]))\n")
    env = {k: v for k, v in os.environ.items() if k != "LLM_MIRROR"}
    env.update(PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path / "cache"),
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    length, ids = json.loads(run.stdout)
    assert length == 20479
    assert ids == [15496, 11, 995, 0, 220, 50256]  # tiktoken's gpt2 ids for this text
