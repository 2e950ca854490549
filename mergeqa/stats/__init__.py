"""Paired statistics for comparing two models on the same items; the gate's verdicts built on
them live in `mergeqa.decision.significance`.

numpy only at import; scipy is imported inside the functions that need it.
"""

from mergeqa.stats._base import ALTERNATIVES, PairedTestResult
from mergeqa.stats.binomial import clopper_pearson_interval
from mergeqa.stats.bootstrap import (
    bootstrap_interval,
    bootstrap_means,
    mean_acceleration,
    paired_bootstrap_ci,
)
from mergeqa.stats.classic import paired_ttest, ttest_interval, wilcoxon_signed_rank
from mergeqa.stats.mcnemar import (
    discordant_counts,
    mcnemar,
    mcnemar_pvalue,
    tango_interval,
    tango_pvalue,
    tango_statistic,
)
from mergeqa.stats.multiplicity import CORRECTIONS, adjust_pvalues
from mergeqa.stats.power import minimum_detectable_effect, minimum_detectable_shift
from mergeqa.stats.signflip import SignFlipNull, signflip_interval, signflip_test
from mergeqa.stats.wilson import wilson_interval

__all__ = [
    "ALTERNATIVES",
    "CORRECTIONS",
    "PairedTestResult",
    "SignFlipNull",
    "adjust_pvalues",
    "bootstrap_interval",
    "bootstrap_means",
    "clopper_pearson_interval",
    "discordant_counts",
    "mcnemar",
    "mcnemar_pvalue",
    "mean_acceleration",
    "minimum_detectable_effect",
    "minimum_detectable_shift",
    "paired_bootstrap_ci",
    "paired_ttest",
    "signflip_interval",
    "signflip_test",
    "tango_interval",
    "tango_pvalue",
    "tango_statistic",
    "ttest_interval",
    "wilcoxon_signed_rank",
    "wilson_interval",
]
