"""`python -m shared.prepare_tinystories`: story splitting, EOT placement, token counts, re-runs, crashes.

The reference for every token file is computed here, independently: split the text with a regex,
encode each story with the tokenizer's encode_ordinary, append 50256.
"""
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shared.prepare_tinystories as prep
import shared.stories as st
import shared.tinystories_sources as sources
from shared import token_files
from shared.token_files import load_tokens
from shared.tokenizer import EOT_ID

# An official-format file: stories between lines that are exactly <|endoftext|>. The stories have
# blank lines between paragraphs (a blank-line split would cut them), and one contains the marker
# text inside a line, which must stay ordinary text.
OFFICIAL_STORIES = [
    "Once upon a time, there was a cat.\n\nThe cat liked milk.",
    'Tom said, "Look!"\nHe saw a big red ball.',
    "The sign said <|endoftext|> but Sue kept reading.\n\nThe end.",
]
OFFICIAL_TEXT = ("\n<|endoftext|>\n".join(OFFICIAL_STORIES)
                 + "\n<|endoftext|>\n\n<|endoftext|>\n")  # an empty story at the end is dropped


def reference_stories(text, separator):
    """Independent split: a regex over the whole text."""
    pattern = r"\n[ \t]*<\|endoftext\|>[ \t]*\n" if separator == st.EOT_LINES else r"\n[ \t]*\n"
    parts = re.split(pattern, "\n" + text + "\n")
    return [p.strip() for p in parts if p.strip()]


def stories_line_by_line(text, separator):
    """The definition, read line by line as a text-mode file gives them: a line whose strip() is
    empty (blank lines) or is exactly <|endoftext|> (marker lines) ends a story."""
    ends_story = "<|endoftext|>" if separator == st.EOT_LINES else ""
    stories, lines = [], []
    for line in io.StringIO(text, newline=None):
        if line.strip() == ends_story:
            stories.append("".join(lines).strip())
            lines = []
        else:
            lines.append(line)
    stories.append("".join(lines).strip())
    return [s for s in stories if s]


def reference_tokens(stories, tokenizer):
    ids = []
    for story in stories:
        ids += tokenizer.encode_ordinary(story) + [EOT_ID]
    return np.array(ids, dtype=np.int64)


@pytest.fixture
def official_files(tmp_path):
    train, val = tmp_path / "TinyStories-train.txt", tmp_path / "TinyStories-valid.txt"
    train.write_text(OFFICIAL_TEXT, encoding="utf-8")
    val.write_text("A short story.\n<|endoftext|>\nAnother one.\n<|endoftext|>\n", encoding="utf-8")
    return train, val


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, tinystories_sample):
    """The real sample prepared once with num_proc=1, in several rows."""
    out = tmp_path_factory.mktemp("sample1")
    mp = pytest.MonkeyPatch()
    mp.setattr(st, "CHUNK_BYTES", 30_000)  # rows of ~30 KB of text, written one by one
    try:
        meta = prep.prepare(out, *tinystories_sample, num_proc=1)
    finally:
        mp.undo()
    return out, meta


def file_state(out):
    return {name: (os.stat(out / name).st_mtime_ns, os.stat(out / name).st_ino)
            for name in ("train.bin", "val.bin", "meta.json")}


# --- splitting ------------------------------------------------------------------------------------

def test_sample_without_markers_is_split_at_blank_lines(tinystories_sample):
    for path in tinystories_sample:
        text = path.read_text(encoding="utf-8")
        assert "<|endoftext|>" not in text
        assert st.story_separator(path) == st.BLANK_LINES
        stories = list(st.iter_stories(path))
        assert stories == reference_stories(text, st.BLANK_LINES)
        assert len(stories) > 100 and all("\n\n" not in s for s in stories)


def test_official_format_is_split_at_endoftext_lines_only(official_files):
    train, _ = official_files
    assert st.story_separator(train) == st.EOT_LINES
    assert list(st.iter_stories(train)) == OFFICIAL_STORIES  # blank lines stay inside stories
    assert OFFICIAL_STORIES == reference_stories(OFFICIAL_TEXT, st.EOT_LINES)


