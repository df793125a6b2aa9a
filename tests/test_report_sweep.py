"""Checkpoint report (sizes, per-layer widths), `fxprune report`, `fxprune sweep` resume, PNG plots."""
import json
import struct

import pytest
import torch
import yaml

import fxprune
from fxprune.cli import main
from fxprune.commands.sweep import recipe_at, table_rows
from fxprune.evaluation.plots import plot_sweep, plot_widths
from fxprune.evaluation.widths import count_params, widths_table
from fxprune.loading import load_model
from fxprune.models.tiny import tiny_model

RECIPE = {"method": "structured", "criterion": "flap", "reconstruction": "none", "allocation": "global",
          "target": 0.3, "scope": "decoder_linear", "kinds": ["ffn"], "channel_multiple": 1,
          "calib_source": "c4", "calib_samples": 8, "calib_seq_len": 16, "batch_size": 4, "seed": 0}


def _recipe(tmp_path, **kw):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({**RECIPE, **kw}))
    return p


def assert_png(path, min_bytes=5000):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    w, h = struct.unpack(">II", data[16:24])          # IHDR
    assert w > 200 and h > 200 and len(data) > min_bytes, (w, h, len(data))
    import matplotlib.image
    img = matplotlib.image.imread(str(path))
    assert img.shape[0] == h and img.shape[1] == w
    assert float(img[..., :3].std()) > 0.01           # not a blank canvas


def test_widths_read_from_parameter_shapes():
    m = tiny_model("llama")
    rows = widths_table(m)
    cfg = m.config
    ffn = [r for r in rows if r["kind"] == "ffn"]
    assert [r["layer"] for r in ffn] == list(range(cfg.num_hidden_layers))
    assert all(r["width"] == cfg.intermediate_size for r in ffn)
    q = [r for r in rows if r["kind"] == "q"]
    assert all(r["heads"] == cfg.num_attention_heads for r in q)
    kv = [r for r in rows if r["kind"] == "kv"]
    assert all(r["heads"] == cfg.num_key_value_heads for r in kv)
    # slice layer 0's FFN by hand: the table follows the shapes
    mlp = m.model.layers[0].mlp
    keep = torch.arange(5)
    for lin in (mlp.gate_proj, mlp.up_proj):
        lin.weight = torch.nn.Parameter(lin.weight[keep])
        lin.out_features = 5
    assert next(r for r in widths_table(m) if r["kind"] == "ffn" and r["layer"] == 0)["width"] == 5
    for fam, kind in (("gpt2", "ffn"), ("opt", "ffn"), ("mamba", "ssm")):
        assert any(r["kind"] == kind for r in widths_table(tiny_model(fam))), fam


