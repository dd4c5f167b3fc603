"""The batch benchmark (``make batch-bench``): interactive traffic protected, ETA accuracy."""
