"""Where TinyStories' text comes from, for shared.prepare_tinystories.

    official_files  the official text files, downloaded (with max_bytes, only their first bytes)
    bundled_sample  the excerpt that ships with the repository (bundled/README.md says what it is)
    local_files     a training and a validation text file of your own
    hub_records / hub_story_rows   the Hugging Face dataset, through `datasets`

A text source gives ({split: path}, {split: record}); the record (path, size, modification time,
URL, slice) is what meta.json keeps, and a re-run with the same records has nothing to do.
"""
from pathlib import Path

from shared.download import download_file, download_prefix
from shared.tokenizer import END_OF_TEXT

BASE_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
OFFICIAL_FILES = {"train": "TinyStories-train.txt", "val": "TinyStories-valid.txt"}
SAMPLE_FILES = {
    split: Path(__file__).resolve().parents[1] / "bundled" / "tinystories" / name
    for split, name in (("train", "TinyStories-train-excerpt.txt"),
                        ("val", "TinyStories-valid-excerpt.txt"))}
PREFIX_SLACK = 1 << 16  # a prefix is 64 KiB longer than max_bytes: the story cut there ends in it
HF_DATASET = "roneneldan/TinyStories"
HF_SPLITS = {"train": "train", "val": "validation"}
STORIES_PER_ROW = 256      # stories per datasets row for the hub copy (one story per row there)


def record(path, url=None, max_bytes=None) -> dict:
    """What meta.json keeps about one input file."""
    stat = Path(path).stat()
    src = {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "max_bytes": max_bytes}  # the slice is an input too: another slice rebuilds
    if url:
        src["url"] = url
    return src


def local_files(train_file, val_file, max_bytes=None):
    """({split: path}, {split: record}) of two text files, which must exist."""
    files = {"train": Path(train_file), "val": Path(val_file)}
    for split, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{split} file {path} not found")
    return files, {split: record(path, max_bytes=max_bytes) for split, path in files.items()}


def bundled_sample(max_bytes=None):
    """The excerpt in bundled/tinystories: no network needed."""
    return local_files(SAMPLE_FILES["train"], SAMPLE_FILES["val"], max_bytes)


def _official_places(out_dir: Path, max_bytes):
    """({split: URL}, {split: path in out_dir}); a prefix gets a name of its own, with its size."""
    urls = {split: BASE_URL + name for split, name in OFFICIAL_FILES.items()}
    names = {split: name if max_bytes is None else
             f"{Path(name).stem}.first-{max_bytes + PREFIX_SLACK}B.txt"
             for split, name in OFFICIAL_FILES.items()}
    return urls, {split: Path(out_dir) / name for split, name in names.items()}


def official_records(out_dir, max_bytes=None) -> dict:
    """The records of the official files without fetching anything: with the text files at hand
    their sizes count too; without them (deleted after an earlier run) the URLs are the inputs."""
    urls, files = _official_places(out_dir, max_bytes)
    if all(path.is_file() for path in files.values()):
        return {split: record(files[split], urls[split], max_bytes) for split in files}
    return {split: {"url": urls[split], "max_bytes": max_bytes} for split in files}


def official_files(out_dir, max_bytes=None):
    """The official files, downloaded into out_dir (shared.download: resumable, verified); with
    max_bytes only their first max_bytes plus PREFIX_SLACK bytes, so the story cut there ends
    inside. ({split: path}, {split: record})."""
    urls, files = _official_places(out_dir, max_bytes)
    for split, url in urls.items():
        if max_bytes is None:
            download_file(url, files[split], progress=True)
            continue
        got = download_prefix(url, files[split], max_bytes + PREFIX_SLACK, progress=True)
        with open(got.path, "rb") as f:
            f.seek(max_bytes)
            if got.cut and f"\n{END_OF_TEXT}".encode() not in f.read():
                raise ValueError(f"no story ends within {PREFIX_SLACK} bytes after byte "
                                 f"{max_bytes} of {url}: is it TinyStories' text format?")
    return files, {split: record(files[split], urls[split], max_bytes) for split in files}


def hub_records() -> dict:
    """What meta.json keeps about the hub dataset: its name and split, all a re-run compares."""
    return {split: {"dataset": HF_DATASET, "split": hub} for split, hub in HF_SPLITS.items()}


def hub_story_rows(hub, split: str):
    """The non-empty stories of one split of the loaded hub dataset (`datasets.load_dataset(
    HF_DATASET)`), STORIES_PER_ROW to a row: fewer, larger rows cost less overhead."""
    stories = hub[HF_SPLITS[split]].select_columns(["text"])
    stories = stories.filter(lambda b: [bool(t.strip()) for t in b["text"]],
                             batched=True, desc=f"dropping empty {split} stories")
    return stories.batch(STORIES_PER_ROW)
