"""The exponential moving average of the weights (callbacks.ema): Lightning's, checked and picklable."""

from __future__ import annotations

import functools
from typing import Any

from lightning.pytorch.callbacks import EMAWeightAveraging

from lit_gpt_char.errors import UserError


class PicklableEMA(EMAWeightAveraging):
    """Lightning's EMAWeightAveraging (callbacks.ema) with its decay checked, and picklable: ddp_spawn
    sends the callbacks to its worker processes, and the parent class holds a local function
    (torch's get_ema_avg_fn). A copy is the callback built again from the same arguments, which is
    all there is before training starts (the average itself is made in the workers)."""

    def __init__(self, decay: float = 0.99, **kwargs: Any):
        kwargs["decay"] = decay  # conf/callbacks/ema.yaml sets the same (a test holds them equal)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
            raise UserError(
                f"callbacks.ema.decay={decay}: must be a number in [0, 1], the old average's weight at each "
                "step (about 1 - 1/steps of memory, e.g. 0.99)"
            )
        super().__init__(**kwargs)
        self._init_kwargs = kwargs

    def __reduce__(self) -> tuple:
        return functools.partial(type(self), **self._init_kwargs), ()
