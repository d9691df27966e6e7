"""`InputError`: what the library raises for input it cannot use (a config value, a weights or checkpoint
file, images or targets), naming it. A ValueError, so callers catching ValueError keep working, yet apart
from the ValueError of a bug: the pipeline shows an InputError as one line and any other as the bug it is."""


class InputError(ValueError):
    """The message is one line naming the input (a file, a field, an image) and what is wrong with it."""
