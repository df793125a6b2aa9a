"""Perplexity equals a hand loop; the zero-shot scorer picks known answers; the eval CLI."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fxprune.calibration.engine import Engine
from fxprune.cli import main
from fxprune.data import ByteTokenizer
from fxprune.evaluation.perplexity import perplexity
from fxprune.evaluation.tasks import TASKS, MCItem, load_task
from fxprune.evaluation.zeroshot import encode_request, evaluate_items, loglikelihoods
from fxprune.errors import DataError
from fxprune.models.tiny import tiny_model


def test_perplexity_equals_hand_loop():
    model = tiny_model("llama")
    w = torch.randint(0, 128, (5, 20), generator=torch.Generator().manual_seed(0))
    res = perplexity(model, w, batch_size=2, progress=False)
    nll = 0.0
    with torch.no_grad():
        for row in w:
            logits = model(input_ids=row[None]).logits[0]
            nll += sum(-F.log_softmax(logits[t], -1)[row[t + 1]].item() for t in range(19))
    assert res.tokens == 5 * 19
    assert math.isclose(res.nll, nll, rel_tol=1e-6)
    assert math.isclose(res.ppl, math.exp(nll / 95), rel_tol=1e-6)
    # the same through the Lightning engine, and HF's own mean loss
    eng = Engine().perplexity(model, w, batch_size=5)
    assert math.isclose(eng.ppl, res.ppl, rel_tol=1e-9)
    with torch.no_grad():
        hf = torch.stack([model(input_ids=r[None], labels=r[None]).loss for r in w]).mean()
    assert math.isclose(res.ppl, math.exp(hf.item()), rel_tol=1e-5)


class Bigram(torch.nn.Module):
    """A toy LM: next-token log-probs depend only on the current byte, from a table we control."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, input_ids, attention_mask=None, **kw):
        return SimpleNamespace(logits=self.table[input_ids])


def _toy():
    t = torch.full((256, 256), -10.0)
    t[ord(" "), ord("b")] = 0.0   # after a space, "b" is likely
    t[ord("b"), ord("b")] = 0.0   # and "b" repeats
    t[ord(" "), ord("a")] = -1.0
    t[ord("a"), ord("a")] = -0.1  # "a" repeats almost surely
    return Bigram(t)


def test_loglikelihood_is_sum_of_continuation_logprobs():
    model, tok = _toy(), ByteTokenizer(256)
    (ll,) = loglikelihoods(model, tok, [("Q:", " bb")], progress=False)
    lp = F.log_softmax(model.table, -1)
    expected = lp[ord(":"), ord(" ")] + lp[ord(" "), ord("b")] + lp[ord("b"), ord("b")]
    assert math.isclose(ll, float(expected), rel_tol=1e-6)
    # trailing context spaces move to the continuation (lm-eval)
    assert encode_request(tok, "Q: ", "bb") == encode_request(tok, "Q:", " bb")


def test_acc_and_acc_norm_on_known_items():
    model, tok = _toy(), ByteTokenizer(256)
    # choice " b" beats " aaaaaa" on the total (fewer tokens) but " aaaaaa" wins per character.
    items = [MCItem((("Q:", " b"), ("Q:", " aaaaaa")), gold=0),
             MCItem((("Q:", " aaaaaa"), ("Q:", " b")), gold=0),
             MCItem((("Q:", " bb"), ("Q:", " z")), gold=0)]
    lls = loglikelihoods(model, tok, [r for it in items for r in it.requests], progress=False)
    assert lls[0] > lls[1] and lls[0] / 1 < lls[1] / 6  # acc_norm divides by len('b'), len('aaaaaa')
    res = evaluate_items(model, tok, items, progress=False)
    assert res.items == 3
    assert math.isclose(res.acc, 2 / 3) and math.isclose(res.acc_norm, 2 / 3)
    # batching by token budget does not change the scores
    lls1 = loglikelihoods(model, tok, [r for it in items for r in it.requests], max_batch_tokens=1,
                          progress=False)
    assert lls1 == pytest.approx(lls, rel=1e-6)


def test_padding_in_batches_does_not_change_tiny_model_scores():
    model, tok = tiny_model("llama"), ByteTokenizer(128)
    reqs = [("Question: why?\nAnswer:", " because"), ("Hi", " there you go"), ("a", " b")]
    batched = loglikelihoods(model, tok, reqs, progress=False)
    single = [loglikelihoods(model, tok, [r], progress=False)[0] for r in reqs]
    assert batched == pytest.approx(single, rel=1e-4)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_loads_with_lm_eval_formats(root, name):
    items, proto = load_task(name, limit=3)
    assert len(items) == 3 and proto["items"] == 3 and len(proto["sha256"]) == 64
    for it in items:
        assert 0 <= it.gold < len(it.requests)
        assert all(cont.startswith(" ") for _, cont in it.requests)
    if name in ("arc_easy", "arc_challenge", "piqa", "boolq"):
        assert items[0].requests[0][0].endswith("\nAnswer:")
    if name == "winogrande":
        assert len({c for c, _ in items[0].requests}) == 2 and len({k for _, k in items[0].requests}) == 1


def test_unknown_task_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="unknown task"):
        load_task("nope")
    with pytest.raises(DataError, match="arc_easy.jsonl"):
        load_task("arc_easy", root=str(tmp_path))


