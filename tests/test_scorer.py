"""`mergeqa.evaluate.scorer` gives lm-eval HFLM's answers: fp32 log-likelihoods within 1e-4, same is_greedy.

Random-weight tiny Llama (tokenizer adds BOS) and Qwen2 (no BOS, tied embeddings) on CPU; the
requests are built to hit what prefix sharing could get wrong. About 20 s on 2 cores, most of it
importing lm-eval and the end-to-end `simple_evaluate`; torch and lm-eval are imported by the
tests, not at collection. The `gpu` test repeats the comparison on CUDA where one is present.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.evaluate import synthetic_mc as smc

MAX_LENGTH = 48


def make_lm(*args, **kwargs):
    from mergeqa.evaluate.scorer import make_lm

    return make_lm(*args, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    torch = pytest.importorskip("torch")
    pytest.importorskip("lm_eval")
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models gain nothing from threads; leave cores to others
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_lm(request):
    """(model, tokenizer): tiny Llama with a BOS-adding tokenizer, tiny Qwen2 without BOS."""
    if request.param == "llama":
        tok = smc.train_tokenizer(add_bos=True)
        return smc.build_model("tiny-llama", len(tok), seed=1, init_std=0.2), tok
    tok = smc.train_tokenizer(add_bos=False)
    return smc.build_model("tiny-qwen2", len(tok), seed=2, init_std=0.2), tok


def assert_same_answers(expected, obtained, tol=1e-4):
    assert len(expected) == len(obtained)
    bad = [
        (i, e, o)
        for i, (e, o) in enumerate(zip(expected, obtained, strict=True))
        if abs(e[0] - o[0]) > tol or e[1] != o[1]
    ]
    assert not bad, f"{len(bad)} of {len(expected)} requests differ from HFLM (index, hf, mergeqa): {bad[:5]}"


def greedy_tokens(model, context: list[int], n: int) -> list[int]:
    import torch

    ids = list(context)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids], device=model.device)).logits[0, -1].argmax()))
    return ids[len(context) :]


def tricky_token_requests(model, vocab: int) -> list:
    """Token-level requests: sharing, duplicates, greedy ones, truncation at and past max_length."""
    rng = random.Random(0)

    def toks(n):
        return [rng.randrange(3, vocab) for _ in range(n)]

    reqs = []
    shared = toks(20)
    g = greedy_tokens(model, shared, 3)
    conts = [toks(1), toks(2), toks(5), g, g[:1], g[:2] + toks(1), toks(2), g]  # g twice: duplicate
    reqs += [(None, shared, c) for c in conts]
    for n_ctx in range(1, 25, 2):  # many small groups, so batches end in the middle of them
        ctx = toks(n_ctx)
        reqs += [(None, ctx, toks(rng.randint(1, 6))) for _ in range(rng.randint(1, 4))]
    reqs += [(None, toks(1), toks(10))]  # one-token context (lm-eval's empty-context form)
    long_ctx = toks(70)  # truncated: each continuation length gives a different window
    reqs += [(None, long_ctx, c) for c in (toks(1), toks(3), toks(7), greedy_tokens(model, long_ctx[-40:], 2))]
    reqs += [(None, toks(MAX_LENGTH - 1), toks(2)), (None, toks(MAX_LENGTH), toks(2))]  # at / one past the limit
    reqs += [(None, toks(5), toks(MAX_LENGTH))]  # continuation as long as max_length
    rng.shuffle(reqs)
    return reqs


@pytest.mark.parametrize(
    "scorer_kwargs",
    [{"batch_size": 3}, {"batch_size": 64}, {"batch_size": 64, "max_batch_tokens": 150}, {"batch_size": "auto"}],
    ids=["bs3", "bs64", "token-capped", "auto"],
)
def test_token_requests_match_hflm(tiny_lm, scorer_kwargs):
    model, tok = tiny_lm
    reqs = tricky_token_requests(model, len(tok))
    hf = make_lm(model, tok, backend="hf", batch_size=5, max_length=MAX_LENGTH)
    mq = make_lm(model, tok, max_length=MAX_LENGTH, **scorer_kwargs)
    expected = hf._loglikelihood_tokens(reqs, disable_tqdm=True)
    obtained = mq._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert_same_answers(expected, obtained)
    assert any(greedy for _, greedy in expected), "the greedy requests should be greedy"


def test_cuda_width_alignment_gives_the_same_answers(tiny_lm, monkeypatch):
    """On CUDA rows are padded to a multiple of 8 columns; check that padding on CPU too."""
    from mergeqa.evaluate import scorer

    build = scorer._Layout.build.__func__
    monkeypatch.setattr(scorer._Layout, "build", classmethod(lambda cls, *a, align=1: build(cls, *a, align=8)))
    model, tok = tiny_lm
    reqs = tricky_token_requests(model, len(tok))
    hf = make_lm(model, tok, backend="hf", batch_size=5, max_length=MAX_LENGTH)
    mq = make_lm(model, tok, batch_size=7, max_length=MAX_LENGTH)
    assert_same_answers(hf._loglikelihood_tokens(reqs, disable_tqdm=True), mq._loglikelihood_tokens(reqs, disable_tqdm=True))


def test_sharing_runs_each_prefix_once(tiny_lm):
    model, tok = tiny_lm
    mq = make_lm(model, tok, max_length=MAX_LENGTH)
    reqs = tricky_token_requests(model, len(tok))
    plan = mq._plan(reqs)
    prefixes = {tuple((c + x)[-(MAX_LENGTH + 1) :][:-1][: -(len(x) - 1) or None]) for _, c, x in reqs}
    assert sorted(len(r.prefix) for r in plan.rows) == sorted(map(len, prefixes)), "one row per distinct prefix"
    assert plan.truncated == 6  # the four long-context ones, one past the limit, the max_length continuation
    assert all(len(r.prefix) + r.tail <= MAX_LENGTH for r in plan.rows)
    assert mq._can_keep_logits, "the vocabulary projection should run on the scored columns only"


def _string_requests(tok):
    items = smc.make_items(6, n_shots=2, question_words=6, seed=3)
    pairs = [(item.context, choice) for item in items for choice in item.choices]
    pairs += [
        ("", " kari tona"),  # empty context: BOS/EOS prefix
        ("", "Question"),
        ("Question: kari? Answer: ", "tona"),  # trailing space moves to the continuation
        ("Question: kari? Answer:", " tona mise"),
    ]
    if tok.bos_token:
        pairs += [(tok.bos_token + "Question: kari? Answer:", " tona")]  # BOS already in the text
    return smc.make_requests([smc.MCItem(c, (x,), 0) for c, x in pairs])


def test_string_requests_tokenise_and_score_like_hflm(tiny_lm):
    model, tok = tiny_lm
    requests = _string_requests(tok)
    hf = make_lm(model, tok, backend="hf", batch_size=4)
    mq = make_lm(model, tok, batch_size=4)
    captured = []
    spy = make_lm(model, tok, backend="hf")
    spy._loglikelihood_tokens = lambda reqs, **_: captured.extend(reqs) or [(0.0, False)] * len(reqs)
    spy.loglikelihood(requests, disable_tqdm=True)
    assert mq.encode_requests([r.args for r in requests]) == captured
    assert_same_answers(hf.loglikelihood(requests, disable_tqdm=True), mq.loglikelihood(requests, disable_tqdm=True))


def test_answers_do_not_depend_on_tokenizer_padding_side(tiny_lm):
    model, tok = tiny_lm
    requests = _string_requests(tok)
    answers, original = {}, tok.padding_side
    for side in ("left", "right"):
        tok.padding_side = side
        answers[side] = make_lm(model, tok, batch_size=2).loglikelihood(requests, disable_tqdm=True)
    tok.padding_side = original
    assert_same_answers(answers["left"], answers["right"], tol=1e-5)


def test_rolling_loglikelihood_matches_hflm(tiny_lm):
    model, tok = tiny_lm
    from lm_eval.api.instance import Instance

    items = smc.make_items(3, n_shots=1, question_words=8, seed=4)  # ~60 tokens: several windows
    requests = [Instance("loglikelihood_rolling", {}, (item.context,), i) for i, item in enumerate(items)]
    hf = make_lm(model, tok, backend="hf", batch_size=4, max_length=MAX_LENGTH)
    mq = make_lm(model, tok, batch_size=4, max_length=MAX_LENGTH)
    expected = hf.loglikelihood_rolling(requests, disable_tqdm=True)
    obtained = mq.loglikelihood_rolling(requests, disable_tqdm=True)
    assert obtained == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("variant", ["eager", "sliding-window"])
def test_other_attention_setups_match_hflm(variant):
    tok = smc.train_tokenizer(add_bos=False)
    if variant == "eager":  # additive float mask instead of a boolean one
        model = smc.build_model("tiny-llama", len(tok), seed=5, init_std=0.2, attn_implementation="eager")
    else:  # requests wider than the window go through HFLM's path
        model = smc.build_model(
            "tiny-qwen2", len(tok), seed=5, init_std=0.2,
            use_sliding_window=True, sliding_window=16, max_window_layers=0,
        )
    reqs = tricky_token_requests(model, len(tok))
    hf = make_lm(model, tok, backend="hf", batch_size=5, max_length=MAX_LENGTH)
    mq = make_lm(model, tok, batch_size=4, max_length=MAX_LENGTH)
    assert_same_answers(hf._loglikelihood_tokens(reqs, disable_tqdm=True), mq._loglikelihood_tokens(reqs, disable_tqdm=True))
    if variant == "sliding-window":
        assert 0 < len(mq._plan(reqs).delegated) < len(reqs)


def bf16_agreement(model, tok, items) -> dict[str, int]:
    """Items whose bf16 answer equals HFLM's fp32 answer, per backend (the model ends in bf16)."""
    import torch

    requests = smc.make_requests(items)
    fp32 = make_lm(model, tok, backend="hf", batch_size=16).loglikelihood(requests, disable_tqdm=True)
    truth = smc.item_answers(fp32, items)
    model.to(torch.bfloat16)
    agree = {}
    for backend in ("hf", "mergeqa-hf"):
        scores = make_lm(model, tok, backend=backend, batch_size=16).loglikelihood(requests, disable_tqdm=True)
        agree[backend] = sum(a == t for a, t in zip(smc.item_answers(scores, items), truth, strict=True))
    return agree


