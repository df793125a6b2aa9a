"""Tutorials are executed on tiny models so they cannot rot."""
import importlib.util
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).parent.parent / "tutorials").glob("[0-9]*.py"))


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(path, capsys):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main([])
    text = capsys.readouterr().out
    if "save" in path.read_text():
        assert "reload reproduces outputs: True" in text
    assert "parameters" in text
