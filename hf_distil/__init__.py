"""hf-distil: distil a large masked-language model into a small one with a drop-in `Trainer`."""

from .arguments import DistillationArguments
from .student import create_student
from .trainer import DistillationTrainer

__all__ = ["DistillationArguments", "DistillationTrainer", "create_student"]
__version__ = "0.1.0"
