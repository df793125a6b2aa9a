"""The one output writer (fxprune/output.py): what may be written, what is kept, what is left behind."""
import json
import os
import stat

import pytest

from fxprune import output
from fxprune.errors import OutputError, ResourceError
from fxprune.output import MANIFEST, check_output, checkpoint_dir, clean_stale, tensor_digests


def write(out, files, **kw):
    with checkpoint_dir(out, **kw) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return out


def tree(root):
    """{relative path: bytes} of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_new_directory_with_manifest_and_umask_modes(tmp_path):
    old = os.umask(0o022)
    try:
        out = write(tmp_path / "a" / "b" / "ckpt", {"config.json": "{}", "x.txt": "1"})
    finally:
        os.umask(old)
    m = json.loads((out / MANIFEST).read_text())
    assert set(m["files"]) == {"config.json", "x.txt"} and m["files"]["x.txt"]["bytes"] == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0700 (issue 14)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in out.iterdir())
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["ckpt"]


def test_group_writable_umask_is_honoured(tmp_path):
    old = os.umask(0o002)
    try:
        out = write(tmp_path / "team", {"config.json": "{}"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o775
    assert stat.S_IMODE((out / "config.json").stat().st_mode) == 0o664


def test_empty_directory_is_written(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty", {"config.json": "{}"})
    assert (tmp_path / "empty" / MANIFEST).is_file()


@pytest.mark.parametrize("overwrite", [False, True])
def test_users_folder_is_refused_and_untouched(tmp_path, overwrite):
    user = tmp_path / "models"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    (user / "sub" / "m.bin").write_bytes(b"\x00" * 10)
    before = tree(user)
    with pytest.raises(OutputError, match="not empty and not an fxprune checkpoint.*notes.txt"):
        write(user, {"config.json": "{}"}, overwrite=overwrite)
    assert tree(user) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_foreign_checkpoint_is_never_replaced(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "llama"}')
    (hf / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(OutputError, match="fxprune did not write"):
        write(hf, {"config.json": "{}"}, overwrite=True)
    assert (hf / "model.safetensors").read_bytes() == b"weights"


def test_file_as_output_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output(f)
    with pytest.raises(OutputError, match="is a file"):
        check_output(f / "sub")


def test_overwrite_keeps_files_fxprune_did_not_write(tmp_path):
    out = write(tmp_path / "ckpt", {"config.json": "1", "modeling_fxprune.py": "old"})
    (out / "notes.txt").write_text("mine")
    (out / "results").mkdir()
    (out / "results" / "r.csv").write_text("a,b")
    ino = (out / "notes.txt").stat().st_ino
    with pytest.raises(OutputError, match="--overwrite.*notes.txt"):
        write(out, {"config.json": "2"})
    write(out, {"config.json": "2"}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", MANIFEST, "notes.txt", "results"]
    assert (out / "config.json").read_text() == "2"  # modeling_fxprune.py (fxprune's, old) is gone
    assert (out / "notes.txt").read_text() == "mine" and (out / "notes.txt").stat().st_ino == ino
    assert (out / "results" / "r.csv").read_text() == "a,b"
    assert set(json.loads((out / MANIFEST).read_text())["files"]) == {"config.json"}  # notes stay the user's
    write(out, {"config.json": "3"}, overwrite=True)  # and are kept again next time
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_legacy_checkpoint_without_manifest(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for n in ("config.json", "model.safetensors", "fxprune_report.json", "tokenizer.json"):
        (old / n).write_text(n)
    (old / "notes.md").write_text("mine")
    write(old, {"config.json": "new"}, overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == ["config.json", MANIFEST, "notes.md"]


def test_carried_name_collision_is_refused(tmp_path):
    out = write(tmp_path / "c", {"config.json": "1"})
    (out / "extra.json").write_text("mine")
    with pytest.raises(OutputError, match="extra.json"):
        write(out, {"config.json": "2", "extra.json": "fxprune's"}, overwrite=True)
    assert (out / "extra.json").read_text() == "mine" and (out / "config.json").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_or_interrupt_leaves_old_checkpoint_and_no_temporaries(tmp_path, exc):
    out = write(tmp_path / "c", {"config.json": "1"})
    before = tree(out)
    with pytest.raises(type(exc)):
        with checkpoint_dir(out, overwrite=True) as t:
            (t / "config.json").write_text("2")
            raise exc
    assert tree(out) == before
    with pytest.raises(type(exc)):
        with checkpoint_dir(tmp_path / "new" / "deeper" / "c2") as t:
            raise exc
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # created parents removed too


def test_fallback_commit_without_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(output, "USE_EXCHANGE", False)
    out = write(tmp_path / "c", {"config.json": "1"})
    (out / "notes.txt").write_text("mine")
    write(out, {"config.json": "2"}, overwrite=True)
    assert (out / "config.json").read_text() == "2" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_stale_temporaries_are_cleaned_live_ones_kept(tmp_path):
    out = write(tmp_path / "c", {"config.json": "1"})
    stale = tmp_path / ".c.fxprune-tmp-0123abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_text("half")
    aside = tmp_path / ".d.fxprune-old-0123abcd"  # a killed fallback swap: its target d is missing
    aside.mkdir()
    (aside / "config.json").write_text("d")
    mine = tmp_path / ".notes.tmp-1"  # not fxprune's pattern: never touched
    mine.mkdir()
    with checkpoint_dir(out, overwrite=True) as live:  # starting a writer cleans up
        assert not stale.exists() and not aside.exists()
        assert clean_stale(tmp_path) == [] and live.is_dir()  # locked by this writer: kept
        (live / "config.json").write_text("2")
    assert (tmp_path / "d" / "config.json").read_text() == "d"  # restored, not deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp-1", "c", "d"]


def test_target_changed_while_working_is_not_replaced(tmp_path):
    out = tmp_path / "c"
    with pytest.raises(OutputError, match="changed while"):
        with checkpoint_dir(out) as t:
            (t / "config.json").write_text("new")
            out.mkdir()
            (out / "theirs.txt").write_text("x")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_disk_space_is_checked_up_front(tmp_path):
    with pytest.raises(ResourceError, match="free"):
        check_output(tmp_path / "c", need_bytes=1 << 60)
    assert list(tmp_path.iterdir()) == []


def test_atomic_file(tmp_path):
    f = tmp_path / "m.gguf"
    with output.atomic_file(f) as t:
        t.write_bytes(b"one")
    with pytest.raises(OutputError, match="--overwrite"):
        with output.atomic_file(f) as t:
            pass
    with pytest.raises(RuntimeError):
        with output.atomic_file(f, overwrite=True) as t:
            t.write_bytes(b"half")
            raise RuntimeError
    assert f.read_bytes() == b"one" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_tensor_digests_match_the_manifest(tmp_path):
    import torch
    from safetensors.torch import save_file
    with checkpoint_dir(tmp_path / "c") as t:
        save_file({"a": torch.arange(6.0), "b": torch.ones(2, 3, dtype=torch.bfloat16)}, str(t / "model.safetensors"))
    m = json.loads((tmp_path / "c" / MANIFEST).read_text())
    d = tensor_digests(tmp_path / "c")
    import hashlib
    assert d["a"] == hashlib.sha256(torch.arange(6.0).numpy().tobytes()).hexdigest()
    assert {k: v["sha256"] for k, v in m["tensors"].items()} == d
    assert m["tensors"]["b"]["shape"] == [2, 3] and m["tensors"]["b"]["dtype"] == "BF16"


def test_files_added_to_a_checkpoint_are_fxprunes_and_replaced_on_overwrite(tmp_path):
    out = write(tmp_path / "c", {"config.json": "1"})
    owned = output.OwnedDir(out)
    owned.write("report.md", "# report")
    (out / "notes.txt").write_text("mine")
    m = json.loads((out / MANIFEST).read_text())
    assert set(m["files"]) == {"config.json", "report.md"}
    with pytest.raises(OutputError, match="notes.txt.*not written by fxprune"):
        owned.write("notes.txt", "fxprune's")
    assert (out / "notes.txt").read_text() == "mine"
    write(out, {"config.json": "2"}, overwrite=True)  # the report was fxprune's: not carried over
    assert sorted(p.name for p in out.iterdir()) == ["config.json", MANIFEST, "notes.txt"]
    with pytest.raises(RuntimeError):
        with output.OwnedDir(out).file("report.md") as t:
            t.write_text("half")
            raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == ["config.json", MANIFEST, "notes.txt"]


def test_owned_directories_refuse_a_users_folder(tmp_path):
    user = tmp_path / "results"
    user.mkdir()
    (user / "results.csv").write_text("mine")
    with pytest.raises(OutputError, match="not written by fxprune"):
        output.OwnedDir(user, kind="sweep", create=True)
    sweep = output.OwnedDir(tmp_path / "sweep", kind="sweep", create=True)
    sweep.append("results.jsonl", '{"a": 1}\n')
    sweep.append("results.jsonl", '{"a": 2}\n')
    assert (tmp_path / "sweep" / "results.jsonl").read_text().count("\n") == 2
    with pytest.raises(OutputError, match="sweep directory, not a checkpoint"):
        output.OwnedDir(tmp_path / "sweep")
    assert (user / "results.csv").read_text() == "mine"


def test_sweep_into_a_users_folder_is_refused_before_any_work(tmp_path, capsys):
    from fxprune.cli import main
    user = tmp_path / "mine"
    user.mkdir()
    (user / "results.csv").write_text("mine")
    rc = main(["sweep", "tiny:llama", "--recipes", "magnitude-structured-20", "--targets", "0.2",
               "--out", str(user)])
    assert rc == 2 and "OutputError" in capsys.readouterr().err
    assert [p.name for p in user.iterdir()] == ["results.csv"]


def test_signals_are_deferred_whichever_thread_the_os_delivers_them_to():
    import signal
    import threading
    import time
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)  # another thread that may receive the signal
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            with output.deferred_signals():
                with output.deferred_signals():  # nested: passed outwards
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.2)
                reached = True  # not interrupted inside the block
        assert reached
    finally:
        stop.set()
        t.join()
