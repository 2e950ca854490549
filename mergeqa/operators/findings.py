"""What mergekit 0.1.5 violates: one ``RootCause`` per finding (its mechanism, whether a real
merge meets its trigger, mergekit's behaviour against its documented contract), and the cells
(method, property, regime) where each shows, with a recorded example (``KNOWN``).

The test suite replays every cell as a strict xfail (so a fix in mergekit shows up as an XPASS
naming the entry to delete); ``bench/operator_findings.py`` prints one row per root cause and
replays each realistic trigger at its real size. Only cells that do not depend on the random
stream are listed: deterministic ones, and statistical ones whose effect is many standard errors
past the bound (see ``catalogue.estimate_bias``). Not for: searching (``runner``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from mergeqa.operators.description import OperatorRaised, PropertyViolation
from mergeqa.operators.inputs import MergeInputs, RealisticInputs, Regime, _literal


@dataclasses.dataclass(frozen=True)
class AtScale:
    """A realistic trigger at its real size: ``method`` violates ``property`` on ``recipe``'s
    tensors (plus ``extra`` example arguments). Too heavy for CI: the bench and the mergeqa-large
    test replay it."""

    method: str
    property: str
    recipe: RealisticInputs
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    raises: str = ""  # the exception the operator raises when raising *is* the finding

    def example(self) -> dict[str, Any]:
        return {"inputs": self.recipe.build(), **self.extra}

    def replay(self, operator: Any) -> PropertyViolation | None:
        """Check ``property`` on the example: the violation, or None when it holds. A violation
        that is not this finding's own (a raise when the finding is a wrong value, another
        exception than ``raises``, or a wrong value when the finding is a raise) is
        ``UnrelatedFailure``: an at-size replay must not pass on some other failure."""
        from mergeqa.operators.catalogue import get_property

        try:
            get_property(self.property).check(operator, **self.example())
        except PropertyViolation as violation:
            raised = _raised(violation)
            cause = None if raised is None else type(raised.__cause__).__name__
            if cause != (self.raises or None):
                want = f"a raise of {self.raises}" if self.raises else "a wrong value"
                got = "a wrong value" if cause is None else f"a raise of {cause}"
                raise UnrelatedFailure(f"{self.method}/{self.property} on {self.recipe!r}: the finding is "
                                       f"{want}, the replay gave {got}: {violation}") from violation
            return violation
        return None


@dataclasses.dataclass(frozen=True)
class RootCause:
    """One finding: a mechanism in mergekit, however many cells it shows in.

    ``label`` is "realistic" when inputs real merges meet trigger it (task vectors at the measured
    fine-tuning scales on real matrix shapes, parameters real configs use; ``trigger`` says which,
    ``at_scale`` replays it) and "degenerate" otherwise (``trigger`` says what it takes). ``cause``
    names the mergekit function at fault; ``behaviour`` sets what mergekit does against what it
    documents (and against the paper where the two differ).
    """

    key: str
    label: Regime
    cause: str
    trigger: str
    behaviour: str
    at_scale: AtScale | None = None
    upstream: str = ""


@dataclasses.dataclass(frozen=True)
class KnownViolation:
    """A cell where a root cause of mergekit 0.1.5 shows: method, property, input regime.

    ``regime`` is the regime whose inputs the example belongs to (the realistic regime draws
    task vectors at the measured scales only, so a stand-in at 10x the weight std is
    "degenerate"); whether the finding is realistic is its root cause's ``label``. ``example``
    replays it (``get_property(property).check(operator, **example)``); ``root`` is the key of its
    ``RootCause`` in ``ROOT_CAUSES``; ``upstream`` says why it is worth
    reporting to mergekit ("" when it is not: documented behaviour, or inputs no merge meets).
    ``stream_dependent`` says why the finding shows on some random draws only (``reseeded``
    examples: other data of the same recipe); "" means it is robust. Every finding's recorded
    example is replayed as a strict xfail (the recorded draw fails every time); the search of a
    stream-dependent finding's cell is a non-strict one. ``raises`` names the exception when the
    finding is that the operator raises; otherwise a raise is not the finding (``only_its_own``).
    """

    method: str
    property: str
    regime: Regime
    example: dict[str, Any]
    reason: str
    root: str
    upstream: str = ""
    variant: str = ""  # tells apart two distinct violations of one (method, property, regime)
    stream_dependent: str = ""
    raises: str = ""  # the exception the operator raises when raising *is* the finding (e.g. "RuntimeError")

    @property
    def id(self) -> str:
        return "-".join(filter(None, (self.method, self.property, self.regime, self.variant)))


#: Cells only the mergeqa-large profile's real sizes show (the CI profile's tensors are too small to):
#: under that profile their search is a non-strict xfail that takes only its own violation; there is no
#: CI replay (the example would merge a real matrix: ~50 s and 6 GB), `example` stays empty.
SIZE_ONLY: tuple[KnownViolation, ...] = (
    KnownViolation(
        "multislerp", "low_precision_agrees", "realistic", {},
        "multislerp's fp16 norms under-count on CPU like model_stock's (80.69 vs 81.93 on a 4096x4096 "
        "matrix): its fp16 merge of two 4096x4096 matrices at SFT deltas has 2.4% of its entries past "
        "the 8-eps bound (396529 of 16.8M; e.g. -0.05533 for -0.05441)",
        root="torch fp16 CPU norm",
        stream_dependent="under mergeqa-large only: it needs a 4096x4096 fp16 tensor",
    ),
    KnownViolation(
        "model_stock", "low_precision_agrees", "realistic", {},
        "the cell the at-size trigger of this root replays, found by the search too: 4 correlated "
        "fine-tunes at SFT delta 2e-3 on an 11008x4096 fp16 matrix give a merged task vector 1.035x the "
        "float32 one along it (torch's fp16 norm under-counts, t comes out too large)",
        root="torch fp16 CPU norm",
        stream_dependent="under mergeqa-large only: it needs matrices of ~1e7 entries or more",
    ),
)


def _fp16_task_vector_overflow(**params: Any) -> dict[str, Any]:
    """base 32768, model -32768: the task vector (-65536) overflows fp16, the merge (~26214) does not."""
    return dict(inputs=MergeInputs.of(models=[[-32768.0, 0.0]], base=[32768.0, 0.0], dtype="float16",
                                      params={"weight": [0.1], **params}))


_GTA_FP16 = "task vectors are computed in the input dtype: model - base overflows fp16 though the merge fits"
_L1_RESCALE = ("rescales by the L1 norm ratio, not 1/p per kept entry: on two entries E[kept * |x|_1 / "
               "|kept|_1] = 0.75 x (all-dropped draws give 0); the bias is O(1/n) and under 0.3% from "
               "256 entries")
_DELLA_BIAS = ("MagPrune keeps an entry with probability p_i rising with its magnitude rank (density +- "
               "epsilon) but rescales every kept entry by one L1 ratio instead of 1/p_i: in expectation the "
               "smallest quarter of the entries comes out 0.73x and the largest 1.11x, at any size. Biased "
               "against the paper (1/p_i rescaling is unbiased per entry); mergekit documents only that it "
               "rescales 'to match the original tensor norm' (L1), which it meets exactly")
_DELLA_UPSTREAM = ("a documentation gap, not a broken promise: DELLA's paper rescales each kept entry by 1/p_i, "
                   "mergekit matches the L1 norm, which shrinks small deltas by ~27%")

#: Degenerate inputs of a DARE/DELLA call: two equal entries, density 0.5.
_TWO_ENTRIES = dict(inputs=MergeInputs.of(models=[[1.0, 1.0]], base=[0.0, 0.0], dtype="float32",
                                          params={"density": [0.5], "weight": [1.0]}))


def _realistic(**fields: Any) -> dict[str, Any]:
    return {"inputs": RealisticInputs(**fields).build()}


#: Every finding, realistic first.
KNOWN: tuple[KnownViolation, ...] = (
    # ------------------------------------------------------------------ realistic inputs
    KnownViolation(
        "model_stock", "scale_equivariant", "realistic",
        dict(inputs=RealisticInputs(shape=(256,), models=2, kind="correlated").build(), scale=0.125),
        "the norm product is clamped at an absolute 1e-6: correlated offsets of a 256-entry norm vector "
        "with fine-tuning deltas (norm ~3.6e-3, scaled 1/8: product 2e-7) fall under it and the cosine "
        "shrinks",
        root="model_stock absolute clamp",
        upstream="small tensors (norm vectors) of ordinary fine-tunes merge towards the base",
    ),
    KnownViolation(
        "karcher", "low_precision_agrees", "realistic",
        _realistic(shape=(256,), models=2, with_base=False, delta=1e-3, dtype="bfloat16"),
        "torch.dot(mean, unit) of bf16 vectors is a bf16 scalar (0.99609 or 1.0 near 1): theta is 0.088 "
        "for one model and 0 (skipped) for the other where the true angles are 0.063 and 0.046, so the "
        "iterate is pulled towards one model: 12 of 256 entries more than 8 eps off",
        root="karcher bf16 dot",
        stream_dependent="on 3 of 5 data seeds at 256 entries; holds at 1024 entries and up",
    ),
    KnownViolation(
        "sce", "low_precision_agrees", "realistic",
        _realistic(shape=(64, 64), models=2, delta=5e-4, dtype="float16", params={"select_topk": 0.5}),
        "sce_mask ranks entries by torch.var of the task vectors in fp16: variances of SFT deltas (~1e-7) "
        "are fp16 subnormals and a third round to 0; count_nonzero(var) drops, so top-k keeps ~31% of the "
        "entries instead of 50% and the merged task vector is ~0.8x the float32 one (sce_weight in fp16 is "
        "not the cause: computing it in float32 changes nothing, computing the mask in float32 fixes it)",
        root="sce_mask fp16 variance underflow", upstream="fp16 SCE with select_topk < 1 drops a fifth of the merge",
    ),
    KnownViolation(
        "sce", "scale_equivariant", "realistic",
        dict(inputs=RealisticInputs(shape=(4096,), models=2, deltas=(5e-4, 1e-4), params={"select_topk": 1.0}).build(),
             scale=4.0),
        "sce_weight falls back to equal weights when the summed mean square of the task vectors is under an "
        "absolute 1e-6: SFT deltas of std 5e-4 and 1e-4 (2.6e-7) get [0.5, 0.5] instead of [0.96, 0.04]; "
        "scaled by 4 they clear it",
        root="sce_weight absolute fallback",
        upstream="SCE weighs ordinary fine-tunes equally, whatever their task-vector sizes",
    ),
    KnownViolation(
        "arcee_fusion", "low_precision_agrees", "realistic",
        _realistic(shape=(256,), dtype="bfloat16"),
        "the KL importance of softmaxes is computed in bf16, where p / q rounds to 1 for fine-tuning "
        "deltas: the importance is 0 everywhere and the fusion mask keeps nothing (merge = base)",
        root="arcee_fusion low-precision KL", upstream="bf16 arcee_fusion of fine-tunes returns the base",
        stream_dependent="on 2-3 of 10 data seeds: whether the bf16 KL rounds to exactly 0 depends on the draw",
    ),
    KnownViolation(
        "arcee_fusion", "dtype_preserved", "realistic",
        _realistic(shape=(256,), dtype="bfloat16"),
        "the fusion mask is .float(), which promotes bf16/fp16 merges to float32",
        root="arcee_fusion float mask", upstream="bf16 checkpoints come out float32 (twice the size)",
    ),
    KnownViolation(
        "ramplus_tl", "dtype_preserved", "realistic",
        _realistic(shape=(256,), dtype="bfloat16"),
        "rho = shared / unique.clamp(epsilon) is float32 and promotes the bf16/fp16 merge",
        root="ramplus_tl float32 rho", upstream="bf16 checkpoints come out float32 (twice the size)",
    ),
    KnownViolation(
        "nearswap", "fp16_finite", "realistic",
        _realistic(shape=(256,), dtype="float16", params={"t": 0.0}),
        "t / |a-b| runs as reciprocal(|a-b|.clamp(1e-6)) * t: 1 / |a-b| overflows fp16 for |a-b| < 1/65504 "
        "and inf * t = NaN at t = 0 only (any t > 0 gives inf, clamped to 1); 7% of entries at deltas "
        "of 2e-4, 1.5% at 1e-3",
        root="nearswap fp16 reciprocal",
    ),
    KnownViolation(
        "multislerp", "endpoints", "realistic",
        dict(inputs=RealisticInputs(shape=(256,), models=2, with_base=False, dtype="float16",
                                    params={"weight": [1.0, 0.0]}).build(), returns=0),
        "with one weight 0 the tangent vector is exactly 0; its norm plus eps=1e-8 is 0 in fp16, and "
        "sin(0) / 0 = NaN in every entry", root="multislerp fp16 eps",
        upstream="fp16 multislerp with a zero weight (e.g. a per-layer weight gradient from 0) is all NaN",
        stream_dependent="on 6-7 of 10 data seeds: the fp16 tangent is exactly 0 only when rounding cancels",
    ),
    KnownViolation(
        "multislerp", "fp16_finite", "realistic",
        _realistic(shape=(256,), models=2, with_base=False, dtype="float16", params={"weight": [0.1, 0.0]}),
        "same root as multislerp/endpoints[realistic]: a zero weight leaves a zero tangent, NaN in fp16",
        root="multislerp fp16 eps",
        stream_dependent="on 6-7 of 10 data seeds: the fp16 tangent is exactly 0 only when rounding cancels",
    ),
    KnownViolation(
        "multislerp", "finite_on_degenerate", "realistic",
        _realistic(shape=(256,), models=2, with_base=False, kind="untouched", dtype="float16",
                   params={"weight": [0.0, 1.0]}),
        "same root as multislerp/endpoints[realistic]", root="multislerp fp16 eps",
        stream_dependent="on 6-7 of 10 data seeds: the fp16 tangent is exactly 0 only when rounding cancels",
    ),
    KnownViolation(
        "multislerp", "zero_task_vectors", "realistic",
        dict(inputs=RealisticInputs(shape=(256,), models=3, params={"weight": [0.0, 0.0, 1.0]}).build().at_base()),
        "3+ models that leave a tensor untouched (frozen layers) raise 'weighted sum of the input tensors "
        "is zero' instead of returning the base", root="multislerp zero sum", raises="ValueError",
        upstream="frozen layers abort a 3-model multislerp merge",
    ),
    KnownViolation(
        "multislerp", "zero_task_vectors", "realistic",
        _realistic(shape=(256,), models=2, kind="untouched", dtype="float16", params={"weight": [1.0, 1.0]}),
        "an untouched fp16 tensor: the task-vector norms are 0, norms + eps is 0 (eps=1e-8 is 0 in fp16), "
        "0 / 0 = NaN in every entry; the same at 4096x4096", root="multislerp fp16 eps", variant="fp16",
        upstream="fp16 multislerp of models with frozen layers gives all-NaN tensors",
    ),
    KnownViolation(
        "multislerp", "dtype_preserved", "realistic",
        _realistic(shape=(256,), models=3, kind="untouched", params={"weight": [0.0, 0.0, 1.0]}),
        "same root as multislerp/zero_task_vectors[realistic]: untouched tensors raise ValueError",
        root="multislerp zero sum", raises="ValueError",
    ),
    *(KnownViolation(
        "nearswap", prop, "realistic",
        _realistic(shape=(256,), dtype="float16", params={"t": 0.0}),
        "same root as nearswap/fp16_finite[realistic]: at t = 0, inf * 0 = NaN where |model - base| < 1/65504",
        root="nearswap fp16 reciprocal",
    ) for prop in ("low_precision_agrees",)),
    KnownViolation(
        "nearswap", "zero_task_vectors", "realistic",
        dict(inputs=RealisticInputs(shape=(256,), dtype="float16", params={"t": 0.0}).build().at_base()),
        "same root as nearswap/fp16_finite[realistic]: an untouched fp16 tensor merges to NaN",
        root="nearswap fp16 reciprocal",
    ),
    KnownViolation(
        "nearswap", "endpoints", "realistic",
        dict(inputs=RealisticInputs(shape=(256,), dtype="float16", params={"t": 0.0}).build(), returns="base"),
        "same root as nearswap/fp16_finite[realistic]", root="nearswap fp16 reciprocal",
    ),
    KnownViolation(
        "nearswap", "finite_on_degenerate", "realistic",
        _realistic(shape=(256,), kind="untouched", dtype="float16", params={"t": 0.0}),
        "same root as nearswap/fp16_finite[realistic]: every entry of an untouched tensor is NaN",
        root="nearswap fp16 reciprocal",
    ),
    *(KnownViolation(
        method, "rescale_unbiased", "realistic",
        _realistic(shape=(4096,), params={"density": [0.5], "weight": [1.0]}),
        _DELLA_BIAS, root="DELLA L1 rescale", upstream=_DELLA_UPSTREAM if method == "della" else "",
    ) for method in ("della", "della_linear")),
    # ------------------------------------------------------------------ degenerate inputs
    KnownViolation(
        "ties", "fp16_finite", "degenerate",
        _realistic(shape=(512, 1024), delta=0.2, dtype="float16",
                   params={"rescale": True, "density": [0.5], "weight": [1.0]}),
        "rescale: true matches L1 norms summed in fp16: |delta|_1 of 512k entries of ~0.2 is ~84000 > 65504, "
        "inf / finite = inf, 0 * inf = NaN everywhere. A CI-sized stand-in at 10x the weight std: real "
        "deltas reach it on real sizes (see ROOT_CAUSES['fp16 L1 reduction'])",
        root="fp16 L1 reduction", variant="l1-sum",
    ),
    KnownViolation(
        "model_stock", "low_precision_agrees", "degenerate",
        _realistic(shape=(64, 256), models=2, kind="correlated", delta=2e-5, dtype="float16"),
        "offset dot products are taken entry by entry in fp16: products of deltas of ~2e-5 (25x below "
        "SFT deltas) underflow to 0, so cos = 0, t = 0 and the merge is the base exactly (float32: t = 0.97)",
        root="model_stock fp16 product underflow",
    ),
    KnownViolation(
        "model_stock", "fp16_finite", "degenerate",
        _realistic(shape=(1024, 2048), models=2, kind="correlated", delta=0.2, dtype="float16"),
        "offset norms ~290: the norm product and the dot product overflow fp16 (inf / inf = NaN). A "
        "CI-sized stand-in at 10x the weight std for continued pre-training on an embedding matrix "
        "(see ROOT_CAUSES['model_stock fp16 norm-product overflow'])",
        root="model_stock fp16 norm-product overflow", variant="norm-product",
    ),
    KnownViolation(
        "linear", "finite_on_degenerate", "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.0]], dtype="float32", params={"weight": [0.0]})),
        "normalize=True divides by the sum of the weights: all-zero weights give 0/0 = NaN, not an error",
        root="all-zero weights",
    ),
    KnownViolation(
        "multislerp", "finite_on_degenerate", "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.0], [0.0]], dtype="float32", params={"weight": [0.0, 0.0]})),
        "normalize_weights divides by the sum of the weights: all-zero weights give NaN, not an error",
        root="all-zero weights",
    ),
    KnownViolation(
        "multislerp", "zero_task_vectors", "degenerate",
        dict(inputs=MergeInputs.of(models=[[1.0, 1.0], [1.0, 1.0]], base=[1.0, 1.0], dtype="float16",
                                   params={"weight": [0.1, 0.0]})),
        "eps=1e-8 underflows to 0 in fp16, so zero task vectors are normalised as 0/0 = NaN",
        root="multislerp fp16 eps", variant="fp16",
    ),
    KnownViolation(
        "multislerp", "zero_task_vectors", "degenerate",
        dict(inputs=MergeInputs.of(models=[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], base=[1.0, 1.0],
                                   dtype="float32", params={"weight": [0.0, 0.0, 1.0]})),
        "3+ models that leave a tensor untouched (e.g. frozen layers) raise 'weighted sum of the input "
        "tensors is zero'", root="multislerp zero sum", raises="ValueError", variant="three-models",
        upstream="frozen layers abort a 3-model multislerp merge",
    ),
    KnownViolation(
        "multislerp", "idempotent", "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.0625, 0.0625], [0.0625, 0.0625]], dtype="float16",
                                   params={"weight": [0.1, 0.0]})),
        "identical fp16 inputs leave a zero tangent, sin(0) / 0 = NaN", root="multislerp fp16 eps",
    ),
    KnownViolation(
        "multislerp", "endpoints", "degenerate",
        dict(inputs=MergeInputs.of(models=[[1.0, 1.0], [1.0, 1.0]], dtype="float16",
                                   params={"weight": [1.0, 0.0]}), returns=0),
        "fp16: the tangent norm plus eps=1e-8 is exactly 0, so sin(0) / 0 = NaN at a vertex",
        root="multislerp fp16 eps",
    ),
    KnownViolation(
        "multislerp", "dtype_preserved", "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.0625, 0.0625], [0.0625, 0.0625], [0.0625, 0.0625]],
                                   base=[0.0625, 0.0625], dtype="float32", params={"weight": [0.0, 0.0, 1.0]})),
        "same root as zero_task_vectors[three-models]: zero task vectors raise ValueError",
        root="multislerp zero sum", raises="ValueError",
    ),
    KnownViolation(
        "multislerp", "scale_equivariant", "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.001953125, 0.001953125, 0.001953125],
                                           [0.001953125, 0.001953125, 0.03125]],
                                   base=[0.001953125, 0.0078125, 0.001953125], dtype="float32",
                                   params={"weight": [1.0, 1.0]}), scale=2.0**-16),
        "eps=1e-8 is added to task-vector norms: at norms ~5e-7 an entry is off by 7%",
        root="absolute epsilon",
    ),
    KnownViolation(
        "multislerp", "fp16_finite", "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.0, 0.0], [0.0, 0.0]], dtype="float16",
                                   params={"weight": [0.1, 0.0]})),
        "eps=1e-8 is 0 in fp16, zero vectors give 0/0 = NaN", root="multislerp fp16 eps",
    ),
    KnownViolation(
        "multislerp", "low_precision_agrees", "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.0625, 0.0625], [0.0625, 0.0625]], dtype="float16",
                                   params={"weight": [0.0, 1.0]})),
        "same root as idempotent[degenerate]: identical fp16 inputs leave a zero tangent, sin(0) / 0 = NaN "
        "where the float32 merge is finite (found by the derandomized search on some runs, so replayed here)",
        root="multislerp fp16 eps",
    ),
    *(KnownViolation(
        "nearswap", prop, "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.0625, 0.0625]], base=[0.0625, 0.0625], dtype="float16",
                                   params={"t": 0.0}), **({"returns": "base"} if prop == "endpoints" else {})),
        "at t=0, inf * 0 = NaN in fp16 where |a - b| < 1/65504 (see nearswap/fp16_finite[realistic])",
        root="nearswap fp16 reciprocal",
    ) for prop in ("zero_task_vectors", "endpoints", "finite_on_degenerate", "fp16_finite", "low_precision_agrees")),
    KnownViolation(
        "arcee_fusion", "low_precision_agrees", "degenerate",
        dict(inputs=MergeInputs.of(models=[[1.0, 1.0]], base=[1.0, 16.0], dtype="float16")),
        "softmax(base) underflows to 0 in fp16 (eps=1e-8 is 0 too): p / q = inf, importance NaN, "
        "nothing fused", root="arcee_fusion low-precision KL",
    ),
    *(KnownViolation(
        method, "dtype_preserved", "degenerate",
        dict(inputs=MergeInputs.of(models=[[1.0, 1.0]], base=[1.0, 1.0], dtype="bfloat16")),
        f"same as {method}/dtype_preserved[realistic]", root=root,
    ) for method, root in (("arcee_fusion", "arcee_fusion float mask"), ("ramplus_tl", "ramplus_tl float32 rho"))),
    KnownViolation(
        "sce", "fp16_finite", "degenerate",
        dict(inputs=MergeInputs.of(models=[[[-16384.0, 0.0], [0.0, 0.0]]], base=[[16384.0, 0.0], [0.0, 0.0]],
                                   dtype="float16", params={"select_topk": 1.0})),
        "sce_weight squares the task vectors in fp16: 32768**2 overflows, inf / inf = NaN",
        root="sce fp16 squares",
    ),
    KnownViolation(
        "sce", "finite_on_degenerate", "degenerate",
        dict(inputs=MergeInputs.of(models=[[64.0, 0.0, 0.0], [-256.0, 0.0, 0.0], [64.0, 0.0, 0.0]],
                                   base=[64.0, 0.0, 0.0], dtype="float16", params={"select_topk": 1.0})),
        "sce_weight squares the task vectors in fp16: a task vector of -320 already overflows (102400)",
        root="sce fp16 squares",
    ),
    KnownViolation(
        "sce", "scale_equivariant", "degenerate",
        dict(inputs=MergeInputs.of(models=[[1.0, 1.0], [0.5, 0.5]], base=[0.0, 0.0], dtype="float32",
                                   params={"select_topk": 1.0}), scale=2.0**-11),
        "sce_weight falls back to uniform weights when the summed mean square of the task vectors is "
        "below an absolute 1e-6", root="sce_weight absolute fallback",
    ),
    KnownViolation(
        "sce", "density_kept", "degenerate",
        dict(inputs=MergeInputs.of(models=[[[0.0625, 0.0625], [0.0625, 0.0625]]] * 2,
                                   base=[[0.0, 0.0], [0.0, 0.0]], dtype="float32", params={"select_topk": 0.5})),
        "select_topk ranks entries by variance across task vectors and counts only non-zero variance: "
        "fine-tunes that agree exactly keep nothing (merge = base)", root="sce zero variance",
    ),
    KnownViolation(
        "ram", "fp16_finite", "degenerate",
        dict(inputs=MergeInputs.of(models=[[-32768.0, 0.0]], base=[32768.0, 0.0], dtype="float16")),
        "task vectors are computed in fp16: model - base overflows (-65536 -> -inf), and -inf + inf = NaN",
        root="fp16 task vector overflow",
    ),
    KnownViolation(
        "ramplus_tl", "fp16_finite", "degenerate",
        dict(inputs=MergeInputs.of(models=[[32768.0, 0.0], [-32768.0, 0.0]], base=[32768.0, 0.0],
                                   dtype="float16")),
        "same as ram/fp16_finite: fp16 task vectors overflow, -inf + inf = NaN", root="fp16 task vector overflow",
    ),
    KnownViolation(
        "nuslerp", "fp16_finite", "degenerate",
        dict(inputs=MergeInputs.of(models=[[32768.0, 0.0], [-32768.0, 0.0]], base=[32768.0, 0.0],
                                   dtype="float16", params={"weight": [0.0, 1.0]})),
        "task vectors (model - base) are taken in fp16 and overflow, though the merge (-32768) fits",
        root="fp16 task vector overflow",
    ),
    KnownViolation(
        "arcee_fusion", "fp16_finite", "degenerate",
        dict(inputs=MergeInputs.of(models=[[-32768.0, 0.0]], base=[32768.0, 0.0], dtype="float16")),
        "the difference model - base overflows fp16 (-inf), and -inf * a zero mask entry = NaN",
        root="fp16 task vector overflow",
    ),
    KnownViolation("task_arithmetic", "fp16_finite", "degenerate", _fp16_task_vector_overflow(), _GTA_FP16,
                   root="fp16 task vector overflow"),
    *(KnownViolation(method, "fp16_finite", "degenerate", _fp16_task_vector_overflow(density=[1.0]), _GTA_FP16,
                     root="fp16 task vector overflow")
      for method in ("ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della",
                     "della_linear")),
    KnownViolation(
        "karcher", "order_invariant", "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.0625, 0.0625], [-0.0625, -0.0625]], dtype="float32"),
             permutation=[1, 0]),
        "antipodal inputs have no mean direction; the iteration starts from the first model, so the "
        "merge of A and -A is A or -A depending on order", root="karcher antipodal",
    ),
    KnownViolation(
        "karcher", "scale_equivariant", "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.001953125, 0.001953125], [0.001953125, 0.001953125]],
                                   dtype="float32"), scale=0.001953125),
        "tol=1e-5 is an absolute threshold on tensor norms: tensors with a smaller norm count as zero "
        "and merge to 0", root="absolute epsilon",
    ),
    KnownViolation(
        "model_stock", "scale_equivariant", "degenerate",
        dict(inputs=MergeInputs.of(
            models=[[[0.03125, 0.03125, 0.03125], [0.03125, 0.03125, 0.03125]]] * 4,
            base=[[0.03125, 0.03125, 0.03125], [0.03125, 0.03125, 0.015625]], dtype="float32"), scale=0.0625),
        "same root as model_stock/scale_equivariant[realistic]: the 1e-6 clamp on the norm product",
        root="model_stock absolute clamp",
    ),
    KnownViolation(
        "model_stock", "finite_on_degenerate", "degenerate",
        dict(inputs=MergeInputs.of(models=[[128.0, 0.0], [-128.0, 0.0], [-128.0, 0.0]], base=[128.0, 0.0],
                                   dtype="float16")),
        "dot products of the offsets are taken in fp16: 256**2 overflows, inf / inf = NaN",
        root="model_stock fp16 norm-product overflow",
    ),
    KnownViolation(
        "model_stock", "fp16_finite", "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.0, 0.0], [0.0, 0.0]], base=[0.0, 1024.0], dtype="float16")),
        "offset norms and dots overflow fp16", root="model_stock fp16 norm-product overflow",
    ),
    *(KnownViolation(method, "rescale_unbiased", "degenerate", _TWO_ENTRIES, _L1_RESCALE,
                     root="L1 rescale on tiny tensors")
      for method in ("dare_ties", "dare_linear", "della", "della_linear")),
    *(KnownViolation(
        method, "finite_on_degenerate", "degenerate",
        dict(inputs=MergeInputs.of(models=[[0.0]], base=[0.0], dtype="float32",
                                   params={"density": [0.5], "weight": [0.0]})),
        "a row of one entry makes rank normalisation 0/0: bernoulli(NaN) raises RuntimeError",
        root="della one-entry rows", raises="RuntimeError",
    ) for method in ("della", "della_linear")),
)


def _sft(shape: tuple[int, ...], **fields: Any) -> RealisticInputs:
    return RealisticInputs(shape=shape, **{"delta": 1e-3, **fields})


#: One entry per finding, realistic first. Triggers were measured with bench/operator_findings.py.
ROOT_CAUSES: tuple[RootCause, ...] = (
    RootCause(
        "fp16 L1 reduction", "realistic",
        "sparsify.rescaled_masked_tensor (ties/breadcrumbs with rescale: true, dare, della) sums |delta| "
        "of the whole tensor in the input dtype: past 65504 the fp16 L1 is inf, and masked * inf / inf "
        "is NaN in every entry",
        "SFT delta std 1.5e-3 on a 14336x4096 MLP matrix (58.7M entries; L1 ~70000); continued "
        "pre-training (3e-2) on any 4096x4096 matrix. At 4096x4096 and 1.5e-3 the L1 is 20080: fine",
        "documented: 'rescale to match the original tensor norm'; fp16 gives an all-NaN tensor instead",
        AtScale("ties", "fp16_finite", _sft((14336, 4096), delta=1.5e-3, dtype="float16",
                                             params={"rescale": True, "density": [0.5], "weight": [1.0]})),
        upstream="fp16 ties/dare/della with rescaling of Llama-3-8B-sized MLPs is all NaN",
    ),
    RootCause(
        "torch fp16 CPU norm", "realistic",
        "model_stock takes torch.norm of fp16 offsets; on CPU torch's fp16 norm under-counts long tensors "
        "(7.93 vs 8.57 at 58.7M entries, 4.50 vs 4.58 at 16.8M) while the fp16 dot product (float "
        "accumulation) is right, so cos and t come out too large. multislerp's fp16 norms under-count the "
        "same way (80.69 vs 81.93 on a 4096x4096 matrix): under mergeqa-large its fp16 merge of two "
        "4096x4096 matrices has 2.3% of its entries past the 8-eps bound, e.g. -0.05533 for -0.05441 "
        "(no CI cell: it needs the size)",
        "SFT deltas (1e-3, correlated fine-tunes) on 4096x4096 (t 1.02x) to 14336x4096 (t 1.08x)",
        "documented: the Model Stock interpolation t = k cos / (1 + (k - 1) cos); fp16 on CPU moves the "
        "merge 2-8% further from the base than that t",
        AtScale("model_stock", "low_precision_agrees",
                _sft((14336, 4096), models=2, kind="correlated", dtype="float16")),
        upstream="fp16 model_stock on CPU over-estimates t by up to 8% on MLP matrices (torch's fp16 norm)",
    ),
    RootCause(
        "model_stock fp16 norm-product overflow", "realistic",
        "model_stock multiplies two fp16 offset norms (and sums fp16 products): past 256 x 256 the norm "
        "product is inf and cos = inf / inf = NaN",
        "continued-pre-training deltas (3e-2) on a 32000x4096 embedding matrix (131M entries, offset "
        "norms 378); never at SFT deltas (2e-3 needs 1.6e10 entries); at 14336x4096 the norms are 256: fine",
        "documented: Model Stock's t from the offsets' cosine; fp16 gives an all-NaN tensor instead",
        AtScale("model_stock", "fp16_finite",
                _sft((32000, 4096), models=2, kind="correlated", delta=3e-2, dtype="float16")),
        upstream="fp16 model_stock of continued-pre-training checkpoints gives all-NaN embeddings",
    ),
    RootCause(
        "sce_mask fp16 variance underflow", "realistic",
        "sce_mask: torch.var of fp16 task vectors underflows (a third of the variances are 0 at 5e-4), "
        "count_nonzero(var) shrinks k; sce_weight is not the cause (fp32 weights change nothing)",
        "SFT delta std 5e-4, select_topk 0.5, any size (at 4096x4096: 15% of the entries moved, task-vector "
        "norm 0.90x the float32 one; 0.80x along it at 64x64)",
        "documented: select_topk keeps that fraction of the highest-variance entries; fp16 keeps ~31% of "
        "the entries for 50% and the merged task vector is 0.8-0.9x",
        AtScale("sce", "low_precision_agrees",
                _sft((4096, 4096), models=2, delta=5e-4, dtype="float16", params={"select_topk": 0.5})),
        upstream="fp16 SCE with select_topk < 1 drops a fifth of the merge",
    ),
    RootCause(
        "sce_weight absolute fallback", "realistic",
        "sce_weight returns equal weights when the sum of the task vectors' mean squares is under an "
        "absolute 1e-6, i.e. for any two task vectors of std under ~7e-4",
        "SFT delta stds 5e-4 and 1e-4 (any size, float32 too): [0.5, 0.5] instead of [0.96, 0.04]",
        "documented (paper): weights proportional to the task vectors' mean squares; mergekit weighs "
        "ordinary fine-tunes equally and is not scale-equivariant",
        AtScale("sce", "scale_equivariant", _sft((4096, 4096), models=2, deltas=(5e-4, 1e-4),
                                                  params={"select_topk": 1.0}), {"scale": 4.0}),
        upstream="SCE weighs ordinary fine-tunes equally, whatever their task-vector sizes",
    ),
    RootCause(
        "arcee_fusion low-precision KL", "realistic",
        "the KL importance of softmaxes is computed in bf16/fp16, where p / q rounds to 1 for fine-tuning "
        "deltas: most importances are 0 and the fusion mask keeps too little",
        "SFT delta 1e-3 on a 4096x4096 bf16 matrix: 2.7% of the entries moved, the rest 0.84x the float32 "
        "merged task vector along it (8% of the input task vectors' norm)",
        "documented: fuse the entries whose importance passes the threshold; bf16 fuses too little of it",
        AtScale("arcee_fusion", "low_precision_agrees", _sft((4096, 4096), dtype="bfloat16")),
        upstream="bf16 arcee_fusion of fine-tunes keeps too little of the fine-tune",
    ),
    RootCause(
        "arcee_fusion float mask", "realistic", "the fusion mask is .float(), which promotes the merge",
        "any bf16/fp16 checkpoint", "bf16 in, float32 out (twice the size)",
        AtScale("arcee_fusion", "dtype_preserved", _sft((4096, 4096), dtype="bfloat16")),
        upstream="bf16 checkpoints come out float32 (twice the size)",
    ),
    RootCause(
        "ramplus_tl float32 rho", "realistic", "rho = shared / unique.clamp(epsilon) is float32",
        "any bf16/fp16 checkpoint", "bf16 in, float32 out (twice the size)",
        AtScale("ramplus_tl", "dtype_preserved", _sft((4096, 4096), dtype="bfloat16")),
        upstream="bf16 checkpoints come out float32 (twice the size)",
    ),
    RootCause(
        "multislerp zero sum", "realistic",
        "multislerp normalises each task vector as x / (|x| + eps): zero task vectors give zero unit "
        "vectors, their weighted mean has norm 0 < eps, and with 3+ models (2 fall back to linear "
        "interpolation) it raises 'weighted sum of the input tensors is zero'; float32 and bf16 (eps "
        "1e-8 is representable in bf16; in fp16 the same inputs give NaN: multislerp fp16 eps)",
        "a frozen (untouched) tensor in a 3+-model merge with a base, float32 or bf16, any weights, "
        "any size (raises at 4096x4096 as at 2 entries)",
        "a ValueError aborts the merge instead of returning the base (2 models return the base)",
        AtScale("multislerp", "zero_task_vectors",
                _sft((4096, 4096), models=3, kind="untouched", params={"weight": [1.0, 1.0, 1.0]}),
                raises="ValueError"),
        upstream="frozen layers abort a 3-model multislerp merge",
    ),
    RootCause(
        "multislerp fp16 eps", "realistic",
        "eps = 1e-8 is 0 in fp16, so both of multislerp's guards vanish: a zero task vector gives "
        "norms + eps = 0 and x / 0 = NaN (the zero-sum check then compares NaN < eps, False, and "
        "goes on); a zero tangent gives sin(0) / 0 = NaN",
        "a frozen (untouched) tensor in an fp16 merge with a base, 2 or more models, any weights, any "
        "size (all NaN at 4096x4096); the zero tangent (a zero weight, no base) only on small tensors "
        "(256 entries: 6-7 of 10 draws; finite at 4096x4096)",
        "an all-NaN tensor instead of the base",
        AtScale("multislerp", "zero_task_vectors",
                _sft((4096, 4096), models=2, kind="untouched", dtype="float16", params={"weight": [1.0, 1.0]})),
        upstream="fp16 multislerp of models with frozen layers gives all-NaN tensors",
    ),
    RootCause(
        "DELLA L1 rescale", "realistic",
        "della_magprune keeps entry i with probability p_i (density +- epsilon by magnitude rank) and "
        "rescales all kept entries by one L1 ratio, not by 1/p_i",
        "any fine-tune, any size: smallest quarter of the entries 0.73x, largest 1.11x in expectation",
        "biased against the paper (1/p_i rescaling is unbiased per entry); mergekit documents only "
        "matching the L1 norm, which it meets exactly (|merged|_1 / |tv|_1 = 1 - 1.3e-7 at 4096x4096)",
        AtScale("della", "rescale_unbiased", _sft((64, 4096), params={"density": [0.5], "weight": [1.0]}),),
        upstream="a documentation gap: say that DELLA's rescaling matches L1, not the paper's 1/p_i",
    ),
    RootCause(
        "nearswap fp16 reciprocal", "degenerate",
        "t / |a-b| runs as reciprocal(|a-b|.clamp(1e-6)) * t: the reciprocal overflows fp16 for "
        "|a-b| < 1/65504 and inf * t is NaN at t = 0 only",
        "t = 0 exactly (a config that asks for the base); any t > 0 is finite",
        "NaN where model and base are within 1.5e-5 instead of the base (1.5% of entries at SFT deltas)"),
    RootCause(
        "model_stock fp16 product underflow", "degenerate",
        "model_stock multiplies fp16 offsets entry by entry: products under 6e-8 are 0",
        "delta std <= 2e-5 (25x below SFT): cos = 0 and the merge is the base; at SFT deltas the fp16 dot "
        "is right to 1e-4", "the base instead of the Model Stock interpolation"),
    RootCause(
        "karcher bf16 dot", "degenerate",
        "karcher_merge_tensors takes torch.dot(mean, unit) of bf16 vectors, a bf16 scalar: below 1 it "
        "can only be 0.99609 or 1.0, so theta = arccos(dot) is 0 (that model is skipped) or 0.088 for "
        "true angles of 0.03-0.07; one model skipped and the other over-weighted pull the iterate off "
        "(a float32 dot alone fixes it on 5 of 5 seeds)",
        "bf16 tensors of ~256 entries at SFT deltas (3 of 5 seeds), where the angles to the mean reach "
        "0.06; holds at 1024, 4096, 64x4096 and 4096x4096 entries (SFT 1e-3 and 2e-3, CPT 3e-2, 2-3 "
        "models: every dot rounds to 1.0, no iteration, and the normalised mean is the answer)",
        "7-12 of 256 entries more than 8 eps off the float32 Karcher mean"),
    RootCause(
        "model_stock absolute clamp", "degenerate",
        "the norm product is clamped at an absolute 1e-6", "offset norms under 1e-3 (delta * sqrt(n) < 1e-3)",
        "cosine shrunk, merge drawn to the base; not scale-equivariant"),
    RootCause("sce fp16 squares", "degenerate", "sce_weight squares fp16 task vectors: past 256 they overflow",
              "task-vector entries over 256", "all-NaN tensor"),
    RootCause("sce zero variance", "degenerate",
              "select_topk counts only entries of non-zero variance across task vectors",
              "fine-tunes whose task vectors agree exactly", "keeps nothing (merge = base)"),
    RootCause("fp16 task vector overflow", "degenerate",
              "task vectors (model - base) are computed in the input dtype", "entries near +-32768 in fp16",
              "Inf/NaN though the merge fits fp16"),
    RootCause("L1 rescale on tiny tensors", "degenerate", "L1-norm matching is biased O(1/n)",
              "tensors of a few entries", "0.75x on 2 entries, within 1% from 256"),
    RootCause("all-zero weights", "degenerate", "normalising divides by the sum of the weights",
              "every weight 0", "NaN instead of an error"),
    RootCause("absolute epsilon", "degenerate", "absolute epsilons on norms (karcher tol 1e-5, multislerp eps 1e-8)",
              "tensor norms ~1e-7..1e-5", "not scale-equivariant"),
    RootCause("karcher antipodal", "degenerate", "the iteration starts from the first model",
              "antipodal inputs (A and -A)", "order-dependent result"),
    RootCause("della one-entry rows", "degenerate", "rank normalisation of a one-entry row is 0/0",
              "rows of one entry", "bernoulli(NaN) raises RuntimeError"),
)
ROOTS: dict[str, RootCause] = {r.key: r for r in ROOT_CAUSES}


def cells(root: str) -> list[KnownViolation]:
    """The cells of KNOWN where the root cause ``root`` shows."""
    return [k for k in KNOWN if k.root == root]


#: The findings table's columns (``table``); bench/operator_findings.py adds "verified at size".
TABLE_COLUMNS = ("#", "finding (label)", "root cause", "realistic trigger (delta scale, size)",
                 "mergekit vs documented contract", "cells")


def table_rows() -> list[list[str]]:
    """One row per root cause, from the registry alone (no mergekit run): TABLE_COLUMNS."""
    return [[str(number), f"{root.key} ({root.label})", root.cause, root.trigger, root.behaviour,
             str(len(cells(root.key)))] for number, root in enumerate(ROOT_CAUSES, 1)]


def table(rows: list[list[str]] | None = None, columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    """The findings table in Markdown: what docs/operators.md's generated block
    ``operator-findings`` holds (tests/test_operator_kit.py checks it; bench/operator_findings.py
    --write rewrites it)."""
    def line(cells_: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells_) + " |"

    rows = table_rows() if rows is None else rows
    labels = [r.label for r in ROOT_CAUSES]
    aligned = ["---:" if c in ("#", "cells") else "---" for c in columns]
    return "\n".join([line(list(columns)), "|" + "|".join(aligned) + "|", *map(line, rows), "",
                      f"{len(ROOT_CAUSES)} findings (root causes): {labels.count('realistic')} realistic, "
                      f"{labels.count('degenerate')} degenerate."]) + "\n"


class UnrelatedFailure(Exception):
    """A replayed finding failed, but not with its own violation: the operator raised something
    the finding is not about. Not a PropertyViolation, so ``xfail(raises=PropertyViolation)`` does
    not take it for the finding (an operator that raises on every call keeps no xfail green)."""


def _raised(error: BaseException) -> OperatorRaised | None:
    """The OperatorRaised in `error`'s chain of causes (the runner re-raises with figures)."""
    seen = error
    while seen is not None:
        if isinstance(seen, OperatorRaised):
            return seen
        seen = seen.__cause__
    return None


