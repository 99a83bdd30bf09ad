"""The fault a training run cannot go on from, kept free of Lightning so the commands that
report it start fast."""


class TrainingFault(RuntimeError):
    """Training cannot go on (a non-finite loss, gradient or weight); the message says where."""