def test_prune_writes_report_with_sizes_and_widths(root, tmp_path, capsys):
    out = tmp_path / "ckpt"
    rc = main(["prune", "tiny:llama", "--recipe", str(_recipe(tmp_path)), "--out", str(out),
               "--eval-ppl", "wikitext2", "--seq-len", "16", "--windows", "2",
               "--eval-tasks", "piqa,arc_easy", "--limit", "3"])
    assert rc == 0
    capsys.readouterr()
    md = (out / "report.md").read_text()
    data = json.loads((out / "report.json").read_text())
    saved = json.loads((out / "fxprune_report.json").read_text())
    model = load_model(str(out)).model
    after, before = count_params(model), saved["params_before"]
    assert after == saved["params_after"] < before == count_params(tiny_model("llama"))
    assert f"| dense | {before:,} |" in md and f"| pruned | {after:,} |" in md
    # kept widths = the reloaded checkpoint's parameter shapes; dense = the tiny config
    for layer, block in enumerate(model.model.layers):
        w = block.mlp.up_proj.weight.shape[0]
        row = next(r for r in data["widths"]["kept"] if r["layer"] == layer and r["kind"] == "ffn")
        assert row["width"] == w
        dense = tiny_model("llama").config.intermediate_size
        assert f"| {layer} | {w} / {dense} |" in md or (w == dense and f"| {layer} | {w} |" in md)
    assert sum(r["width"] for r in data["widths"]["kept"] if r["kind"] == "ffn") < \
        sum(r["width"] for r in data["widths"]["dense"] if r["kind"] == "ffn")
    assert data["recipe"]["sha256"] and "criterion: flap" in md
    assert data["calibration"] and "sha256" in json.dumps(data["calibration"])
    assert "## Perplexity" in md and "dense" in md.split("## Perplexity")[1]
    zs = data["zeroshot"]["pruned"]
    assert set(zs["tasks"]) == {"piqa", "arc_easy"} and zs["limit"] == 3 and zs["full_sets"] is False
    assert "first [3] items" in md and "| **average** |" in md
    assert any(s["name"] == "zero-shot evaluation" for s in data["stages"])
    assert_png(out / "report_widths.png")
    # `fxprune report DIR` renders the same report again
    (out / "report.md").unlink()
    (out / "report_widths.png").unlink()
    assert main(["report", str(out)]) == 0
    again = (out / "report.md").read_text()
    strip = lambda s: [ln for ln in s.splitlines() if not ln.startswith("- rendered:")]  # noqa: E731
    assert strip(again) == strip(md)
    assert_png(out / "report_widths.png")


def test_plots_are_valid_pngs(tmp_path):
    rows = [{"recipe": r, "removed": t, "ppl": 20 * (1 + 3 * t) * (1.1 if r == "b" else 1), "zs_acc": 0.5 - t / 3}
            for r in ("a", "b") for t in (0.1, 0.2, 0.3)]
    assert_png(plot_sweep(rows, tmp_path / "ppl.png", metric="ppl", label="ppl", dense=20.0, log_y=True))
    assert_png(plot_sweep(rows, tmp_path / "zs.png", metric="zs_acc", label="acc", dense=0.5))
    m = tiny_model("llama")
    assert_png(plot_widths(widths_table(m), tmp_path / "w.png", dense=widths_table(m)))


def test_recipe_at_sets_only_the_target(tmp_path):
    r = recipe_at(str(_recipe(tmp_path)), 0.45, {"samples": 4})
    step = r.steps[0]
    assert step.target == 0.45 and r.calibration.samples == 4 and step.criterion == "flap"
    assert recipe_at("goa-liar-ffn-global-20", 0.1).steps[0].target == 0.1


def _sweep(out, recipe, targets="0.2,0.4"):
    other = out.parent / "magnitude.yaml"
    other.write_text(yaml.safe_dump({**RECIPE, "criterion": "magnitude", "allocation": "uniform"}))
    return main(["sweep", "tiny:llama", "--recipes", f"{recipe},{other}", "--targets", targets,
                 "--out", str(out), "--calib-samples", "8", "--seq-len", "16", "--windows", "2",
                 "--tasks", "piqa", "--limit", "3"])


def _comparable(out):
    rows = json.loads((out / "results.json").read_text())
    return [{k: v for k, v in r.items() if k not in ("prune_seconds", "eval_seconds", "peak_rss_mb")} for r in rows]