@contextlib.contextmanager
def only_its_own(known: KnownViolation | None) -> Iterator[None]:
    """Let through only ``known``'s own violation: an operator that raised counts as the finding
    only when the finding is that it raises (``known.raises`` names the exception); any other
    raise becomes ``UnrelatedFailure``. With no finding, nothing is changed."""
    try:
        yield
    except PropertyViolation as error:
        raised = _raised(error)
        if known is None or raised is None:
            raise
        cause = type(raised.__cause__).__name__ if raised.__cause__ is not None else "an exception"
        if known.raises and cause == known.raises:
            raise
        raise UnrelatedFailure(f"{known.id}: the operator raised {cause} ({raised.detail}); the finding is "
                               f"{known.reason!r}, not a raise: fix the operator or the entry") from error


def reseeded(known: KnownViolation, seed: int) -> dict[str, Any]:
    """``known``'s example with other random draws: a realistic recipe gets ``data_seed=seed``
    (other tensors of the same recipe), a stochastic method's call ``seed * 10**6`` (another
    window of its random stream). A finding robust to the random stream fails on every one."""
    inputs: MergeInputs = known.example["inputs"]
    if inputs.source is not None and inputs.source.startswith("RealisticInputs("):
        recipe_text, rest = inputs.source.split(".build()", 1)
        recipe = eval(recipe_text, {"RealisticInputs": RealisticInputs})  # noqa: S307 - our own repr
        source = f"{dataclasses.replace(recipe, data_seed=seed)!r}.build(){rest}"
        inputs = eval(source, {"RealisticInputs": RealisticInputs})  # noqa: S307 - our own repr
    if known.method.startswith(("dare", "della")):
        inputs = inputs.with_seed(inputs.seed + seed * 10**6)
    return {**known.example, "inputs": inputs}


