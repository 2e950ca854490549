"""Where a model runs on a machine with several GPUs: each pytest-xdist worker pinned to its own
GPUs (CUDA_VISIBLE_DEVICES from the worker id), a large model sharded over the GPUs a process
sees (`--device-map auto`), and lm-eval's vLLM backend (`--backend vllm`).

Pinning must happen before CUDA is initialised, so GPUs are counted without torch (from
CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`). Not a scheduler across machines: see mergeqa.evaluate.executor.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
from collections.abc import MutableMapping
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError

DEVICE_MAPS = ("none", "auto")
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "F32": 4, "F16": 2, "BF16": 2,
                "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}


def visible_gpus(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries, without touching CUDA."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def worker_index(worker_id: str) -> int:
    """'gw3' -> 3 (pytest-xdist's worker ids); a usage error for anything else."""
    if not (worker_id.startswith("gw") and worker_id[2:].isdigit()):
        raise MergeQAUsageError(f"xdist worker id {worker_id!r} is not of the form gwN; "
                                "GPU pinning needs pytest-xdist's own worker ids")
    return int(worker_id[2:])


def gpus_for_worker(index: int, workers: int, gpus: list[str]) -> list[str]:
    """The GPUs worker `index` of `workers` takes from `gpus`.

    At least as many GPUs as workers: a contiguous block of len(gpus) // workers each (the
    remainder goes to the first workers), so `--device-map auto` shards within a worker's block.
    More workers than GPUs: GPU index % len(gpus), shared. No GPUs: none.

    >>> gpus_for_worker(1, 2, ["0", "1", "2", "3"])
    ['2', '3']
    >>> gpus_for_worker(2, 3, ["0", "1"])
    ['0']
    """
    if not gpus:
        return []
    if workers > len(gpus):
        return [gpus[index % len(gpus)]]
    share, extra = divmod(len(gpus), workers)
    start = index * share + min(index, extra)
    return gpus[start:start + share + (index < extra)]


def pin_worker_gpus(workerinput: dict | None, environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set CUDA_VISIBLE_DEVICES for this xdist worker (called from the plugin's `_share_cores`).

    Does nothing outside xdist, without GPUs, or when MERGEQA_NO_GPU_PINNING is set. A
    CUDA_VISIBLE_DEVICES the user set is split among the workers, not ignored. Returns the GPUs
    this worker now sees (as entries of the original list).
    """
    environ = os.environ if environ is None else environ
    if workerinput is None or environ.get("MERGEQA_NO_GPU_PINNING"):
        return []
    gpus = visible_gpus(environ)
    mine = gpus_for_worker(worker_index(workerinput["workerid"]),
                           int(workerinput.get("workercount", 1)), gpus)
    if mine:
        environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return mine


# -- model size and placement ------------------------------------------------------------------
def parameter_count(model_dir: Path) -> int:
    """Parameters in a model directory's safetensors files, from their headers (no tensor data)."""
    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry["shape"])
    return total


def model_bytes(model_dir: Path, dtype: str = "float32") -> int:
    """Bytes the weights take in memory when loaded in `dtype` ('auto': as stored)."""
    if dtype != "auto":
        return parameter_count(model_dir) * _DTYPE_BYTES[dtype]
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def gpus_needed(weight_bytes: int, gpu_memory_bytes: int, gpus_per_node: int, *,
                headroom: float = 1.3) -> tuple[int, str | None]:
    """(GPUs to reserve, device_map) for a model of `weight_bytes`: one GPU when weights x
    `headroom` (activations, KV cache) fit on one, else a whole node, sharded with device_map
    'auto'. A model too large for a node is a usage error with the figures.

    >>> gpus_needed(15 * 2**30, 80 * 2**30, 8)      # 7B in bf16 on an 80 GB GPU
    (1, None)
    >>> gpus_needed(140 * 2**30, 80 * 2**30, 8)     # 70B in bf16: the node, sharded
    (8, 'auto')
    """
    need = weight_bytes * headroom
    if need <= gpu_memory_bytes:
        return 1, None
    if need > gpu_memory_bytes * gpus_per_node:
        raise MergeQAUsageError(
            f"a model of {weight_bytes / 2**30:.1f} GiB needs ~{need / 2**30:.0f} GiB but a node has "
            f"{gpus_per_node} x {gpu_memory_bytes / 2**30:.0f} GiB; load it in bfloat16 (--dtype) "
            "or use nodes with more GPU memory")
    return gpus_per_node, "auto"


def vllm_lm(ref, settings):
    """lm-eval's vLLM model for `ref` (`--backend vllm`): tensor parallel over every visible GPU
    with `--device-map auto`, else one GPU. vLLM loads the checkpoint itself, from its path."""
    check_backend("vllm")
    from lm_eval.models.vllm_causallms import VLLM

    parallel = max(1, len(visible_gpus())) if getattr(settings, "device_map", None) == "auto" else 1
    return VLLM(pretrained=str(ref.path), dtype=settings.dtype, tensor_parallel_size=parallel,
                batch_size="auto", seed=1234)


def check_backend(backend: str) -> None:
    """A usage error at start-up, not mid-run, when `--backend vllm` cannot work here."""
    if backend != "vllm":
        return
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise MergeQAUsageError("--backend vllm: vLLM is not installed; `pip install vllm` on a "
                                "machine with a CUDA GPU, or use --backend mergeqa-hf")
