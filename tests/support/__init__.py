"""What the tests share (and ``bench/`` reuses): repository copies and commands (:mod:`.repo`),
generated data sets (:mod:`.datasets`), tiny models of the paper's architectures (:mod:`.tiny_models`),
torch's process-wide settings put back (:mod:`.torch_state`), stream batches for the test-time methods'
tests (:mod:`.methods`, imported from there: it imports the method registry)."""

from tests.support.datasets import (IMAGENET_CORRUPTIONS, SHAPES, WNIDS, colour_classes, make_digits_set,
                                    make_folder_set, make_imagenet_assets)
from tests.support.repo import (IMAGENET_TINY, ROOT, STAGES, TINY, built_once, copy_repo, free_port,
                                make_imagenet_repo, make_tiny_repo, project_files, repro_every_stage, sh,
                                subprocess_env)
from tests.support.tiny_models import ADM_TINY_FLAGS, DIT_TINY, DIT_XL2, SD_VAE, VAE_TINY, make_diffusion_models

__all__ = ["ADM_TINY_FLAGS", "DIT_TINY", "DIT_XL2", "IMAGENET_CORRUPTIONS", "IMAGENET_TINY", "ROOT", "SD_VAE", "SHAPES",
           "STAGES", "TINY", "VAE_TINY", "WNIDS", "built_once", "colour_classes", "copy_repo", "free_port",
           "make_diffusion_models", "make_digits_set", "make_folder_set", "make_imagenet_assets", "make_imagenet_repo",
           "make_tiny_repo", "project_files", "repro_every_stage", "sh", "subprocess_env"]
