"""lm-eval-harness 0.4.x on an in-memory model, with the task data of the local files.

Optional (``pip install fxprune[lmeval]``, installed by ``scripts/setup.sh``): ``fxprune eval --tasks ...
--scorer lm-eval`` and the parity test use it; the default scorer stays fxprune's own
(``zeroshot.py``), which needs no extra packages, runs data-parallel on the Lightning engine and
scores an item's choices from one shared context forward.

How the local files reach lm-eval: each local row is converted to the schema of the Hugging Face
dataset that lm-eval's *official* task YAML reads (``arc_easy.yaml``, ``super_glue/boolq``,
``openbookqa``, ``piqa``, ``winogrande``, ``hellaswag``), written as JSON lines, and the official
config (loaded with lm-eval's own YAML loader, so its ``doc_to_text`` / ``doc_to_choice`` /
``doc_to_target`` / ``process_docs`` are the shipped ones) gets only its data source replaced
(``dataset_path: json``). So lm-eval builds the prompts with its own templates from the same items,
and the parity test compares prompts, per-request log-likelihoods and acc / acc_norm with the own
scorer. lm-eval's BoolQ and WinoGrande report only ``acc``; ``acc_norm`` is added to their metric
lists here so both scorers report the same metrics.

The model is wrapped by lm-eval's ``HFLM(pretrained=<the nn.Module>, tokenizer=<its tokenizer>)``:
nothing is downloaded or reloaded, so a pruned model in memory is evaluated as it is.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from .tasks import TASKS, load_task

OFFICIAL_YAML = {
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
}
_LABELS = "ABCDEFGH"


def require_lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise DataError("lm-eval is not installed: `pip install 'fxprune[lmeval]'` (lm-eval==0.4.13), "
                        "or re-run scripts/setup.sh") from e
    return lm_eval


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def hf_docs(name: str, root: str | None = None, limit: int | None = None) -> list[dict]:
    """The local rows of task ``name`` in the schema of the HF dataset its lm-eval YAML reads."""
    from ..data import data_root
    paths = [data_root(root) / f for f in TASKS[name].files]
    load_task(name, root, 1)  # file checks with the usual errors
    docs: list[dict] = []
    if name in ("arc_easy", "arc_challenge", "openbookqa"):
        for r in _jsonl(paths[0]):
            labels = list(_LABELS[:len(r["choices"])])
            choices = {"text": list(r["choices"]), "label": labels}
            if name == "openbookqa":
                docs.append({"question_stem": r["query"], "choices": choices, "answerKey": labels[r["gold"]]})
            else:
                q = r["query"]
                if not q.startswith("Question: "):
                    raise DataError(f"{paths[0]}: ARC query without 'Question: ' prefix: {q[:60]!r}")
                docs.append({"question": q[len("Question: "):], "choices": choices, "answerKey": labels[r["gold"]]})
    elif name == "boolq":
        for r in _jsonl(paths[0]):
            q = r["query"][len("Passage: "):] if r["query"].startswith("Passage: ") else r["query"]
            passage, question = q.rsplit("\nQuestion: ", 1)
            if not question.endswith("?"):
                raise DataError(f"{paths[0]}: BoolQ question without '?': {question!r}")
            docs.append({"passage": passage, "question": question[:-1], "label": int(r["gold"])})
    elif name == "piqa":
        labels = [int(x) for x in paths[1].read_text().split()]
        docs = [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": y}
                for r, y in zip(_jsonl(paths[0]), labels)]
    elif name == "winogrande":
        for r in _jsonl(paths[0]):
            a, b = r["context_options"]
            stem = os.path.commonprefix([a, b])  # the sentence up to the blank (or a common start of both options)
            docs.append({"sentence": stem + "_ " + r["continuation"], "option1": a[len(stem):],
                         "option2": b[len(stem):], "answer": str(int(r["gold"]) + 1)})
    elif name == "hellaswag":
        lines = paths[0].read_text(encoding="utf-8").split("\n")
        for i in range(0, len(lines) - 5, 6):
            label, ctx = lines[i].split(": ", 1)  # re-joined with ": " by lm-eval's process_docs
            docs.append({"activity_label": label, "ctx_a": ctx, "ctx_b": "", "endings": lines[i + 2:i + 6],
                         "label": lines[i + 1].strip()})
    else:
        raise DataError(f"no lm-eval mapping for task {name!r}; known: {sorted(OFFICIAL_YAML)}")
    return docs[:limit] if limit is not None else docs


def task_config(name: str, data_file: Path, cache_dir: Path) -> dict:
    """lm-eval's official config of ``name`` with the data source replaced by ``data_file`` (JSON lines)."""
    lm_eval = require_lm_eval()
    from lm_eval.tasks._yaml_loader import load_yaml
    cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / OFFICIAL_YAML[name])
    cfg.pop("tag", None)
    cfg.update(task=f"fxprune_{name}", dataset_path="json", dataset_name=None,
               dataset_kwargs={"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
               training_split=None, validation_split=None, test_split="test", fewshot_split=None)
    metrics = [m["metric"] for m in cfg.get("metric_list", [])]
    for m in ("acc", "acc_norm"):
        if m not in metrics:
            cfg.setdefault("metric_list", []).append({"metric": m, "aggregation": "mean", "higher_is_better": True})
    return cfg


def evaluate_lm_eval(model: Any, tokenizer: Any, tasks: Sequence[str], *, root: str | None = None,
                     limit: int | None = None, batch_size: int = 8, device: str = "cpu") -> dict:
    """Run lm-eval on the in-memory ``model``. Returns ``{task: {"acc", "acc_norm", "items",
    "requests": [(context, continuation), ...], "loglikelihoods": [...], "version"}}`` (requests item
    after item, in the order of the local file)."""
    lm_eval = require_lm_eval()
    import logging

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    if not hasattr(tokenizer, "pad_token"):
        raise DataError("lm-eval needs a Hugging Face tokenizer; this model has a stand-in tokenizer "
                        "(tiny models): use the own scorer")
    cfg = getattr(model, "config", None)
    max_length = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device)
    out = {}
    with tempfile.TemporaryDirectory(prefix="fxprune-lmeval-") as tmp:
        specs = []
        for name in tasks:
            f = Path(tmp) / f"{name}.jsonl"
            f.write_text("".join(json.dumps(d) + "\n" for d in hf_docs(name, root, limit)), encoding="utf-8")
            specs.append(task_config(name, f, Path(tmp) / "hf-cache"))
        res = simple_evaluate(model=lm, tasks=specs, num_fewshot=0, log_samples=True, bootstrap_iters=0,
                              task_manager=TaskManager(include_defaults=False), random_seed=0)
    for name in tasks:
        key = f"fxprune_{name}"
        samples = sorted(res["samples"][key], key=lambda s: s["doc_id"])
        reqs, lls = [], []
        for s in samples:
            for args, resp in zip(s["arguments"], s["resps"]):
                a = list(args.values()) if isinstance(args, dict) else list(args)
                reqs.append((a[0], a[1]))
                lls.append(float(resp[0][0]))
        r = res["results"][key]
        out[name] = {"acc": float(r["acc,none"]), "acc_norm": float(r["acc_norm,none"]), "items": len(samples),
                     "requests": reqs, "loglikelihoods": lls, "version": lm_eval.__version__}
    return out
