"""User-facing errors.

A :class:`CplmixError` is a user mistake or an environment problem (bad file, bad option, no GPU) that
the CLI prints as one line and exits with code 2; the app shows it as a message. Anything else is a bug.
"""


def describe_failure(error: BaseException) -> str:
    """One line for an unexpected error (not a :class:`CplmixError`): its type and the first line of its
    message, e.g. ``"ValueError: bad shape"`` (the type alone when the message is empty)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


class CplmixError(Exception):
    """A problem the user can fix; its message is one line that names the problem."""

    exit_code = 2


class TrainingInterrupted(CplmixError):
    """Training stopped by a user request or a signal; the last checkpoint is kept."""

    exit_code = 130


class NonFiniteLossError(CplmixError):
    """A loss term became NaN or Inf; carries the step and the term that failed."""

    def __init__(self, step: int, terms: list[str]):
        self.step = step
        self.terms = terms
        super().__init__(
            f"training stopped: non-finite loss at step {step} (term: {', '.join(terms)}); "
            "lower --lr or check the input data; the last good checkpoint is kept"
        )