@pytest.mark.parametrize("block_bytes", [1, 3, 13, 1 << 20])
def test_separator_found_wherever_the_blocks_cut(tmp_path, block_bytes):
    """The marker line is found when a block boundary cuts it, and text that merely contains
    the marker inside a line does not count."""
    path = tmp_path / "t.txt"
    cases = {"one\n" * 5 + "  <|endoftext|> \r\ntwo\n": st.EOT_LINES,
             "one\n\ntwo <|endoftext|> in a line\n\nthree <|endoftext|>": st.BLANK_LINES,
             "one\n\n<|endoftext|>": st.EOT_LINES,
             # Lone \r line ends, which a text-mode file (and split_stories) reads as newlines.
             "one\rtwo\r <|endoftext|>\rthree\r": st.EOT_LINES,
             "one\r\rtwo <|endoftext|>\r": st.BLANK_LINES,
             # Whitespace that str.strip removes and bytes.strip does not.
             "one\n\u00a0<|endoftext|>\u3000\ntwo\n": st.EOT_LINES,
             "one\n\x1c<|endoftext|>": st.EOT_LINES}
    for text, expected in cases.items():
        path.write_bytes(text.encode("utf-8"))
        assert st.story_separator(path, block_bytes) == expected, (text, block_bytes)


@pytest.mark.parametrize("chunk_bytes", [1, 7, 50, 10**6])
def test_chunk_ranges_cut_only_between_stories(tmp_path, chunk_bytes):
    """The byte ranges the workers read cover the file end to end, and the stories read range by
    range are the file's stories: none cut, lost or repeated (multi-byte characters and CRLF
    line ends included)."""
    texts = {st.EOT_LINES: OFFICIAL_TEXT + "Émile saw a café — 猫.\r\n\r\nThe end.\n",
             st.BLANK_LINES: "Once — a café.\n\n\nTwo 猫\r\nlines.\r\n\r\nLast, no newline"}
    for separator, text in texts.items():
        path = tmp_path / "stories.txt"
        path.write_bytes(text.encode("utf-8"))
        ranges = st.chunk_ranges(path, separator, chunk_bytes)
        assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))
        stories = [s for r in ranges for s in st.stories_in_range(path, *r, separator)]
        assert stories == stories_line_by_line(text, separator), (separator, chunk_bytes)
        assert list(st.iter_stories(path, separator)) == stories
        assert len(stories) >= 3
        if chunk_bytes == 1:
            assert len(ranges) >= len(stories)  # every story in a row of its own


def test_text_that_is_not_utf8_is_named_with_its_byte_offset(official_files, tmp_path,
                                                              monkeypatch):
    """A Latin-1 byte far into the file is met by a worker, in a range that starts far from
    byte 0: the error names the file and the byte's offset in it, not its offset in the range."""
    monkeypatch.setattr(st, "CHUNK_BYTES", 20)  # the bad byte lies in a later row
    latin1 = tmp_path / "latin1.txt"
    good = "A story.\n\n" * 10
    latin1.write_bytes(good.encode() + "Caf\xe9 story.\n".encode("latin-1"))
    offset = len(good) + 3
    with pytest.raises(ValueError, match=rf"{re.escape(str(latin1))} is not UTF-8 text: byte "
                                         rf"{offset} \(b'\\xe9'\).*convert"):
        prep.prepare(tmp_path / "out", latin1, official_files[1])


# Lines that only whitespace of many kinds makes blank, markers with spaces around them, lone \r
# line ends, a marker that is only part of a line, and no newline at the very end.
TRICKY_TEXT = ("\n \t\nOne\u00a0story\r\n\x0c\r\nstill one\u2028line \n\u00a0\u3000\n"
               "Two\r\rthree <|endoftext|> inline\n  <|endoftext|>\t\r\nfour\n<|endoftext|>x\n"
               "\n\n\nfive\n <|endoftext|>")


@pytest.mark.parametrize("separator", [st.BLANK_LINES, st.EOT_LINES])
def test_split_stories_follows_the_line_by_line_definition(separator):
    expected = stories_line_by_line(TRICKY_TEXT, separator)
    assert len(expected) >= 2
    assert st.split_stories(TRICKY_TEXT, separator) == expected
    for text in ("", "\n\n", " <|endoftext|> \n", "only\n"):
        assert st.split_stories(text, separator) == stories_line_by_line(text, separator)