# ----------------------------------------------------------------------------- reproductions


def _tensor_source(inputs: MergeInputs) -> tuple[str, str]:
    """Python defining ``base`` and ``models`` for ``inputs``, and the mergekit parameters."""
    source = inputs.source or ""
    if source.startswith("RealisticInputs("):
        recipe = eval(source.split(".build()")[0], {"RealisticInputs": RealisticInputs})  # noqa: S307 - our repr
        lines = [recipe.torch_source()]
        if ".copies_of_first()" in source:
            lines.append("models = [models[0]] * len(models)")
        if ".at_base()" in source:
            lines.append("models = [base] * len(models)")
        if not recipe.with_base:
            lines.append("base = None")
    else:
        dtype = str(inputs.dtype).removeprefix("torch.")
        lines = [f"models = [torch.tensor(m, dtype=torch.{dtype}) for m in "
                 f"{_literal([m.tolist() for m in inputs.models])}]",
                 "base = None" if inputs.base is None else
                 f"base = torch.tensor({_literal(inputs.base.tolist())}, dtype=torch.{dtype})"]
    return "\n".join(lines), _literal(dict(inputs.params))


def reproduction(known: KnownViolation) -> str:
    """Pasteable Python that shows ``known`` with torch and mergekit alone (no mergeqa)."""
    inputs: MergeInputs = known.example["inputs"]
    tensors, params = _tensor_source(inputs)
    method = known.method
    lines = ["import torch", "from mergekit.merge_methods import merge_tensors", "", tensors,
             f"params = {params}",
             "def merge(models, base, **extra):",
             "    tensors = list(models) if base is None else [base, *models]",
             f"    return merge_tensors(tensors, {method!r}, parameters={{**params, **extra}},",
             "                         base_index=None if base is None else 0)"]
    prop = known.property
    seeded = f"torch.manual_seed({inputs.seed}); " if known.method.startswith(("dare", "della")) else ""
    if prop in ("fp16_finite", "low_precision_agrees"):
        lines += [f"{seeded}low = merge(models, base)",
                  f"{seeded}ref = merge([m.float() for m in models], None if base is None else base.float())",
                  "print('finite:', bool(low.isfinite().all()), 'float32 finite:', bool(ref.isfinite().all()))",
                  "anchor = base.double() if base is not None else 0",
                  "v = (ref.double() - anchor).flatten()",
                  "low_v = (low.double() - anchor).flatten()",
                  "print('task vector, low precision / float32:', float(low_v @ v / (v @ v)))"]
    elif prop in ("finite_on_degenerate",):
        lines += ["out = merge(models, base)", "print('finite:', bool(out.isfinite().all()), out.flatten()[:4])"]
    elif prop == "dtype_preserved":
        lines += ["print(models[0].dtype, '->', merge(models, base).dtype)"]
    elif prop in ("idempotent", "zero_task_vectors", "endpoints"):
        want = {"idempotent": "models[0]", "zero_task_vectors": "base"}.get(
            prop, "base" if known.example.get("returns") == "base" else f"models[{known.example.get('returns')}]")
        lines += ["out = merge(models, base)",
                  f"print('max |merge - {want}|:', float((out.double() - {want}.double()).abs().max()))"]
    elif prop == "scale_equivariant":
        scale = known.example["scale"]
        lines += [f"c = {scale!r}", "out = merge(models, base) * c",
                  "scaled = merge([m * c for m in models], None if base is None else base * c)",
                  "print('max |merge(c x) - c merge(x)| / c:', float((scaled - out).abs().max() / c))"]
    elif prop == "order_invariant":
        perm = known.example["permutation"]
        lines += ["out = merge(models, base)", f"swapped = merge([models[i] for i in {perm}], base)",
                  "print('max |difference|:', float((out - swapped).abs().max()))"]
    elif prop == "density_kept":
        lines += ["out = merge(models, base)",
                  "print('kept fraction:', float((out - base).count_nonzero()) / out.numel(), 'params:', params)"]
    elif prop == "rescale_unbiased":
        lines += ["tv = (sum(m.double() for m in models) / len(models) - base.double()).flatten()",
                  "classes = tv.abs().argsort().tensor_split(min(4, tv.numel()))",
                  "draws = []",
                  "for seed in range(1000):",
                  "    torch.manual_seed(seed)",
                  "    y = (merge(models, base).double() - base.double()).flatten()",
                  "    draws.append([float(y[g] @ tv[g] / (tv[g] @ tv[g])) for g in classes])",
                  "print('E[merged tv] / tv by |tv| class:', torch.tensor(draws).mean(0))"]
    return "\n".join(lines) + "\n"
