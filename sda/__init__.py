"""sda: Synthetic-Domain Alignment for diffusion-driven test-time adaptation (core library).

No Prefect, no DVC in here. Functions take explicit, typed arguments; the params file is read (and
its profile switched) only by :func:`sda.config.load_params` / :func:`sda.domains.set_profile`, at
the path their caller gives.
"""

__version__ = "0.1.0"
