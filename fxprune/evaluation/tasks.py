"""Zero-shot multiple-choice tasks read from the local files, formatted as lm-eval formats them.

Each task is a loader registered under its lm-eval name that returns ``MCItem``s: one
``(context, continuation)`` request per choice and the gold index. Formats (lm-eval task YAMLs):

| task | context | continuation |
|---|---|---|
| arc_easy, arc_challenge | ``Question: {q}\\nAnswer:`` | `` {choice}`` |
| boolq | ``{passage}\\nQuestion: {question}?\\nAnswer:`` | `` no`` / `` yes`` |
| openbookqa | ``{question_stem}`` | `` {choice}`` |
| piqa | ``Question: {goal}\\nAnswer:`` | `` {sol}`` |
| winogrande (partial scoring) | ``{sentence up to _ with the option}`` | `` {rest of the sentence}`` |
| hellaswag | ``{activity_label}: {ctx}`` (preprocessed) | `` {ending}`` (preprocessed) |

ARC/BoolQ/OBQA/WinoGrande come from ``zeroshot-llm-foundry/``, PIQA from the original ``piqa/``
files, HellaSwag from ``hellaswag/hellaswag_val_full.txt`` (see shared/data/SOURCES.md).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data import data_root, sha256_file
from ..errors import DataError


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question: a (context, continuation) request per choice; ``gold`` indexes them.

    ``choices``: the strings lm-eval's ``doc_to_choice`` returns (no target delimiter); acc_norm divides
    by their length. Defaults to the continuations without the leading space.
    """

    requests: tuple[tuple[str, str], ...]
    gold: int
    choices: tuple[str, ...] | None = None

    @property
    def norm_lengths(self) -> tuple[int, ...]:
        texts = self.choices if self.choices is not None else tuple(c[1:] if c.startswith(" ") else c
                                                                    for _, c in self.requests)
        return tuple(max(len(t), 1) for t in texts)


@dataclass(frozen=True)
class Task:
    name: str
    files: tuple[str, ...]        # relative to the data root; the first is hashed into the protocol
    load: Callable[[list[Path]], list[MCItem]]


TASKS: dict[str, Task] = {}


def _register(name: str, *files: str):
    def deco(fn):
        TASKS[name] = Task(name, files, fn)
        return fn
    return deco


def _jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read task file {str(path)!r}: {e}") from e


def _question_answer(rows: list[dict]) -> list[MCItem]:
    return [MCItem(tuple((r["query"] + "\nAnswer:", " " + c) for c in r["choices"]), int(r["gold"])) for r in rows]


@_register("arc_easy", "zeroshot-llm-foundry/arc_easy.jsonl")
def _arc_easy(paths):
    return _question_answer(_jsonl(paths[0]))


@_register("arc_challenge", "zeroshot-llm-foundry/arc_challenge.jsonl")
def _arc_challenge(paths):
    return _question_answer(_jsonl(paths[0]))


@_register("boolq", "zeroshot-llm-foundry/boolq.jsonl")
def _boolq(paths):
    items = []
    for r in _jsonl(paths[0]):
        q = r["query"][len("Passage: "):] if r["query"].startswith("Passage: ") else r["query"]
        items.append(MCItem(tuple((q + "\nAnswer:", " " + c) for c in r["choices"]), int(r["gold"])))
    return items


@_register("openbookqa", "zeroshot-llm-foundry/openbook_qa.jsonl")
def _obqa(paths):
    return [MCItem(tuple((r["query"], " " + c) for c in r["choices"]), int(r["gold"])) for r in _jsonl(paths[0])]


@_register("piqa", "piqa/valid.jsonl", "piqa/valid-labels.lst")
def _piqa(paths):
    rows = _jsonl(paths[0])
    labels = [int(x) for x in paths[1].read_text().split()]
    if len(labels) != len(rows):
        raise DataError(f"{str(paths[1])!r}: {len(labels)} labels for {len(rows)} PIQA rows")
    return [MCItem(tuple((f"Question: {r['goal']}\nAnswer:", " " + s) for s in (r["sol1"], r["sol2"])), y)
            for r, y in zip(rows, labels)]


@_register("winogrande", "zeroshot-llm-foundry/winogrande.jsonl")
def _winogrande(paths):
    return [MCItem(tuple((c, " " + r["continuation"]) for c in r["context_options"]), int(r["gold"]),
                   tuple(r["context_options"])) for r in _jsonl(paths[0])]


def _hellaswag_pre(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


@_register("hellaswag", "hellaswag/hellaswag_val_full.txt")
def _hellaswag(paths):
    lines = paths[0].read_text(encoding="utf-8").split("\n")
    items = []
    for i in range(0, len(lines) - 5, 6):
        ctx, gold, endings = lines[i], int(lines[i + 1]), lines[i + 2:i + 6]
        items.append(MCItem(tuple((_hellaswag_pre(ctx), " " + _hellaswag_pre(e)) for e in endings), gold))
    return items


def load_task(name: str, root: str | None = None, limit: int | None = None) -> tuple[list[MCItem], dict]:
    """The first ``limit`` items of task ``name`` and its protocol entry (file, sha256, items)."""
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    task = TASKS[name]
    paths = [data_root(root) / f for f in task.files]
    for p in paths:
        if not p.is_file():
            raise DataError(f"task {name!r} needs data file {str(p)!r}, which is missing")
    items = task.load(paths)
    if limit is not None:
        items = items[:limit]
    return items, {"file": str(paths[0]), "sha256": sha256_file(paths[0]), "items": len(items), "limit": limit}