def test_encode_stories_equals_encoding_each_story(tokenizer):
    """One tiktoken call per row gives exactly each story's encode_ordinary + 50256, also when a
    story holds the marker's text (encoded as ordinary text, never as the special token)."""
    stories = st.split_stories(TRICKY_TEXT, st.BLANK_LINES) + OFFICIAL_STORIES[:2]
    for case in (stories, stories + OFFICIAL_STORIES[2:], [" padded story \n"], []):
        got = st.encode_stories(case)
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got.astype(np.int64),
                                      reference_tokens([s.strip() for s in case], tokenizer))


# --- the token files ------------------------------------------------------------------------------

def test_sample_tokens_equal_per_story_encoding_plus_one_eot(sample_run, tinystories_sample, tokenizer):
    out, meta = sample_run
    for split, path in zip(("train", "val"), tinystories_sample):
        stories = reference_stories(path.read_text(encoding="utf-8"), st.BLANK_LINES)
        expected = reference_tokens(stories, tokenizer)
        tokens = np.asarray(load_tokens(out / f"{split}.bin")).astype(np.int64)
        np.testing.assert_array_equal(tokens, expected)
        # EOT placement: exactly one after every story, none inside one, the file ends with one
        eot_at = np.flatnonzero(tokens == EOT_ID)
        ends = np.cumsum([len(tokenizer.encode_ordinary(s)) + 1 for s in stories]) - 1
        np.testing.assert_array_equal(eot_at, ends)
        info = meta["splits"][split]
        assert info["tokens"] == len(expected) and info["stories"] == len(stories)
        assert info["story_separator"] == st.BLANK_LINES
        assert info["source"]["bytes"] == path.stat().st_size


def test_meta_json_describes_the_files(sample_run):
    out, meta = sample_run
    on_disk = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert on_disk == meta
    assert (meta["dtype"], meta["vocab_size"], meta["eot_id"]) == ("uint16", 50257, 50256)
    for split in ("train", "val"):
        assert (out / f"{split}.bin").stat().st_size == 2 * meta["splits"][split]["tokens"]
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_official_format_marker_text_cannot_inject_a_special_token(official_files, tmp_path, tokenizer):
    meta = prep.prepare(tmp_path / "out", *official_files, num_proc=1)
    tokens = np.asarray(load_tokens(tmp_path / "out" / "train.bin")).astype(np.int64)
    np.testing.assert_array_equal(tokens, reference_tokens(OFFICIAL_STORIES, tokenizer))
    assert (tokens == EOT_ID).sum() == len(OFFICIAL_STORIES) == meta["splits"]["train"]["stories"]
    assert tokenizer.decode(tokens.tolist()).count("<|endoftext|>") == len(OFFICIAL_STORIES) + 1
    assert meta["splits"]["train"]["story_separator"] == st.EOT_LINES


def spy_on_num_proc(monkeypatch):
    """The num_proc each datasets.map call of prepare() gets (None: in this process)."""
    from datasets import Dataset
    real_map, seen = Dataset.map, []

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("num_proc"))
        return real_map(self, *args, **kwargs)
    monkeypatch.setattr(Dataset, "map", spy)
    return seen


def test_num_proc_1_and_2_write_identical_files(sample_run, tinystories_sample, tmp_path,
                                                monkeypatch):
    out1, meta1 = sample_run
    # Rows of another size than sample_run's, and two workers for both splits.
    monkeypatch.setattr(st, "CHUNK_BYTES", 7_000)
    monkeypatch.setattr(prep, "BYTES_PER_PROCESS", 1_000)
    seen = spy_on_num_proc(monkeypatch)
    meta2 = prep.prepare(tmp_path, *tinystories_sample, num_proc=2)
    assert seen == [2, 2]
    for split in ("train", "val"):
        assert (out1 / f"{split}.bin").read_bytes() == (tmp_path / f"{split}.bin").read_bytes()
    assert meta1 == meta2


