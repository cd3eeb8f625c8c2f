"""The files the repository ships (bundled/): what bundled/README.md says they are, and that the
library finds them with no network and no LLM_MIRROR."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from nbrun import REPO
from shared.stories import EOT_LINES, iter_stories, story_separator

BUNDLED = REPO / "bundled"
README = (BUNDLED / "README.md").read_text(encoding="utf-8")
EXCERPTS = ["TinyStories-train-excerpt.txt", "TinyStories-valid-excerpt.txt"]


def stated(name: str) -> tuple[int, int, str]:
    """What bundled/README.md says of an excerpt: its stories, its bytes, its SHA-256."""
    stories, size = re.search(rf"`tinystories/{re.escape(name)}` \| (\d+) whole stories, "
                              rf"([\d,]+) bytes", README).groups()
    split = "train" if "train" in name else "valid"
    digest = re.search(rf"{split} `([0-9a-f]{{64}})`", README).group(1)
    return int(stories), int(size.replace(",", "")), digest


@pytest.mark.parametrize("name", EXCERPTS)
def test_tinystories_excerpts_are_what_the_readme_says_whole_stories_in_the_official_format(name):
    path = BUNDLED / "tinystories" / name
    data = path.read_bytes()
    n_stories, size, digest = stated(name)
    assert len(data) == size and hashlib.sha256(data).hexdigest() == digest
    assert data.endswith(b"\n<|endoftext|>\n")            # ends right after a story
    assert story_separator(path) == EOT_LINES
    stories = list(iter_stories(path))
    assert len(stories) == n_stories == data.count(b"<|endoftext|>\n")
    # Stories, not paragraphs: several lines each, hundreds of characters (a paragraph of the
    # blank-line sample averages ~160 characters).
    assert sum(len(s) for s in stories) / len(stories) > 600
    assert sum(s.count("\n") + 1 for s in stories) / len(stories) > 2


def test_the_tokenizer_files_are_the_ones_tiktoken_checks_and_the_readme_names():
    """The README says the two files are byte-identical to OpenAI's, with the digests tiktoken
    checks: tiktoken's own gpt2 definition is the independent reference."""
    import inspect

    import tiktoken_ext.openai_public as openai_public
    expected = dict(re.findall(r'(vocab_bpe|encoder_json)_hash="([0-9a-f]{64})"',
                               inspect.getsource(openai_public.gpt2)))
    folder = BUNDLED / "mirror" / "openaipublic.blob.core.windows.net" / "gpt-2" / "encodings" / "main"
    for key, name in (("encoder_json", "encoder.json"), ("vocab_bpe", "vocab.bpe")):
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert digest == expected[key], name
        assert f"`{digest[:12]}…`" in README, name  # the prefix the README quotes


def test_validation_excerpt_continues_the_training_excerpt_without_overlap():
    train = list(iter_stories(BUNDLED / "tinystories" / "TinyStories-train-excerpt.txt"))
    val = list(iter_stories(BUNDLED / "tinystories" / "TinyStories-valid-excerpt.txt"))
    assert not set(train) & set(val)


@pytest.mark.slow  # a fresh process imports torch (7 s on two busy cores)
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
    characters = re.search(r"\*The Verdict\* \(1908\), ([\d,]+) characters", README).group(1)
    assert length == int(characters.replace(",", ""))  # what bundled/README.md says
    assert ids == [15496, 11, 995, 0, 220, 50256]  # tiktoken's gpt2 ids for this text
