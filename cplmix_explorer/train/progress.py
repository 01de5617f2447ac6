"""A tqdm progress bar driven by training events (terminal and notebooks via ``tqdm.auto``)."""

from __future__ import annotations

from tqdm.auto import tqdm

from .events import Evaluation, EventBus, StepMetrics, TrainingFinished, TrainingRestarted, TrainingStarted


class ProgressBar:
    """Subscribe to an :class:`EventBus`; shows steps, loss, coupling distance and arm agreement."""

    def __init__(self, events: EventBus, **tqdm_options):
        self._options = {"unit": "step", "dynamic_ncols": True, **tqdm_options}
        self._bar: tqdm | None = None
        self._postfix: dict[str, str] = {}
        self._unsubscribe = events.subscribe(self._on_event)

    def _on_event(self, event) -> None:
        if isinstance(event, TrainingRestarted) and self._bar is not None:
            self._bar.n = event.start_step
            self._bar.refresh()
        elif isinstance(event, TrainingStarted):
            options = {"desc": f"cplmix [{event.device}]", **self._options}
            self._bar = tqdm(total=event.total_steps, initial=event.start_step, **options)
        elif self._bar is None:
            return
        elif isinstance(event, StepMetrics):
            self._bar.update(len(event.steps))
            self._postfix["loss"] = f"{event.column('loss')[-1]:.4g}"
            self._postfix["coupling"] = f"{event.column('coupling')[-1]:.3g}"
            self._bar.set_postfix(self._postfix, refresh=False)
        elif isinstance(event, Evaluation) and event.mean_agreement is not None:
            self._postfix["agreement"] = f"{event.mean_agreement:.2f}"
            self._bar.set_postfix(self._postfix, refresh=False)
        elif isinstance(event, TrainingFinished):
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._unsubscribe()
        if self._bar is not None:
            self._bar.close()
