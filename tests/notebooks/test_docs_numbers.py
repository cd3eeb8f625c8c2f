"""Every number docs/results.md quotes is one its source printed.

Each section of docs/results.md names its source: the notebooks in its heading (their committed
outputs, and their code for the settings a run used) and the reports it links (docs/*.md made by a
real run). A number with a decimal point, a thousands separator, or a unit of x or % is a result, and
must appear, written the same way, among the numbers of those sources. Plain integers (epochs, batch
sizes, sizes like 124M) are settings and are not checked. When a notebook is re-run and prints other
numbers, this test names each quote to update.
"""
import json
import re
from pathlib import Path

import pytest

from nbrun import REPO

RESULTS = REPO / "docs" / "results.md"
NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")


def key(text: str, match: re.Match) -> str:
    """The number without its separators, with its unit if that is x or % (a ratio is quoted as
    one: 2.7x must be printed as 2.7x, not as 2.7 somewhere else)."""
    after = text[match.end():match.end() + 1]
    return match.group().replace(",", "") + (after if after in ("x", "%") else "")


def numbers(text: str) -> set[str]:
    return {key(text, m) for m in NUMBER.finditer(text)}


def is_result(text: str, match: re.Match) -> bool:
    return "." in match.group() or "," in match.group() or key(text, match)[-1] in "x%"


def notebook_text(path: Path) -> str:
    """What the committed notebook printed, and its code."""
    parts = []
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        parts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def sections(markdown: str) -> list[tuple[str, str]]:
    """(heading, body) of each `## ` section."""
    found = re.split(r"^## (.+)$", markdown, flags=re.M)[1:]
    return list(zip(found[::2], found[1::2]))


def unsourced(markdown: str, folder: Path, repo: Path = REPO) -> list[str]:
    """The quoted results that no source of their section prints (empty: all are sourced)."""
    missing = []
    for heading, body in sections(markdown):
        sources = [repo / name for name in re.findall(r"`([\w/.-]+\.ipynb)`", heading)]
        sources += [folder / link for link in re.findall(r"\]\(([\w/.-]+\.md)\)", body)]
        if not sources or not all(s.is_file() for s in sources):
            missing.append(f"section {heading!r} names no notebook or report as its source, or "
                           f"one that does not exist")
            continue
        known = set().union(*(numbers(notebook_text(s) if s.suffix == ".ipynb" else s.read_text())
                              for s in sources))
        for match in NUMBER.finditer(body):
            if is_result(body, match) and key(body, match) not in known:
                missing.append(f"{heading}: {match.group()} is printed by none of "
                               f"{', '.join(s.name for s in sources)}")
    return missing


def test_every_result_quoted_in_docs_results_is_printed_by_its_source():
    assert unsourced(RESULTS.read_text(encoding="utf-8"), RESULTS.parent) == []


@pytest.mark.parametrize("quote", ["validation loss 6.452", "162,419,712 parameters", "1.423 bits per byte"])
def test_a_quote_that_differs_from_the_run_is_named(quote):
    text = RESULTS.read_text(encoding="utf-8")
    assert quote in text
    number = NUMBER.search(quote).group()
    wrong = number[:-1] + str((int(number[-1]) + 1) % 10)  # the last digit, as a stale copy has it
    found = unsourced(text.replace(quote, quote.replace(number, wrong), 1), RESULTS.parent)
    assert len(found) == 1 and f": {wrong} is printed by none of" in found[0], found


def test_a_section_without_a_source_is_named():
    expected = ["section 'Somewhere' names no notebook or report as its source, or one that does "
                "not exist"]
    assert unsourced("## Somewhere\n\nloss 1.234\n", RESULTS.parent) == expected
    assert unsourced("## Somewhere\n\n[a report](no-such.md): loss 1.234\n", RESULTS.parent) == expected