def test_sweep_resumes_after_an_interrupted_combination(root, tmp_path, monkeypatch):
    recipe = str(_recipe(tmp_path))
    full = tmp_path / "full"
    assert _sweep(full, recipe) == 0
    ref = _comparable(full)
    other = str(tmp_path / "magnitude.yaml")
    assert [(r["recipe"], r["target"]) for r in ref] == [("dense", 0.0), (recipe, 0.2), (recipe, 0.4),
                                                         (other, 0.2), (other, 0.4)]
    assert ref[0]["removed"] == 0 and 0 < ref[1]["removed"] < ref[2]["removed"]
    assert all(r["piqa_acc"] is not None and r["limit"] == 3 for r in ref)
    for name in ("sweep_ppl.png", "sweep_zeroshot.png"):
        assert_png(full / name)
    assert list(full.glob("widths_*.png"))
    assert (full / "results.csv").read_text().splitlines()[0].startswith("recipe,target,params_before")

    # interrupt the third combination (after two pruned rows were written), then rerun
    part = tmp_path / "part"
    real, calls = fxprune.prune, []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(fxprune, "prune", flaky)
    assert _sweep(part, recipe) == 130  # the CLI reports Ctrl-C as one line, exit code 130
    assert len((part / "results.jsonl").read_text().splitlines()) == 3  # dense + two combinations
    monkeypatch.setattr(fxprune, "prune", real)
    calls.clear()
    assert _sweep(part, recipe) == 0
    assert _comparable(part) == ref
    # a finished sweep reruns as a no-op; other settings in the same folder are refused
    assert _sweep(part, recipe) == 0 and _comparable(part) == ref
    assert main(["sweep", "tiny:llama", "--recipes", recipe, "--targets", "0.2", "--out", str(part),
                 "--windows", "3", "--seq-len", "16"]) == 2


def test_sweep_eval_precision_changes_evaluation_only(root, tmp_path):
    """``--eval-precision bf16-mixed``: the same pruned models (pruning stays fp32: same sizes and
    widths), evaluated in bf16 (recorded in the settings); perplexity close to the fp32 sweep's."""
    recipe = str(_recipe(tmp_path))
    args = ["sweep", "tiny:llama", "--recipes", recipe, "--targets", "0.3", "--calib-samples", "8",
            "--seq-len", "16", "--windows", "2"]
    assert main([*args, "--out", str(tmp_path / "fp32")]) == 0
    assert main([*args, "--out", str(tmp_path / "bf16"), "--eval-precision", "bf16-mixed"]) == 0
    a, b = ([json.loads(l) for l in (tmp_path / d / "results.jsonl").read_text().splitlines()] for d in ("fp32", "bf16"))
    assert [(r["params_after"], r["widths"]) for r in a] == [(r["params_after"], r["widths"]) for r in b]
    assert all(r["settings"]["eval_precision"] == "bf16-mixed" for r in b)
    assert all("eval_precision" not in r["settings"] for r in a)
    for x, y in zip(a, b):
        assert x["ppl"] != y["ppl"] and abs(x["ppl"] / y["ppl"] - 1) < 0.05


def test_sweep_several_window_lengths(root, tmp_path, capsys):
    """``--seq-len 16,32 --windows 3,2``: one perplexity column per length, each equal to the sweep run
    at that length alone (same pruned models); ``ppl`` is the first length's; one plot per length."""
    recipe = str(_recipe(tmp_path))
    args = ["sweep", "tiny:llama", "--recipes", recipe, "--targets", "0.3", "--calib-samples", "8"]
    assert main([*args, "--out", str(tmp_path / "both"), "--seq-len", "16,32", "--windows", "3,2"]) == 0
    assert main([*args, "--out", str(tmp_path / "l32"), "--seq-len", "32", "--windows", "2"]) == 0
    both, l32 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("both", "l32"))
    assert [r["recipe"] for r in both] == [r["recipe"] for r in l32] and len(both) == 2
    for a, b in zip(both, l32):
        assert a["ppl"] == a["ppl_L16"] and a["ppl_L16"] != a["ppl_L32"]
        assert abs(a["ppl_L32"] / b["ppl"] - 1) < 1e-6
    assert_png(tmp_path / "both" / "sweep_ppl.png")
    assert_png(tmp_path / "both" / "sweep_ppl_L32.png")
    settings = json.loads((tmp_path / "both" / "results.jsonl").read_text().splitlines()[0])["settings"]
    assert settings["seq_len"] == [16, 32] and settings["windows"] == [3, 2]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--seq-len", "16,32", "--windows", "3,2,1"]) == 2
    assert "RecipeError" in capsys.readouterr().err and not (tmp_path / "bad").exists()
