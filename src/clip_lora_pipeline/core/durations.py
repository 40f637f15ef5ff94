"""A duration as a person reads it, for log lines and the run's closing summary, and
the pace of a loop's first steps that estimates the rest."""


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


class Pace:
    """How long the steps left will take, from the seconds of the first ``timed`` steps
    after ``warmup`` (which fill caches and pick kernels). Validation and checkpoints are
    not in it: the loop times the steps alone."""

    def __init__(self, warmup: int = 2, timed: int = 8):
        self.warmup, self.timed, self.seconds = warmup, timed, []

    def add(self, seconds: float) -> float | None:
        """The seconds of one more step; the mean step, once, when enough are timed."""
        if self.warmup:
            self.warmup -= 1
            return None
        self.seconds.append(seconds)
        return sum(self.seconds) / self.timed if len(self.seconds) == self.timed else None
