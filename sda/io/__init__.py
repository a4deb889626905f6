"""Bytes on disk: atomic outputs, images, WebDataset shard sets, resumable shard jobs on dask,
and streaming them through loader workers. Knows nothing of diffusion or SDA."""
