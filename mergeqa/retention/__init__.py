"""Capability retention and regression of a merge against its parents (`assess`), and the
sequential gate that stops evaluating once each comparison is decided (`early_stop`).
"""

from mergeqa.retention.assess import EXAMPLES, assess, gated_metric

__all__ = ["EXAMPLES", "assess", "gated_metric"]
