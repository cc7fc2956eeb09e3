"""The errors a user can fix: `hf-distil` and `hf-distil-finetune` print them as one line and exit 2.

Everything else (a bug, a crash deep in torch) keeps its traceback. All are ValueError subclasses, so code that
caught ValueError before still catches them.
"""


class DistillationConfigError(ValueError):
    """A user-fixable problem (arguments, files, models, Hub access); the message names the problem and the fix."""


class ArgumentError(DistillationConfigError):
    """An argument value that cannot work (a batch size of 0, an infinite temperature, …)."""


class TeacherLoadError(DistillationConfigError):
    """The teacher cannot be loaded or used as given."""


class TeacherNotFoundError(TeacherLoadError, FileNotFoundError):
    """The teacher is neither a local folder with a config.json nor a reachable Hub id."""


class ModelMismatchError(DistillationConfigError):
    """Teacher, student and tokenizer cannot be combined as asked (vocabulary, width, depth, layer choice)."""


class HubError(DistillationConfigError):
    """`push_to_hub` cannot work from here (offline, no token, a strategy that would upload pickles)."""


class RecipeError(DistillationConfigError):
    """A user-fixable problem with a command line's configuration, reported as one line."""
