import json
import shutil

import pytest
import torch

from fxprune.data import (ByteTokenizer, CalibrationConfig, calibration_windows, check_disjoint, data_root,
                          evaluation_windows, read_documents, resolve, tokenize, wikitext_hf_text)
from fxprune.errors import DataError
from fxprune.models.tiny import tiny_model

TOK = ByteTokenizer(256)


def test_c4_windows_are_seeded_slices_of_documents(root):
    cfg = CalibrationConfig("c4", n_samples=6, seq_len=32, seed=1)
    a = calibration_windows(TOK, cfg)
    b = calibration_windows(TOK, cfg)
    c = calibration_windows(TOK, CalibrationConfig("c4", n_samples=6, seq_len=32, seed=2))
    assert a.ids.shape == (6, 32) and a.ids.dtype == torch.long
    assert torch.equal(a.ids, b.ids) and not torch.equal(a.ids, c.ids)
    docs = [d.encode() for d in read_documents(resolve("c4"))]
    for w in a.ids:
        assert any(bytes(w.tolist()) in d for d in docs)
    assert a.sha256 and a.protocol()["tokens"] == 6 * 32


def test_text_file_source(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("abcdefghij" * 20)
    w = calibration_windows(TOK, CalibrationConfig(str(f), n_samples=3, seq_len=10, seed=0))
    assert w.ids.shape == (3, 10)
    assert all(bytes(x.tolist()).decode() in "abcdefghij" * 20 for x in w.ids)


@pytest.mark.parametrize("family", ["llama", "gpt2", "mamba"])
def test_generated_windows_start_at_bos(family):
    model = tiny_model(family)
    tok = ByteTokenizer(128, bos_token_id=1)
    w = calibration_windows(tok, CalibrationConfig("generated", n_samples=2, seq_len=6, seed=0), model=model)
    assert w.ids.shape == (2, 6) and (w.ids[:, 0] == 1).all()
    w2 = calibration_windows(tok, CalibrationConfig("generated", n_samples=2, seq_len=6, seed=0), model=model)
    assert torch.equal(w.ids, w2.ids)
    assert len(set(w.ids[:, 1:].reshape(-1).tolist())) > 3  # sampled, not constant


def test_hf_source_without_datasets_is_a_data_error():
    try:
        import datasets  # noqa: F401
        pytest.skip("datasets installed")
    except ImportError:
        pass
    with pytest.raises(DataError, match="datasets"):
        calibration_windows(TOK, CalibrationConfig("hf:wikitext", n_samples=1, seq_len=4))


def test_wikitext_rows_joined_like_hf(root):
    text = wikitext_hf_text(resolve("wikitext2"))
    assert text.startswith("\n\n = Robert Boulter = \n\n\n")
    assert "\n\n\n\n\n" not in text[:10]


def test_evaluation_windows_are_non_overlapping_prefix(root):
    w = evaluation_windows(TOK, "wikitext2", seq_len=50, max_windows=4)
    ids = tokenize(TOK, wikitext_hf_text(resolve("wikitext2")))
    assert w.ids.shape == (4, 50)
    assert w.ids.reshape(-1).tolist() == ids[:200]
    full = evaluation_windows(TOK, "wikitext2", seq_len=1000)
    assert full.ids.shape[0] == len(ids) // 1000 and w.total_tokens == len(ids)


def test_same_file_for_calibration_and_evaluation_is_refused(root, tmp_path):
    wt = resolve("wikitext2")
    with pytest.raises(DataError, match="same file"):
        calibration_windows(TOK, CalibrationConfig(str(wt), n_samples=1, seq_len=8), evaluation_files=[wt])
    copy = tmp_path / "copy.raw"
    shutil.copy(wt, copy)
    with pytest.raises(DataError, match="same file"):
        check_disjoint(copy, [wt])
    check_disjoint(resolve("c4"), [wt])  # different data: fine
    with pytest.raises(DataError, match="same file"):  # the known test splits are refused by default
        calibration_windows(TOK, CalibrationConfig("wikitext2", n_samples=1, seq_len=8))
    with pytest.raises(DataError, match="same file"):
        calibration_windows(TOK, CalibrationConfig(str(copy), n_samples=1, seq_len=8))


def test_missing_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FXPRUNE_DATA", str(tmp_path))
    assert data_root() == tmp_path
    with pytest.raises(DataError, match="wiki.test.raw"):
        evaluation_windows(TOK, "wikitext2", 16)
    with pytest.raises(DataError, match="nope.txt"):
        calibration_windows(TOK, CalibrationConfig(str(tmp_path / "nope.txt"), 1, 8))


def test_malformed_jsonl_names_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(DataError, match="line 2"):
        read_documents(f)


def test_any_text_file_as_evaluation_set(tmp_path):
    f = tmp_path / "eval.txt"
    f.write_text("hello world " * 10)  # 120 bytes
    w = evaluation_windows(TOK, str(f), seq_len=25)
    assert w.ids.shape == (4, 25) and bytes(w.ids.reshape(-1).tolist()) == ("hello world " * 10).encode()[:100]
    with pytest.raises(DataError, match="fewer than one window"):
        evaluation_windows(TOK, str(f), seq_len=500)


def _copies(wt, tmp_path):
    """Copies of the WikiText-2 test text that are not the same file (issue 14, item 9)."""
    text = wt.read_text(encoding="utf-8")
    c = {}
    c["renamed.txt"] = text.encode("utf-8") + b"\n"  # different bytes: a trailing newline
    c["utf16.txt"] = text.encode("utf-16")
    c["bom_crlf.txt"] = b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8")
    c["upper.txt"] = text.upper().encode("utf-8")
    c["contains.txt"] = ("My own notes. " * 50 + text + "More of my notes. " * 50).encode("utf-8")
    c["part.txt"] = text[len(text) // 3: len(text) // 3 + 20000].encode("utf-8")  # ~1.5% of the test set
    c["wrapped.jsonl"] = (json.dumps({"text": text[:50000]}) + "\n" + json.dumps({"text": text[50000:]}) + "\n").encode()
    paths = []
    for name, data in c.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    return paths


def test_renamed_reencoded_wrapped_or_partial_copies_of_test_text_are_refused(root, tmp_path):
    wt = resolve("wikitext2")
    for p in _copies(wt, tmp_path):
        with pytest.raises(DataError, match="contains evaluation text"):
            calibration_windows(TOK, CalibrationConfig(str(p), n_samples=2, seq_len=64, seed=1))


def test_disjoint_training_data_passes_the_content_check(root):
    from fxprune.disjoint import overlaps
    from fxprune.data import EVALUATION_FILES, read_documents
    o = overlaps(read_documents(resolve("c4")), [root / f for f in EVALUATION_FILES])
    assert [x.shared for x in o] == [0, 0] and o[0].eval_grams > 200_000
    w = calibration_windows(TOK, CalibrationConfig("c4", n_samples=4, seq_len=64))
    assert w.ids.shape == (4, 64)


def test_undecodable_calibration_file_is_a_data_error(tmp_path):
    p = tmp_path / "bin.txt"
    p.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(DataError, match="bin.txt.*not utf-8"):
        calibration_windows(TOK, CalibrationConfig(str(p), n_samples=1, seq_len=8))


def test_negative_window_count_is_a_data_error(root):
    with pytest.raises(DataError, match="at least one window"):
        evaluation_windows(TOK, "wikitext2", 64, max_windows=-1)


# ------------------------------------------------------------------ BOS-first windows (issue 13)
BOS_TOK = ByteTokenizer(256, bos_token_id=1)


def test_bos_prefix_is_asked_of_the_tokenizer():
    from fxprune.data import bos_prefix
    assert bos_prefix(BOS_TOK) == 1
    assert bos_prefix(TOK) is None  # adds nothing (like SmolLM2's tokenizer): windows stay as cut


def test_bos_first_evaluation_windows_predict_every_text_token_once(root):
    w = evaluation_windows(BOS_TOK, "wikitext2", seq_len=50, max_windows=4)
    text = tokenize(BOS_TOK, wikitext_hf_text(resolve("wikitext2")), add_special_tokens=False)
    assert w.ids.shape == (4, 50) and (w.ids[:, 0] == 1).all()
    assert w.ids[:, 1:].reshape(-1).tolist() == text[:4 * 49]  # chunks of L-1, no text token skipped
    assert w.protocol()["bos_first"] and w.protocol()["bos_token"] == 1
    off = evaluation_windows(BOS_TOK, "wikitext2", seq_len=50, max_windows=4, bos=False)
    assert not off.protocol()["bos_first"]
    assert off.ids.reshape(-1).tolist() == [1] + text[:199]  # as cut: one BOS before the whole stream
    plain = evaluation_windows(TOK, "wikitext2", seq_len=50, max_windows=4)
    assert not plain.protocol()["bos_first"] and plain.ids.reshape(-1).tolist() == text[:200]
    with pytest.raises(DataError, match="bos_token_id"):  # forced, but the tokenizer has no BOS
        evaluation_windows(TOK, "wikitext2", seq_len=50, max_windows=2, bos=True)


def test_bos_first_calibration_windows(root):
    cfg = CalibrationConfig("c4", n_samples=5, seq_len=32, seed=3)
    w = calibration_windows(BOS_TOK, cfg)
    assert w.ids.shape == (5, 32) and (w.ids[:, 0] == 1).all() and w.protocol()["bos_first"]
    docs = [d.encode() for d in read_documents(resolve("c4"))]
    for row in w.ids:
        assert any(bytes(row[1:].tolist()) in d for d in docs)  # BOS, then 31 tokens of one document
    plain = calibration_windows(BOS_TOK, CalibrationConfig("c4", n_samples=5, seq_len=32, seed=3, bos=False))
    assert not plain.protocol()["bos_first"] and not (plain.ids[:, 0] == 1).all()
    assert torch.equal(calibration_windows(TOK, cfg).ids, calibration_windows(TOK, cfg).ids)
