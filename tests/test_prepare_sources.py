"""prepare_tinystories' sources: the bundled excerpt (no network), a --max-mb download that fetches
only a prefix of each official file (servers that honour Range and that ignore it), and the warning
for files whose documents are paragraphs rather than stories."""
import warnings

import numpy as np
import pytest

from fake_http import FakeServer, local_only
from shared import tinystories_sources
from shared.prepare_tinystories import prepare
from shared.stories import EOT_LINES, iter_stories
from shared.tinystories_sources import PREFIX_SLACK, SAMPLE_FILES
from shared.token_files import load_tokens
from shared.tokenizer import EOT_ID


def reference_ids(stories, tokenizer):
    """tiktoken on each story alone, then one <|endoftext|>: what train.bin must hold."""
    return [i for story in stories for i in tokenizer.encode_ordinary(story) + [EOT_ID]]


def test_the_bundled_sample_needs_no_network_and_holds_whole_stories(tmp_path, tokenizer,
                                                                     monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # any download would fail
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whole stories: no warning about short documents
        meta = prepare(tmp_path / "ds", source="sample")
    for split, n_stories in (("train", 488), ("val", 63)):
        stories = list(iter_stories(SAMPLE_FILES[split]))
        ids = load_tokens(tmp_path / "ds" / f"{split}.bin")
        assert meta["splits"][split]["stories"] == len(stories) == n_stories
        assert ids.tolist() == reference_ids(stories, tokenizer)


def test_paragraphs_instead_of_stories_are_warned_about(tmp_path, tinystories_sample):
    train, val = tinystories_sample  # blank lines between paragraphs and between stories
    with pytest.warns(UserWarning, match=r"average \d+ tokens.*paragraphs, not stories"):
        prepare(tmp_path / "ds", train, val)


@pytest.fixture
def official(monkeypatch, tmp_path):
    """A local server posing as the dataset's host, serving 'official' files of ~400 KB (the
    bundled excerpts), with LLM_MIRROR unset so nothing else can serve them."""
    local_only(monkeypatch)
    with FakeServer() as server:
        for split, name in tinystories_sources.OFFICIAL_FILES.items():
            server.files[f"/{name}"] = SAMPLE_FILES[split].read_bytes()
        monkeypatch.setattr(tinystories_sources, "BASE_URL", server.base + "/")
        yield server


@pytest.mark.parametrize("ranges", ["honoured", "ignored"])
def test_max_mb_downloads_only_a_prefix_and_keeps_whole_stories(official, tmp_path, tokenizer, ranges):
    if ranges == "ignored":
        official.ignore_range.update(official.files)
    max_mb = 0.1  # 104,857 bytes of a ~400 KB training file
    meta = prepare(tmp_path / "ds", max_mb=max_mb)
    train_name = "/" + tinystories_sources.OFFICIAL_FILES["train"]
    whole = len(official.files[train_name])
    max_bytes = int(max_mb * 2**20)
    # only the prefix is asked for and kept (a server that ignores Range is read up to it; that it
    # is then cut off is download_prefix's test, with a body too large for the socket buffers)
    assert official.ranges[train_name][-1] == f"bytes=0-{max_bytes + PREFIX_SLACK - 1}"
    if ranges == "honoured":
        assert official.sent[train_name] == max_bytes + PREFIX_SLACK < whole
    prefix_files = sorted((tmp_path / "ds").glob("TinyStories-train.first-*.txt"))
    assert [p.stat().st_size for p in prefix_files] == [max_bytes + PREFIX_SLACK]
    # the same stories as slicing the whole file locally: up to the end of the story at max_bytes
    expected = list(iter_stories(SAMPLE_FILES["train"], EOT_LINES, max_bytes))
    assert load_tokens(tmp_path / "ds" / "train.bin").tolist() == reference_ids(expected, tokenizer)
    assert meta["splits"]["train"]["stories"] == len(expected) < 488
    # a second run is answered from meta.json and the prefix files, without the server
    requests_before = sum(official.counts.values())
    assert prepare(tmp_path / "ds", max_mb=max_mb) == meta
    assert sum(official.counts.values()) == requests_before
