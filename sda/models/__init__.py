"""The models: the diffusion model folder and its one schedule and training loop, guided-diffusion
(ADM) and DiT checkpoints, and the timm classifiers."""
