"""Ctrl-C during training: finish the step, save a checkpoint, stop with a resumable run.

The first SIGINT only sets a flag; the training loop checks it between steps (where the
model, optimizer, weighter and position agree), saves ``checkpoints/last.pt`` and raises
:class:`TrainingInterrupted`. A second Ctrl-C stops at once (KeyboardInterrupt); the
previous checkpoint is still intact, as checkpoints are written atomically.
"""
from __future__ import annotations

import signal
import sys
import threading


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after saving ``checkpoint`` at ``step``."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"interrupted after step {step}; checkpoint {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


class InterruptGuard:
    """Context manager: while active, the first Ctrl-C sets ``requested`` instead of raising.

    Only installed in the main thread and only over Python's default SIGINT handler (an
    application's own handler is left alone; ``requested`` then stays False).
    """

    def __init__(self, message: str = "stopping after this step and saving a checkpoint "
                                      "(Ctrl-C again to stop at once)"):
        self.message = message
        self.requested = False
        self._previous = None

    def __enter__(self) -> "InterruptGuard":
        self.requested = False
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nCtrl-C: {self.message}", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
