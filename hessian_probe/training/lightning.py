"""The sharpness monitor as a PyTorch Lightning callback (Lightning is optional: this module
imports it only when a callback is made).

    trainer = lightning.Trainer(callbacks=[sharpness_callback(SharpnessMonitor(model, loss, data))])

After every optimizer step the monitor is given the trainer's global step and the first optimizer;
its rows go to its CSV / TensorBoard / W&B as usual, and to the LightningModule's ``log`` as
``curvature/lambda_max``.
"""

from __future__ import annotations

from typing import Any

from .monitor import SharpnessMonitor


def _lightning() -> Any:
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            raise ImportError("the Lightning callback needs lightning: pip install lightning") from None
    return pl


def sharpness_callback(monitor: SharpnessMonitor) -> Any:
    """A ``lightning.pytorch.Callback`` that calls ``monitor.step(global_step, optimizer)`` after
    each training batch."""
    pl = _lightning()

    class SharpnessCallback(pl.Callback):
        """Calls a hessian_probe SharpnessMonitor from Lightning's training loop."""

        def __init__(self) -> None:
            self.monitor = monitor
            self.last_step: int | None = None

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            step = trainer.global_step - 1  # global_step counts finished optimizer steps
            if step == self.last_step:  # gradient accumulation: several batches, one step
                return
            self.last_step = step
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            row = self.monitor.step(step, optimizer)
            if row is not None:
                pl_module.log("curvature/lambda_max", row.lambda_max)

    return SharpnessCallback()
