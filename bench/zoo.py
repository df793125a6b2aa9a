"""The zoo contract over every architecture transformers registers: build it tiny, capture, analyse,
prune a random plan of every prunable kind, and check slicing = masking, generate with cache =
without, save -> reload and stock from_pretrained (``fxprune.models.zoo.check_family``).

Each family runs in its own process (one thread, a time limit), so a crash or a hang is a recorded
failure, not the end of the run: forked from a parent that imported torch and transformers once
(``--spawn`` starts a fresh interpreter per family instead). Writes bench/results/zoo.json (records), bench/results/zoo.md
(the table), the table into README.md between its zoo markers, and tests/zoo_supported.json (the
families and kinds tests/test_zoo.py holds to).

    OMP_NUM_THREADS=1 .venv/bin/python bench/zoo.py              # every family (~1 h on 2 shared cores)
    .venv/bin/python bench/zoo.py --only mixtral phi3            # re-run some, merge into the records
    .venv/bin/python bench/zoo.py --resume                       # only families without a record
    .venv/bin/python bench/zoo.py --render                       # re-render from the records
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
RECORDS = RESULTS / "zoo.json"
SUPPORTED = ROOT / "tests" / "zoo_supported.json"
BEGIN, END = "<!-- zoo:begin -->", "<!-- zoo:end -->"

# run first (the families users ask about most, and one of each construct), then the rest alphabetically
FIRST = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "mixtral",
         "qwen2_moe", "qwen3_moe", "mamba", "mamba2", "jamba", "falcon_h1", "gpt2", "gpt_bigcode", "opt", "bert",
         "falcon", "gpt_neox", "gptj", "olmo2", "cohere", "stablelm", "starcoder2", "deepseek_v3", "granite",
         "granitemoe", "bamba", "zamba2", "nemotron", "roberta", "bloom", "codegen", "smollm3", "glm", "exaone4")

CHILD = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
import transformers
transformers.logging.set_verbosity_error()
from fxprune.models.zoo import check_family
print("ZOO-RECORD " + json.dumps(check_family(sys.argv[1], sys.argv[2])), flush=True)
"""


def run_one(model_type: str, head: str, timeout: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, model_type, head], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"family": model_type, "head": head, "stage": "timeout", "checks": {}, "kinds": {},
                "error": f"no result within {timeout} s", "seconds": timeout}
    for line in p.stdout.splitlines():
        if line.startswith("ZOO-RECORD "):
            return json.loads(line[len("ZOO-RECORD "):])
    tail = (p.stderr.strip().splitlines() or ["?"])[-1]
    return {"family": model_type, "head": head, "stage": "crash", "checks": {}, "kinds": {},
            "error": f"exit {p.returncode}: {tail[:300]}", "seconds": round(time.perf_counter() - t0, 1)}


def fork_one(model_type: str, head: str, timeout: int, verify: bool = True) -> dict:
    """``check_family`` in a forked child (torch and transformers already imported by the parent)."""
    import signal
    import tempfile
    fd, path = tempfile.mkstemp(prefix=f"zoo-{model_type}-", suffix=".json")
    os.close(fd)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            import warnings
            warnings.filterwarnings("ignore")
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            from fxprune.models.zoo import check_family
            Path(path).write_text(json.dumps(check_family(model_type, head, verify=verify)))
            code = 0
        finally:
            os._exit(code)
    status = None
    while time.perf_counter() - t0 < timeout:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.unlink(path)
        return {"family": model_type, "head": head, "stage": "timeout", "checks": {}, "kinds": {},
                "error": f"no result within {timeout} s", "seconds": timeout}
    try:
        return json.loads(Path(path).read_text())
    except ValueError:
        return {"family": model_type, "head": head, "stage": "crash", "checks": {}, "kinds": {},
                "error": f"the child died (wait status {status})", "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        os.unlink(path)


def render(records: dict) -> None:
    from fxprune.models.zoo import fully_supported, render_table, zoo_families
    if _backfill_attention(records):
        RECORDS.write_text(json.dumps(records, indent=1, sort_keys=True))
    table = render_table(records, [mt for mt, _ in zoo_families()])
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python bench/zoo.py"
    (RESULTS / "zoo.md").write_text(f"# Zoo support table\n\nProduced by `{cmd}` (transformers "
                                    f"{_version('transformers')}, torch {_version('torch')}).\n\n{table}\n")
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    supported = {fam: {"head": r.get("head", "causal"),
                       "kinds": sorted(k for k, v in r.get("kinds", {}).items() if v["prunable"] == v["groups"] > 0)}
                 for fam, r in sorted(records.items()) if fully_supported(r)}
    SUPPORTED.write_text(json.dumps(supported, indent=1) + "\n")


def _backfill_attention(records: dict) -> bool:
    """Records from before ``attention_modules`` was recorded get it from the tiny model built on the
    meta device (no capture): the table's strict count needs it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    from fxprune.models.zoo import attention_modules, tiny_zoo_config
    changed = False
    for fam, r in records.items():
        if r.get("stage") == "build" or "attention_modules" in r:
            continue
        auto = AutoModelForMaskedLM if r.get("head") == "masked" else AutoModelForCausalLM
        try:
            with torch.device("meta"):
                r["attention_modules"] = attention_modules(auto.from_config(tiny_zoo_config(fam)))
            changed = True
        except Exception:  # noqa: BLE001 - left missing: counts as having attention (strict)
            pass
    return changed


def _version(pkg: str) -> str:
    from importlib.metadata import version
    return version(pkg)


def main() -> int:
    from fxprune.models.zoo import zoo_families
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="model types to (re)run; the others keep their records")
    ap.add_argument("--render", action="store_true", help="only re-render from bench/results/zoo.json")
    ap.add_argument("--resume", action="store_true", help="skip families that already have a record")
    ap.add_argument("--spawn", action="store_true", help="a fresh interpreter per family (default: fork)")
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--no-verify", action="store_true",
                    help="skip surgery's re-capture check (halves the time; the four checks still run)")
    args = ap.parse_args()
    if not args.spawn:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        import transformers
        torch.set_num_threads(1)
        transformers.logging.set_verbosity_error()
        import fxprune.analysis.analyser  # noqa: F401
        import fxprune.surgery  # noqa: F401
    records = json.loads(RECORDS.read_text()) if RECORDS.exists() else {}
    if not args.render:
        fams = [(mt, h) for mt, h in zoo_families() if (not args.only or mt in args.only)
                and not (args.resume and mt in records)]
        fams.sort(key=lambda f: (FIRST.index(f[0]) if f[0] in FIRST else len(FIRST), f[0]))
        for i, (mt, head) in enumerate(fams):
            rec = run_one(mt, head, args.timeout) if args.spawn else \
                fork_one(mt, head, args.timeout, verify=not args.no_verify)
            records[mt] = rec
            RECORDS.write_text(json.dumps(records, indent=1, sort_keys=True))
            ok = "ok" if rec.get("stage") == "done" and all(c["ok"] for c in rec["checks"].values()) else \
                rec.get("error", "")[:100] or {k: v["ok"] for k, v in rec["checks"].items()}
            print(f"[{i + 1}/{len(fams)}] {mt}: {ok} ({rec.get('seconds')} s)", flush=True)
    render(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
