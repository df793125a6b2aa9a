"""The README's Python snippets run as written, so they cannot drift from the API.

The snippets name the real SmolLM2; here they run on ``tiny:llama`` (the same calls on a model small
enough for the default suite) and write under a temporary directory instead of ``out/``.
"""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _snippets():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_snippets():
    assert len(_snippets()) >= 2


@pytest.mark.parametrize("i", range(2))
def test_readme_snippet_runs(i, tmp_path, monkeypatch, root):
    code = _snippets()[i].replace('"smollm2"', '"tiny:llama"').replace('"out/', f'"{tmp_path}/')
    if i == 1:  # the lower-level snippet prunes groups of SmolLM2's layer 3: use tiny:llama's layer 1
        code = code.replace("model.layers.3.mlp\": list(range(768))", "model.layers.1.mlp\": list(range(64))")
        code = code.replace("model.layers.3.self_attn:q_per_kv\": [0, 2]", "model.layers.1.self_attn:q_per_kv\": [1]")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README snippet {i}", "exec"), {})