def test_a_split_too_small_for_two_processes_gets_one(official_files, tmp_path, monkeypatch):
    """Starting a worker pool takes longer than tokenising a few stories."""
    seen = spy_on_num_proc(monkeypatch)
    prep.prepare(tmp_path, *official_files, num_proc=2)
    assert seen == [None, None]


# --- re-runs and crashes --------------------------------------------------------------------------

def test_rerun_with_the_same_inputs_touches_nothing(official_files, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prep.prepare(out, *official_files)
    before = file_state(out)
    monkeypatch.setattr(prep, "tokenize", lambda *a, **k: pytest.fail("re-run tokenised again"))
    prep.main(["--train-file", str(official_files[0]), "--val-file", str(official_files[1]),
               "--out-dir", str(out)])
    assert file_state(out) == before


def edited(change):
    """A damage that keeps meta.json valid JSON (a hand edit): change(meta) edits the dict."""
    def damage(text):
        meta = json.loads(text)
        change(meta)
        return json.dumps(meta)
    return damage


@pytest.mark.parametrize("damage", [
    lambda text: text[:len(text) // 2],                                 # cut short
    edited(lambda meta: meta.pop("dtype")),                             # a field missing
    edited(lambda meta: meta["splits"]["train"].pop("file")),           # a split's field missing
    edited(lambda meta: meta["splits"]["train"].update(source="x.txt")),  # a field of another type
    edited(lambda meta: meta.update(splits=["train", "val"])),
], ids=["cut-short", "no-dtype", "no-file", "source-not-a-dict", "splits-a-list"])
def test_damaged_meta_json_rebuilds(official_files, tmp_path, tokenizer, damage):
    out = tmp_path / "out"
    prep.prepare(out, *official_files)
    text = (out / "meta.json").read_text()
    (out / "meta.json").write_text(damage(text))
    assert (out / "meta.json").read_text() != text
    meta = prep.prepare(out, *official_files)
    assert meta == json.loads((out / "meta.json").read_text())
    tokens = np.asarray(load_tokens(out / "train.bin")).astype(np.int64)
    np.testing.assert_array_equal(tokens, reference_tokens(OFFICIAL_STORIES, tokenizer))


@pytest.mark.parametrize("version", [1, None, token_files.FORMAT_VERSION + 1],
                         ids=["older", "none", "newer"])
def test_a_meta_json_of_another_format_is_refused_in_one_line_and_a_rerun_rebuilds(
        official_files, tmp_path, version):
    """A folder prepared by an older version (format 1: no build id, so train.bin and val.bin of
    two builds could not be told apart) or a newer one is refused by every reader with one line
    that says to re-run the preparation; doing so rebuilds it into files that load."""
    out = tmp_path / "out"
    prep.prepare(out, *official_files)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    meta.pop("build")
    meta["format"] = version
    (out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    for name in ("train.bin", "val.bin"):
        with pytest.raises(ValueError) as info:
            load_tokens(out / name)
        message = str(info.value)
        assert "\n" not in message and f"format {version}" in message
        assert "re-run `python -m shared.prepare_tinystories`" in message
    rebuilt = prep.prepare(out, *official_files)  # the advice, followed
    assert rebuilt["format"] == token_files.FORMAT_VERSION and rebuilt["build"]
    assert load_tokens(out / "train.bin").size == rebuilt["splits"]["train"]["tokens"]


def test_changed_input_rebuilds(official_files, tmp_path, tokenizer):
    out = tmp_path / "out"
    prep.prepare(out, *official_files)
    official_files[1].write_text("A brand new story.\n", encoding="utf-8")
    meta = prep.prepare(out, *official_files)
    tokens = np.asarray(load_tokens(out / "val.bin")).astype(np.int64)
    np.testing.assert_array_equal(tokens, reference_tokens(["A brand new story."], tokenizer))
    assert meta["splits"]["val"]["story_separator"] == st.BLANK_LINES


def crash_on_second_row(monkeypatch):
    real, calls = prep.row_tokens, []

    def flaky(rows):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash while writing")
        return real(rows)
    monkeypatch.setattr(prep, "row_tokens", flaky)
    monkeypatch.setattr(st, "CHUNK_BYTES", 1)  # one row per story


def test_crash_mid_rebuild_keeps_the_old_dataset_and_rerun_completes(official_files, tmp_path,
                                                                   monkeypatch, tokenizer):
    out = tmp_path / "out"
    prep.prepare(out, *official_files)  # a complete dataset from older inputs...
    official_files[0].write_text(OFFICIAL_TEXT + "One more story.\n", encoding="utf-8")
    crash_on_second_row(monkeypatch)
    old = file_state(out)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prep.prepare(out, *official_files)  # ...is being rebuilt when the crash comes
    assert file_state(out) == old  # the previous dataset is untouched and still complete
    assert not list(out.glob(".prepare-*")) and not list(out.glob("*.tmp"))
    # What SIGKILL would leave: a half-written temporary and datasets' scratch folder.
    (out / "train.bin.x1y2z3.tmp").write_bytes(b"junk from a killed run")
    (out / ".prepare-x1y2z3").mkdir()
    monkeypatch.undo()
    meta = prep.prepare(out, *official_files)
    tokens = np.asarray(load_tokens(out / "train.bin")).astype(np.int64)
    expected = reference_tokens(OFFICIAL_STORIES + ["One more story."], tokenizer)
    np.testing.assert_array_equal(tokens, expected)
    assert meta["splits"]["train"]["tokens"] == len(expected)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("TinyStories")) == \
        ["meta.json", "train.bin", "val.bin"]


def test_download_source_goes_through_the_mirror(official_files, tmp_path, monkeypatch, tokenizer):
    mirror = tmp_path / "mirror"
    remote = mirror / "huggingface.co" / "datasets" / "roneneldan" / "TinyStories" / "resolve" / "main"
    remote.mkdir(parents=True)
    for f in official_files:
        (remote / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("LLM_MIRROR", os.pathsep.join([str(mirror), os.environ.get("LLM_MIRROR", "")]))
    out = tmp_path / "out"
    meta = prep.prepare(out)
    assert (out / "TinyStories-train.txt").read_text(encoding="utf-8") == OFFICIAL_TEXT
    assert meta["splits"]["train"]["source"]["url"] == sources.BASE_URL + "TinyStories-train.txt"
    tokens = np.asarray(load_tokens(out / "train.bin")).astype(np.int64)
    np.testing.assert_array_equal(tokens, reference_tokens(OFFICIAL_STORIES, tokenizer))
    before = file_state(out)
    prep.prepare(out)
    assert file_state(out) == before
    for name in sources.OFFICIAL_FILES.values():  # text deleted after preparing: no new download
        (out / name).unlink()
    prep.prepare(out)
    assert file_state(out) == before and not (out / "TinyStories-train.txt").exists()


# --- bad input ------------------------------------------------------------------------------------

def test_bad_arguments_are_explained(official_files, tmp_path):
    with pytest.raises(ValueError, match="both --train-file and --val-file"):
        prep.prepare(tmp_path, train_file=official_files[0])
    with pytest.raises(ValueError, match="drop --train-file"):
        prep.prepare(tmp_path, *official_files, source="hf")
    with pytest.raises(FileNotFoundError, match="not found"):
        prep.prepare(tmp_path, tmp_path / "missing.txt", official_files[1])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n<|endoftext|>\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no story"):
        prep.prepare(tmp_path / "out", empty, official_files[1])
    assert not (tmp_path / "out").exists()


def test_help_says_how_stories_are_split(capsys):
    with pytest.raises(SystemExit):
        prep.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "<|endoftext|>" in help_text and "blank lines" in help_text


def test_hf_source_takes_one_story_per_row(tmp_path, monkeypatch, tokenizer):
    """--source hf, with datasets.load_dataset replaced by an in-memory copy of the hub layout."""
    import datasets
    rows = {"train": ["  Story one.\n\nIt has two paragraphs.\n", "", "Story <|endoftext|> two."],
            "validation": ["Val story."]}
    hub = datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v}) for k, v in rows.items()})
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: asked.append(name) or hub)
    meta = prep.prepare(tmp_path, source="hf", num_proc=1)
    assert asked == [sources.HF_DATASET]
    expected = ["Story one.\n\nIt has two paragraphs.", "Story <|endoftext|> two."]  # empty row dropped
    tokens = np.asarray(load_tokens(tmp_path / "train.bin")).astype(np.int64)
    np.testing.assert_array_equal(tokens, reference_tokens(expected, tokenizer))
    assert meta["splits"]["train"]["stories"] == 2 and meta["splits"]["val"]["stories"] == 1
    before = file_state(tmp_path)
    prep.prepare(tmp_path, source="hf")  # the same hub dataset: nothing to do, not even loading it
    assert file_state(tmp_path) == before and asked == [sources.HF_DATASET]


