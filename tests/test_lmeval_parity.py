"""The own zero-shot scorer equals lm-eval-harness item by item.

Same items (the local files), lm-eval's official task templates (only the data source replaced),
a tiny random LLaMA and a real byte-level BPE tokenizer trained here: the prompts lm-eval builds are
the own scorer's requests string for string, every log-likelihood agrees to 1e-4 and acc / acc_norm
are equal. Needs the optional extra ``lmeval`` (scripts/setup.sh installs it; skipped without it).
"""
import pytest
import torch

from fxprune.evaluation.tasks import TASKS, load_task
from fxprune.evaluation.zeroshot import loglikelihoods, score_items

lm_eval = pytest.importorskip("lm_eval")

N_ITEMS = 4


@pytest.fixture(scope="module")
def bpe_tokenizer(root):
    """A byte-level BPE (GPT-2 style, like SmolLM2's) trained on the first items of every task."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    texts = []
    for name in TASKS:
        for it in load_task(name, limit=20)[0]:
            texts += [c + k for c, k in it.requests]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tiny_lm(bpe_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(bpe_tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger logits than the default init, so the choices are far from ties
        model.lm_head.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def lm_eval_results(tiny_lm, bpe_tokenizer, root):
    from fxprune.evaluation.lmeval import evaluate_lm_eval
    return evaluate_lm_eval(tiny_lm, bpe_tokenizer, sorted(TASKS), limit=N_ITEMS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_own_scorer_equals_lm_eval(name, tiny_lm, bpe_tokenizer, lm_eval_results):
    ref = lm_eval_results[name]
    items, _ = load_task(name, limit=N_ITEMS)
    requests = [r for it in items for r in it.requests]
    assert ref["items"] == len(items) == N_ITEMS
    assert ref["requests"] == requests            # lm-eval's official templates build the same prompts
    for share in (True, False):
        own = loglikelihoods(tiny_lm, bpe_tokenizer, requests, progress=False, share_context=share)
        assert own == pytest.approx(ref["loglikelihoods"], abs=1e-4)
        res = score_items(items, own)
        assert res.acc == pytest.approx(ref["acc"], abs=1e-12)
        assert res.acc_norm == pytest.approx(ref["acc_norm"], abs=1e-12)
    # the log-likelihoods separate the choices (else acc equality would say little)
    assert min(abs(a - b) for a, b in zip(own[::2], own[1::2])) > 1e-3


def test_lm_eval_refuses_stand_in_tokenizer():
    from fxprune.data import ByteTokenizer
    from fxprune.errors import DataError
    from fxprune.evaluation.lmeval import evaluate_lm_eval
    from fxprune.models.tiny import tiny_model
    with pytest.raises(DataError, match="Hugging Face tokenizer"):
        evaluate_lm_eval(tiny_model("llama"), ByteTokenizer(128), ["piqa"], limit=1)


def test_suite_with_either_scorer_agrees(tiny_lm, bpe_tokenizer, root, capsys):
    from fxprune.cli import main
    from fxprune.evaluation.suite import evaluate_suite
    own = evaluate_suite(tiny_lm, bpe_tokenizer, ["piqa", "winogrande"], limit=3)
    ref = evaluate_suite(tiny_lm, bpe_tokenizer, ["piqa", "winogrande"], limit=3, scorer="lm-eval")
    for t in ("piqa", "winogrande"):
        assert own["tasks"][t]["acc"] == ref["tasks"][t]["acc"] and own["tasks"][t]["items"] == 3
        assert own["tasks"][t]["acc_norm"] == ref["tasks"][t]["acc_norm"]
    assert own["average"] == ref["average"] and ref["scorer"] == "lm-eval" and ref["limit"] == 3
    # the CLI names the problem when lm-eval cannot run (tiny models have a stand-in tokenizer)
    assert main(["eval", "tiny:llama", "--tasks", "piqa", "--limit", "1", "--scorer", "lm-eval"]) == 2
    assert "Hugging Face tokenizer" in capsys.readouterr().err


def test_lm_head_on_scored_positions_only_changes_nothing(tiny_lm, bpe_tokenizer, monkeypatch):
    """The LM head run on the scored positions alone (``logits_to_keep``) gives the log-likelihoods of
    the full-logits path (which lm-eval's own parity above also pins)."""
    import fxprune.evaluation.perplexity as P
    import fxprune.evaluation.zeroshot as Z
    items, _ = load_task("hellaswag", limit=N_ITEMS)
    items += load_task("arc_easy", limit=N_ITEMS)[0]
    requests = [r for it in items for r in it.requests]
    assert Z.keeps_logits(tiny_lm)
    fast = [loglikelihoods(tiny_lm, bpe_tokenizer, requests, progress=False, share_context=s) for s in (True, False)]
    for mod in (Z, P):
        monkeypatch.setattr(mod, "keeps_logits", lambda model: False)
    full = [loglikelihoods(tiny_lm, bpe_tokenizer, requests, progress=False, share_context=s) for s in (True, False)]
    for a, b in zip(fast, full):
        assert a == pytest.approx(b, abs=1e-5)
        assert len(set(a)) == len(a)  # distinct values: the comparison is not between constants
