"""Our callbacks, one module per job (Lightning's stock ones are configured in conf/callbacks/ as they are):
checkpoint_io (atomic writes), stops (interrupts, divergence), ema, samples, curves, progress."""