# --- a slice: the first MB of each file -----------------------------------------------------------

def story_end_offsets(raw: bytes, stories):
    """Byte offset just after each story's text in the file (found in order, independently)."""
    ends, cursor = [], 0
    for story in stories:
        start = raw.index(story.encode("utf-8"), cursor)
        cursor = start + len(story.encode("utf-8"))
        ends.append(cursor)
    return ends


@pytest.mark.parametrize("where", ["at-a-story-end", "inside-the-next-story"])
def test_max_mb_keeps_the_first_stories_up_to_the_slice(tinystories_sample, tmp_path, tokenizer,
                                                        where):
    train, val = tinystories_sample
    raw = train.read_bytes()
    stories = reference_stories(raw.decode("utf-8"), st.BLANK_LINES)
    ends = story_end_offsets(raw, stories)
    k = len(stories) // 3
    # a slice that ends right after story k keeps stories 0..k; a slice that reaches a few bytes
    # into story k+1 is rounded up to its end, so it keeps story k+1 too
    max_bytes = ends[k] if where == "at-a-story-end" else ends[k] + 5
    kept = k + 1 if where == "at-a-story-end" else k + 2
    meta = prep.prepare(tmp_path / "out", train, val, num_proc=1, max_mb=max_bytes / 2**20)
    tokens = np.asarray(load_tokens(tmp_path / "out" / "train.bin")).astype(np.int64)
    np.testing.assert_array_equal(tokens, reference_tokens(stories[:kept], tokenizer))
    assert meta["splits"]["train"]["stories"] == kept < len(stories)
    assert meta["splits"]["train"]["source"]["max_bytes"] == max_bytes


