"""The plugin's command-line options: one group, "mergeqa", every option with its default."""

from __future__ import annotations

import pytest

from mergeqa.core.cache import default_cache_dir


class HypothesisProfiles:
    """`pytest --hypothesis-profile=mergeqa-thorough` works with no conftest: the operator kit's
    profiles are registered before hypothesis's own pytest plugin loads the named one."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        profile = config.getoption("hypothesis_profile", None)
        if isinstance(profile, str) and profile.startswith("mergeqa-"):
            from mergeqa.core.errors import did_you_mean
            from mergeqa.operators import PROFILES, register_profiles

            if profile not in PROFILES:  # one line, not hypothesis's INTERNALERROR traceback
                raise pytest.UsageError(f"--hypothesis-profile={profile}: no such mergeqa profile."
                                        + did_you_mean(profile, PROFILES))
            register_profiles(load=None)  # hypothesis loads it next


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.register(HypothesisProfiles(), "mergeqa-hypothesis-profiles")
    group = parser.getgroup("mergeqa", "mergeqa: quality gate for merged checkpoints")
    group.addoption("--model", nargs="+", action="extend", metavar="PATH", default=[],
                    help="merged checkpoint directories under test (default: the embedded family's merges)")
    group.addoption("--parents", nargs="+", action="extend", metavar="PATH", default=None,
                    help="parent checkpoint directories (default: from --merge-config, else the embedded family)")
    group.addoption("--base", metavar="PATH", default=None,
                    help="base checkpoint the parents were fine-tuned from (default: from --merge-config's base_model)")
    group.addoption("--merge-config", nargs="+", action="extend", metavar="YAML", default=[],
                    help="mergekit YAML configs to build with mergekit and test (default: none)")
    group.addoption("--thresholds", metavar="PATH", default=None,
                    help="thresholds TOML (default: ./thresholds.toml if present, else built-in defaults)")
    group.addoption("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where models run and merges are built (default: auto)")
    group.addoption("--dtype", choices=("float32", "bfloat16", "float16", "auto"), default="float32",
                    help="dtype models are loaded in for evaluation (default: float32)")
    group.addoption("--mergeqa-cache", metavar="DIR", default=None,
                    help=f"cache for the family, merges and results (default: $MERGEQA_CACHE_DIR or {default_cache_dir()})")
    group.addoption("--merge-seed", type=int, metavar="N", default=0,
                    help="random seed for mergekit (dare_* methods) (default: 0)")
    group.addoption("--backend", choices=("mergeqa-hf", "hf", "vllm"), default="mergeqa-hf",
                    help="lm-eval scorer: mergeqa's prefix-sharing one, lm-eval's hf, or lm-eval's vllm "
                         "where vLLM is installed (default: mergeqa-hf)")
    group.addoption("--executor", metavar="local|ray|ray://HOST:PORT", default="local",
                    help="where merges, evaluations and probes run: here, or as jobs on a Ray cluster "
                         "(pip install mergeqa[ray]) (default: local)")
    group.addoption("--device-map", choices=("none", "auto"), default="none",
                    help="auto: shard each model over the GPUs this process sees (accelerate) (default: none)")
    group.addoption("--tasks-path", nargs="+", action="extend", metavar="DIR", default=[],
                    help="extra directories of lm-eval task YAML (default: none)")
    group.addoption("--eval-limit", type=int, metavar="N", default=None,
                    help="evaluate at most N items per task, for smoke runs (default: all)")
    group.addoption("--report-dir", metavar="DIR", default=None,
                    help="where the comparison table and plots go (default: next to --junitxml, else ./mergeqa-report)")
    group.addoption("--gate", action="store_true", default=False,
                    help="collect mergeqa's built-in checks even without --model/--merge-config (default: off)")
    group.addoption("--unsafe-exec", action="store_true", default=False,
                    help="run model-written code (HumanEval) even where bubblewrap cannot sandbox it; "
                         "reports then say 'unsandboxed' (default: off: refuse)")
    group.addoption("--conflict-pairs", metavar="JSONL", default=None,
                    help="consistency pairs for the conflict checks (default: [conflict] pairs, else the embedded set)")
    group.addoption("--questions", metavar="JSONL", default=None,
                    help="MT-Bench question.jsonl for the judged checks (default: [judge] questions, else the embedded set)")
    group.addoption("--judge", metavar="PATH", default=None,
                    help="judge: 'reference' or a local transformers model directory (default: [judge] judge, 'reference')")
    group.addoption("--judge-url", metavar="URL", default=None,
                    help="OpenAI-compatible endpoint to judge with, e.g. http://127.0.0.1:8000/v1 (default: [judge] url; "
                         "key from $OPENAI_API_KEY or [judge] api_key_env)")
    group.addoption("--judge-model", metavar="NAME", default=None,
                    help="model name the --judge-url endpoint serves (default: [judge] model)")