def test_eval_cli_json(root, capsys):
    rc = main(["eval", "tiny:llama", "--ppl", "wikitext2", "--seq-len", "32", "--windows", "3",
               "--tasks", "arc_easy,piqa", "--limit", "4", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"ppl", "tasks", "protocol", "average"}
    assert 1 < out["ppl"]["wikitext2"] < 1e4
    assert set(out["tasks"]) == {"arc_easy", "piqa"}
    for v in out["tasks"].values():
        assert set(v) == {"acc", "acc_norm", "seconds"} and 0 <= v["acc"] <= 1
    assert out["average"]["acc"] == pytest.approx(sum(v["acc"] for v in out["tasks"].values()) / 2)
    assert out["protocol"]["limit"] == 4 and out["protocol"]["full_sets"] is False
    assert out["protocol"]["data"]["piqa"]["items"] == 4
    p = out["protocol"]
    assert p["seq_len"] == 32 and p["data"]["wikitext2"]["windows"] == 3
    assert p["data"]["wikitext2"]["tokens"] == 96 and p["data"]["wikitext2"]["predicted_tokens"] == 93
    assert len(p["data"]["wikitext2"]["sha256"]) == 64 and "torch" in p["versions"]


def test_eval_cli_missing_data_is_an_error(tmp_path, capsys):
    rc = main(["eval", "tiny:llama", "--ppl", "wikitext2", "--data-root", str(tmp_path)])
    assert rc == 2
    assert "wiki.test.raw" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_shared_context_equals_separate_forwards(family):
    """Cached-context scoring (one context forward per item) gives the unshared log-likelihoods."""
    from fxprune.evaluation.zeroshot import supports_shared_context
    model = tiny_model(family).eval()
    tok = ByteTokenizer(model.config.vocab_size)
    assert supports_shared_context(model)
    reqs = [("Question: why?\nAnswer:", " because"), ("Question: why?\nAnswer:", " no"),
            ("Question: why?\nAnswer:", " it is what it is"), ("Hi", " there you go"), ("Hi", " x"),
            ("alone", " here")]
    shared = loglikelihoods(model, tok, reqs, progress=False, share_context=True, packing=False)
    separate = loglikelihoods(model, tok, reqs, progress=False, share_context=False)
    assert shared == pytest.approx(separate, abs=1e-4)
    assert not supports_shared_context(_toy())


_REQS = [("Question: why?\nAnswer:", " because"), ("Question: why?\nAnswer:", " no"),
         ("Question: why?\nAnswer:", " it is what it is"), ("Hi", " there you go"), ("Hi", " x"),
         ("a much longer context that has many more tokens than the others in it", " yes"),
         ("a much longer context that has many more tokens than the others in it", " no, not at all"),
         ("alone", " here")]


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "qwen2", "mistral"])
def test_packed_scoring_equals_separate_sequences(family):
    """One tree-masked row per item (context once, every choice after it, positions restarting after the
    context), several items per batch, gives each request's own log-likelihood; the per-model probe
    agrees, so the default path packs."""
    from fxprune.evaluation import zeroshot
    from fxprune.evaluation.packing import accepts_packing, packed_inputs
    model = tiny_model(family).eval()
    tok = ByteTokenizer(model.config.vocab_size)
    assert accepts_packing(model)
    separate = loglikelihoods(model, tok, _REQS, progress=False, share_context=False)
    packed = loglikelihoods(model, tok, _REQS, progress=False, packing=True, max_batch_tokens=64)
    assert packed == pytest.approx(separate, abs=1e-4)
    default = loglikelihoods(model, tok, _REQS, progress=False)
    assert zeroshot._PACKING_CHECKED[model] is True
    assert default == pytest.approx(separate, abs=1e-4)
    # the row layout: context once, then each continuation but its last token; positions restart
    ids, pos, mask, scored = packed_inputs([([5, 6, 7], [[8, 9], [10, 11, 12]])])
    assert ids[0].tolist() == [5, 6, 7, 8, 10, 11] and pos[0].tolist() == [0, 1, 2, 3, 3, 4]
    assert scored[0] == [[2, 3], [2, 4, 5]]
    assert not mask[0, 0, 4, 3] and mask[0, 0, 4, 2] and mask[0, 0, 5, 4]  # segments never see each other


class _IgnoresPositions(torch.nn.Module):
    """Takes ``position_ids`` but drops them (as models with positions derived otherwise would)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw)


def test_packing_probe_falls_back_when_positions_are_ignored():
    model = _IgnoresPositions(tiny_model("gpt2"))  # learned positions: wrong ones show
    tok = ByteTokenizer(128)
    separate = loglikelihoods(model, tok, _REQS, progress=False, share_context=False)
    forced = loglikelihoods(model, tok, _REQS, progress=False, share_context=True, packing=True)
    assert forced != pytest.approx(separate, abs=1e-3)  # packing this model really is wrong
    with pytest.warns(RuntimeWarning, match="packed shared-context scoring disagrees"):
        checked = loglikelihoods(model, tok, _REQS, progress=False, share_context=True)
    assert checked == pytest.approx(separate, abs=1e-4)


def test_packing_respects_the_sliding_window():
    """A group longer than the local attention span is not packed (the tree mask is global)."""
    from fxprune.evaluation.packing import attention_window
    model = tiny_model("mistral", sliding_window=12).eval()
    assert attention_window(model) == 12
    tok = ByteTokenizer(128)
    separate = loglikelihoods(model, tok, _REQS, progress=False, share_context=False, packing=False)
    packed = loglikelihoods(model, tok, _REQS, progress=False, packing=True)
    assert packed == pytest.approx(separate, abs=1e-4)


def test_tasks_all_is_the_seven():
    from fxprune.evaluation.suite import SEVEN, parse_tasks
    assert parse_tasks("all") == list(SEVEN) and len(SEVEN) == 7
    assert parse_tasks("piqa,all") == ["piqa"] + [t for t in SEVEN if t != "piqa"]
    with pytest.raises(DataError, match="unknown task"):
        parse_tasks("arc_easy,nope")