def test_another_slice_rebuilds_and_the_same_slice_does_nothing(tinystories_sample, tmp_path,
                                                                 monkeypatch):
    out = tmp_path / "out"
    small = prep.prepare(out, *tinystories_sample, max_mb=0.02)
    whole = prep.prepare(out, *tinystories_sample)  # no slice: a new input, so a rebuild
    assert whole["splits"]["train"]["tokens"] > small["splits"]["train"]["tokens"]
    assert whole["splits"]["train"]["source"]["max_bytes"] is None
    again = prep.prepare(out, *tinystories_sample, max_mb=0.02)
    assert again == small and json.loads((out / "meta.json").read_text()) == small
    before = file_state(out)
    monkeypatch.setattr(prep, "tokenize", lambda *a, **k: pytest.fail("re-run tokenised again"))
    prep.main(["--train-file", str(tinystories_sample[0]), "--val-file",
               str(tinystories_sample[1]), "--out-dir", str(out), "--max-mb", "0.02"])
    assert file_state(out) == before


@pytest.mark.parametrize("bad", [0, -1, "5", True, float("nan"), float("inf")])
def test_a_bad_slice_is_refused(official_files, tmp_path, bad):
    with pytest.raises(ValueError, match="max_mb must be a positive number"):
        prep.prepare(tmp_path / "out", *official_files, max_mb=bad)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [0, 1.5, "4", True])
def test_a_bad_process_count_is_refused(official_files, tmp_path, bad):
    with pytest.raises(ValueError, match="num_proc must be a whole number >= 1"):
        prep.prepare(tmp_path / "out", *official_files, num_proc=bad)
    assert not (tmp_path / "out").exists()


