"""sda: Synthetic-Domain Alignment for diffusion-driven test-time adaptation (core library).

No Prefect, no DVC, no params file in here: every function takes explicit, typed arguments.
"""

__version__ = "0.1.0"
