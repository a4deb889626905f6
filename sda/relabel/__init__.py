"""Relabelling new target images with SDA, exactly once: the inbox, the Parquet stores, the
predictor, the job and its reports, and a job for a checkout (:mod:`sda.relabel.service`)."""