def test_a_slice_of_the_hub_dataset_is_refused_and_the_cli_explains(official_files, tmp_path,
                                                                    capsys):
    with pytest.raises(ValueError, match="--max-mb slices text files"):
        prep.prepare(tmp_path / "out", source="hf", max_mb=1)
    with pytest.raises(SystemExit):
        prep.main(["--train-file", str(official_files[0]), "--val-file", str(official_files[1]),
                   "--out-dir", str(tmp_path / "out"), "--max-mb", "0"])
    assert "argument --max-mb: must be a finite number > 0, got '0'" in capsys.readouterr().err


# --- faults: a full disk, two runs, a killed parent -----------------------------------------------

def test_a_full_disk_during_a_rebuild_keeps_the_old_dataset(official_files, tmp_path, monkeypatch,
                                                            capsys):
    import errno
    out = tmp_path / "out"
    prep.prepare(out, *official_files)
    before = file_state(out)
    official_files[0].write_text(OFFICIAL_TEXT + "One more story.\n", encoding="utf-8")
    real_write = token_files.write_tokens

    def disk_fills_on_val(chunks, path, total):
        if path.name == "val.bin":  # train.bin of the new run is already written by now
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(chunks, path, total)

    monkeypatch.setattr(token_files, "write_tokens", disk_fills_on_val)
    with pytest.raises(SystemExit) as info:
        prep.main(["--train-file", str(official_files[0]), "--val-file", str(official_files[1]),
                   "--out-dir", str(out), "--num-proc", "1"])
    assert str(info.value.code).startswith("error: ") and "No space left" in str(info.value.code)
    assert file_state(out) == before  # nothing good was deleted
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("TinyStories")) == \
        ["meta.json", "train.bin", "val.bin"]
    assert load_tokens(out / "train.bin").size == json.loads((out / "meta.json").read_text())[
        "splits"]["train"]["tokens"]


@pytest.fixture(scope="module")
def small_old_dataset(tinystories_sample, tmp_path_factory):
    """A complete dataset of the sample's first 0.05 MiB: what a full rebuild must not lose."""
    out = tmp_path_factory.mktemp("old")
    prep.prepare(out, *tinystories_sample, max_mb=0.05)
    return {name: (out / name).read_bytes() for name in ("train.bin", "val.bin", "meta.json")}


def run_prepare(out, train, val, library=False):
    """A rebuild in its own process, so that a SIGBUS shows as a signal exit, not a dead pytest."""
    env = {**os.environ, "PYTHONPATH": str(Path(prep.__file__).resolve().parents[1])}
    if library:  # prepare() as a notebook calls it: the exception must be an OSError
        code = ("import sys, shared.prepare_tinystories as p\n"
                "try:\n    p.prepare(sys.argv[1], sys.argv[2], sys.argv[3])\n"
                "except OSError as e:\n    sys.exit(f'error: {e}')\n")
        args = ["-c", code, str(out), str(train), str(val)]
    else:
        args = ["-m", "shared.prepare_tinystories", "--train-file", str(train), "--val-file",
                str(val), "--out-dir", str(out), "--num-proc", "1"]
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=120)