def test_bf16_agrees_with_fp32_at_least_as_often_as_hflm():
    tok = smc.train_tokenizer(add_bos=True)
    model = smc.build_model("tiny-llama", len(tok), seed=6)
    items = smc.make_items(40, n_shots=2, question_words=8, seed=6)
    agree = bf16_agreement(model, tok, items)
    assert agree["mergeqa-hf"] >= agree["hf"], f"items agreeing with fp32 answers, of {len(items)}: {agree}"


@pytest.mark.gpu
def test_on_cuda_fp32_matches_and_bf16_agrees():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    tok = smc.train_tokenizer(add_bos=False)
    model = smc.build_model("small-llama", len(tok), seed=8, init_std=0.2).to("cuda")
    reqs = tricky_token_requests(model, len(tok))
    hf = make_lm(model, tok, backend="hf", batch_size=5, max_length=MAX_LENGTH)
    mq = make_lm(model, tok, batch_size=4, max_length=MAX_LENGTH)
    assert_same_answers(hf._loglikelihood_tokens(reqs, disable_tqdm=True), mq._loglikelihood_tokens(reqs, disable_tqdm=True))
    items = smc.make_items(200, question_words=10, seed=8)
    agree = bf16_agreement(smc.build_model("small-llama", len(tok), seed=8).to("cuda"), tok, items)
    assert agree["mergeqa-hf"] >= agree["hf"], f"items agreeing with fp32 answers, of {len(items)}: {agree}"


