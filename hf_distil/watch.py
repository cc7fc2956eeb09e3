"""Non-finite loss terms, watched on the device: no host sync in the step.

Each training micro-batch adds its terms to the open window of one optimizer update (device tensors only). The
window is closed after the optimizer step: nan_policy="skip" reads one flag before it (reduced over ranks) and drops
the whole update; "stop" is checked where Trainer syncs anyway (logging) and before any checkpoint is written, on
every rank. The same sums give the logged mean of each term over the logging window.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from .objective import sums_dtype
from .terms import names

logger = logging.getLogger("hf_distil")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf during training (nan_policy="stop")."""


class TermWatch:
    """The per-term sums of the open update window and of the logging window, and what was non-finite where.

    `watch` runs in every training micro-batch; `decide_update` / `close_window` around each optimizer step
    (`UpdateWindowCallback`); `log_means` at each log; `raise_if_non_finite` at a log, before a checkpoint and at the
    end of training.
    """

    def __init__(self, policy: str, max_consecutive_skips: int = 10):
        self.policy = policy
        # nan_policy="skip": this many skipped updates in a row mean a diverging run, not a rare bad batch: stop.
        self.max_consecutive_skips = max_consecutive_skips
        self._window_sums = self._window_bad = self._window_values = None
        self._term_sums = self._bad_terms = self._bad_values = self._bad_step = None
        self._term_steps, self.skipped, self._skips_in_a_row, self.skip_update = 0, 0, 0, False

    def _reset_window(self, device):
        n = len(names())
        dtype = sums_dtype(device)
        self._window_sums = torch.zeros(n, dtype=dtype, device=device)
        self._window_bad = torch.zeros(n, dtype=torch.bool, device=device)
        self._window_values = torch.zeros(n, dtype=dtype, device=device)

    def watch(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Add this micro-batch's terms to the open window; returns a device bool: all terms finite."""
        device = next(iter(terms.values())).device
        if self._window_sums is None or self._window_sums.device != device:
            self._reset_window(device)
            self._term_sums = torch.zeros_like(self._window_sums)
            self._bad_terms = torch.zeros_like(self._window_bad)
            self._bad_values = torch.zeros_like(self._window_values)
            self._bad_step = torch.full((), -1, dtype=torch.long, device=device)
        zero = torch.zeros((), dtype=self._window_sums.dtype, device=device)
        values = torch.stack([terms[n].detach().to(zero.dtype) if n in terms else zero for n in names()])
        finite = torch.isfinite(values)
        newly = ~finite & ~self._window_bad
        self._window_values = torch.where(newly, values, self._window_values)
        self._window_bad |= ~finite
        self._window_sums += torch.where(finite, values, zero)
        return finite.all()

    def decide_update(self, optimizer, accelerator, world_size: int) -> None:
        """nan_policy=skip: drop the coming update on every rank when any rank met a non-finite term in its window.

        Gradients set to None are skipped by torch optimizers (no step, no state change); under fp16 loss scaling
        the grad scaler skips such a step by itself.
        """
        if self.policy != "skip" or self._window_bad is None:
            self.skip_update = False
            return
        bad = self._window_bad.any().float().reshape(1)
        if world_size > 1:
            bad = accelerator.gather(bad).max().reshape(1)
        self.skip_update = bool(bad.item())  # the one host read per update, only with nan_policy=skip
        if self.skip_update and accelerator.scaler is None:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None

    def close_window(self, step: int, accelerator, last_checkpoint) -> None:
        """After the optimizer step `step`: count the window in the logged means, or remember what was non-finite.

        `last_checkpoint()` names the last complete checkpoint for the messages.
        """
        if self._window_sums is None:
            return
        scaler_applied = accelerator.scaler is not None and not accelerator.optimizer_step_was_skipped
        if self.skip_update and scaler_applied:
            raise NonFiniteLossError(
                f"nan_policy=skip: a loss term was NaN/inf at step {step} but the fp16 grad scaler applied the update "
                "anyway; training stopped. Use bf16, lower the learning rate, or pass --nan_policy stop."
            )
        if self.skip_update:
            self.skipped += 1
            self._skips_in_a_row += 1
            logger.warning("nan_policy=skip: skipped the update of step %d (a loss term was NaN/inf).", step)
            if self._skips_in_a_row >= self.max_consecutive_skips:
                raise NonFiniteLossError(
                    f"nan_policy=skip skipped {self._skips_in_a_row} updates in a row (steps "
                    f"{step - self._skips_in_a_row + 1}-{step}): the run diverges, it does not just meet a rare bad "
                    f"batch; training stopped and nothing was saved after it (last complete checkpoint: "
                    f"{last_checkpoint() or 'none yet'}). Lower the learning rate, use bf16 rather than fp16, or "
                    "check the data."
                )
        else:
            self._skips_in_a_row = 0
            self._term_sums += self._window_sums
            self._term_steps += 1
            newly = self._window_bad & ~self._bad_terms
            self._bad_values = torch.where(newly, self._window_values, self._bad_values)
            first = (self._bad_step < 0) & self._window_bad.any()
            self._bad_step = torch.where(first, torch.full_like(self._bad_step, step), self._bad_step)
            self._bad_terms |= self._window_bad
        self.skip_update = False
        self._reset_window(self._window_sums.device)

    def raise_if_non_finite(self, where: str, accelerator, world_size: int, last_checkpoint) -> None:
        """nan_policy=stop: raise on every rank once any rank applied an update with a non-finite term."""
        if self._bad_terms is None:
            return
        dtype = self._bad_values.dtype
        flags = torch.cat([self._bad_terms.to(dtype), self._bad_values, self._bad_step.to(dtype).reshape(1)])
        rows = accelerator.gather(flags.unsqueeze(0)) if world_size > 1 else flags.unsqueeze(0)
        n = len(names())
        for row in rows.tolist():
            if any(row[:n]):
                bad = ", ".join(f"{name}_loss={value:g}"
                                for name, flag, value in zip(names(), row[:n], row[n:2 * n]) if flag)
                raise NonFiniteLossError(
                    f"Non-finite loss term ({bad}) at step {int(row[-1])}; training stopped {where}, and no checkpoint "
                    f"was saved after it (last complete checkpoint: {last_checkpoint() or 'none yet'}). Lower the "
                    "learning rate, use bf16 rather than fp16, check the data, or pass --nan_policy skip."
                )

    def log_means(self, weights: dict[str, float], device, accelerator, world_size: int) -> dict[str, float]:
        """`{name}_loss` of each term with a weight > 0: its mean over the applied updates since the last log (over
        all ranks), and `nan_skipped` when updates were skipped. Resets the logging window.

        Every rank gathers the same fixed vector, even one that skipped all its micro-batches, so the collective never
        mismatches.
        """
        index = [i for i, n in enumerate(names()) if weights[n] > 0]
        dtype = sums_dtype(device)
        sums = self._term_sums if self._term_sums is not None else torch.zeros(len(names()), dtype=dtype)
        values = torch.cat([sums.to(device=device, dtype=dtype)[index],
                            torch.tensor([float(self._term_steps)], dtype=dtype, device=device)])
        if world_size > 1:
            gathered = accelerator.gather(values.unsqueeze(0))
            values = torch.cat([gathered[:, :-1].mean(0), gathered[:, -1:].max(0).values])
        values = values.tolist()
        logs = {}
        if values[-1] > 0:
            for i, value in zip(index, values[:-1]):
                logs[f"{names()[i]}_loss"] = value / values[-1]
        if self._term_sums is not None:
            self._term_sums.zero_()
        self._term_steps = 0
        if self.skipped:
            logs["nan_skipped"] = self.skipped
        return logs


class UpdateWindowCallback(TrainerCallback):
    """Closes the window of loss terms of each optimizer update (see TermWatch)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        t = self.trainer
        t.term_watch.decide_update(t.optimizer, t.accelerator, t.args.world_size)

    def on_optimizer_step(self, args, state, control, **kwargs):
        t = self.trainer
        # Trainer advances global_step after this callback
        t.term_watch.close_window(state.global_step + 1, t.accelerator, t.last_complete_checkpoint)