# Free space for the rebuild of the whole sample (~90 KB of train.bin plus datasets' Arrow files):
# it runs out while datasets writes its Arrow file, while train.bin is written, and at val.bin.
@pytest.mark.slow  # a preparation in a fresh process fills a tmpfs (6 s each on two busy cores)
@pytest.mark.parametrize("free_kib, library", [(70, False), (110, False), (150, True), (190, False)])
def test_a_real_full_disk_is_one_error_line_and_keeps_the_old_dataset(
        tinystories_sample, small_old_dataset, free_kib, library):
    """A rebuild on a real, small tmpfs that fills: one `error:` line (or an OSError from
    prepare()), never a SIGBUS; the old files unchanged; no lock, staging folder or temporary."""
    from small_disk import kib_on_disk, small_disk

    old = small_old_dataset
    with small_disk(sum(-(-len(b) // 4096) * 4 for b in old.values()) + free_kib) as disk:
        out = disk / "out"
        out.mkdir()
        for name, content in old.items():
            (out / name).write_bytes(content)
        result = run_prepare(out, *tinystories_sample, library=library)
        assert result.returncode >= 0, f"killed by signal {-result.returncode}: {result.stderr[-300:]}"
        assert result.returncode != 0, "the disk did not fill: the test needs less free space"
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert "Traceback" not in result.stderr and lines[-1].startswith("error: ")
        assert "No space left on device" in lines[-1] and str(out) in lines[-1]
        assert sorted(p.name for p in out.iterdir()) == sorted(old)  # no .lock, .prepare-*, .tmp
        assert {name: (out / name).read_bytes() for name in old} == old
        disk_stat = os.statvfs(disk)
        used_kib = (disk_stat.f_blocks - disk_stat.f_bfree) * disk_stat.f_frsize // 1024
        assert used_kib == kib_on_disk(*out.iterdir())  # nothing hidden left behind either


def test_a_second_run_into_a_busy_folder_is_refused_and_a_dead_lock_is_taken_over(
        official_files, tmp_path):
    from lock_holder import held_by_another_process
    from shared.files import FolderInUse

    out = tmp_path / "out"
    with held_by_another_process(out) as holder:
        with pytest.raises(FolderInUse, match=f"in use by process {holder.pid}"):
            prep.prepare(out, *official_files)
        assert not (out / "train.bin").exists()
    assert (out / ".lock").exists()  # left by the killed holder
    prep.prepare(out, *official_files)  # its holder is dead: the kernel released the lock
    assert (out / "meta.json").exists() and not (out / ".lock").exists()


@pytest.mark.slow  # starts a preparation and its workers (5 s on two busy cores)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_the_parent_leaves_no_worker_running(tinystories_sample, tmp_path):
    """SIGKILL the parent while 2 workers tokenise: they must be gone within seconds, not keep
    working (or waiting on their task pipe) for nobody."""
    import signal
    import subprocess
    import time

    import psutil

    big = tmp_path / "big.txt"  # ~12 MB of stories: two workers, several seconds of work
    sample = tinystories_sample[0].read_text(encoding="utf-8")
    big.write_text((sample + "\n\n") * (12_000_000 // len(sample)), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(prep.__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "shared.prepare_tinystories", "--train-file",
                             str(big), "--val-file", str(tinystories_sample[1]), "--out-dir",
                             str(tmp_path / "out"), "--num-proc", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    workers = []
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        workers = [c for c in parent.children(recursive=True) if "resource_tracker" not in
                   " ".join(c.cmdline())]
        time.sleep(0.05)
    assert len(workers) >= 2, "the run never started two workers"
    time.sleep(0.5)  # let them pick up their first rows
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    for p in alive:
        p.kill()
    assert alive == [], f"{len(alive)} worker(s) still running after the parent was killed"


# Runs in a fresh interpreter: import the preparation modules, then fork with this process marked
# as a pool's parent (what tokenize() sets while its workers start). A fork hook registered by the
# import would ask Linux to kill the child with its parent (PR_SET_PDEATHSIG), which the child reads
# back with PR_GET_PDEATHSIG. Then the hook is registered as the first pool registers it, and the
# same fork must show it: the probe can see a hook.
FORK_PROBE = """
import ctypes, os, sys
import shared.prepare_tinystories as p, shared.stories, shared.token_files, shared.tinystories_sources

def death_signal_of_a_forked_child():
    p._POOL_PARENT = os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        sig = ctypes.c_int(-1)
        ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
        os.write(write, str(sig.value).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    p._POOL_PARENT = None
    return int(os.read(read, 16))

after_import = death_signal_of_a_forked_child()
p._register_fork_hook()
print(after_import, death_signal_of_a_forked_child())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_importing_the_preparation_registers_no_fork_hook():
    """A notebook or test that only imports the preparation forks as before: the workers' hook is
    registered when the first worker pool starts, not at import."""
    import signal

    env = {**os.environ, "PYTHONPATH": str(Path(prep.__file__).resolve().parents[1])}
    probe = subprocess.run([sys.executable, "-c", FORK_PROBE], env=env, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-500:]
    after_import, after_registering = map(int, probe.stdout.split())
    assert after_import == 0, "importing the module registered a fork hook"
    assert after_registering == signal.SIGKILL