TASK_YAML = """\
task: mergeqa_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def test_simple_evaluate_gives_the_same_accuracy(tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from mergeqa.evaluate.scorer import register

    tok = smc.train_tokenizer(add_bos=True)
    model = smc.build_model("tiny-llama", len(tok), seed=7, init_std=0.2)
    items = smc.make_items(24, n_shots=2, question_words=6, seed=7)
    data = tmp_path / "items.jsonl"
    data.write_text(
        "".join(json.dumps({"context": i.context, "choices": [c.strip() for c in i.choices], "gold": i.gold}) + "\n" for i in items)
    )
    (tmp_path / "task.yaml").write_text(TASK_YAML.format(data=data, cache=tmp_path / "hf-cache"))
    register()
    tasks = {"tasks": ["mergeqa_tiny_mc"], "bootstrap_iters": 0, "log_samples": True}
    results = {
        "hf": simple_evaluate(
            model=make_lm(model, tok, backend="hf", batch_size=8),
            task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
            **tasks,
        ),
        "mergeqa-hf": simple_evaluate(
            model="mergeqa-hf",
            model_args={"pretrained": model, "tokenizer": tok},
            batch_size=8,
            task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
            **tasks,
        ),
    }
    accs = {name: out["results"]["mergeqa_tiny_mc"]["acc,none"] for name, out in results.items()}
    assert accs["hf"] == accs["mergeqa-hf"]
    lls = {
        name: [resp[0][0] for s in out["samples"]["mergeqa_tiny_mc"] for resp in s["resps"]]
        for name, out in results.items()
    }
    assert len(lls["hf"]) == 4 * len(items)
    assert lls["mergeqa-hf"] == pytest.approx(lls["hf"], abs=1e-4)


def test_register_is_explicit_and_idempotent():
    """No registration at import (checked statically: a subprocess would re-import lm-eval)."""
    import ast

    from lm_eval.api.registry import get_model

    import mergeqa.evaluate.scorer
    from mergeqa.evaluate.scorer import MergeQAHFLM, register

    tree = ast.parse(Path(mergeqa.evaluate.scorer.__file__).read_text())
    top_level_calls = [
        node.func
        for stmt in tree.body
        if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef))
        for node in ast.walk(stmt)
        if isinstance(node, ast.Call)
    ]
    decorators = [d for stmt in tree.body if isinstance(stmt, ast.ClassDef) for d in stmt.decorator_list]
    registering = [ast.unparse(n) for n in top_level_calls + decorators if "regist" in ast.unparse(n)]
    assert not registering, f"mergeqa.evaluate.scorer registers at import: {registering}"
    assert register() is register() is MergeQAHFLM
    assert get_model("mergeqa-hf") is MergeQAHFLM


def test_make_lm_names_the_valid_backends(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(MergeQAUsageError, match="Did you mean 'mergeqa-hf'.*Available: hf, mergeqa-hf"):
        make_lm(model, tok, backend="mergeqa_hf")


def test_attention_without_custom_masks_is_a_usage_error_naming_the_fix():
    tok = smc.train_tokenizer(add_bos=False)
    model = smc.build_model("tiny-llama", len(tok))
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(MergeQAUsageError, match="attn_implementation='sdpa', or use backend='hf'"):
        make_lm(model, tok)
