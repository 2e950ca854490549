"""Where models come from and what they are: references to checkpoint directories (`refs`), merges
built with mergekit (`merging`), what a merge claims to be (`provenance`), devices, the run's set
of models (`session`) and the known-bad merges used in tests (`badmerges`).

`from mergeqa.models import ModelRef` is the public path to the reference type.
"""

from mergeqa.models.refs import (
                                 MODEL_DIR_HELP,
                                 TOKENIZER_FILES,
                                 WEIGHT_GLOBS,
                                 ModelRef,
                                 check_safetensors,
                                 content_files,
                                 content_hash,
                                 resolve_device,
                                 validate_model_dir,
                                 weight_files,
)

__all__ = ["MODEL_DIR_HELP", "TOKENIZER_FILES", "WEIGHT_GLOBS", "ModelRef", "check_safetensors", "content_files",
           "content_hash", "resolve_device", "validate_model_dir", "weight_files"]
