"""An exponential moving average (EMA) of the weights, updated after every optimizer step.

The averaged copy is what validation scores and what a checkpoint's model.safetensors holds (so predict,
evaluate and serve use it); the live weights travel in state.safetensors as "raw.*" (training.loop.snapshot).
Built on torch.optim.swa_utils.AveragedModel: its first update copies the live weights, later ones call
torch's EMA function (get_ema_multi_avg_fn) with the decay of the moment. BatchNorm buffers: with `buffers`
(plan setting ema_buffers, on for plans of version 4) the floating ones (running mean/var) follow the same
average as the weights (AveragedModel's use_buffers=True, as timm's ModelEmaV2 does) and the integer one
(num_batches_tracked) is copied, since torch's EMA function lerps, which integer tensors cannot. Without it
each update copies them from the live model (use_buffers=False): the averaged weights are then validated with
the live weights' running mean/var, as plans of version <= 3 were trained.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class Ema:
    """EMA of `module`'s parameters with decay min(decay, (1 + n) / (10 + n)), n = the updates so far (the
    first update, a copy, counts): TensorFlow's num_updates rule (tf.train.ExponentialMovingAverage), so a
    short run is not dominated by its first weights."""

    def __init__(self, module: torch.nn.Module, decay: float, buffers: bool = False):
        self.decay = float(decay)
        self.averaged = AveragedModel(module, multi_avg_fn=self._average, use_buffers=buffers)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged copy of the model: validated and saved."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)  # a CPU tensor: reading it never waits for the GPU

    def decay_now(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    def _average(self, ema_params, live_params, n_averaged) -> None:
        # AveragedModel calls this once per (device, dtype) group; integer buffers are counters: copied
        if not ema_params[0].is_floating_point():
            torch._foreach_copy_(ema_params, live_params)
            return
        # get_ema_multi_avg_fn fixes its decay when built; the warm-up needs one per update
        get_ema_multi_avg_fn(self.decay_now())(ema_params, live_params, n_averaged)

    def update(self, live: torch.nn.Module) -> None:
        """After an optimizer step."""
        self.averaged.update_parameters(live)

    def load(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        """Back to a checkpoint's averaged weights (its model.safetensors) and update count."""
        self.module.load_state_dict(weights)
        self.averaged.n_averaged.fill_(int(updates))
