"""The argument classes of the `hf-distil` command and the config + flags parser both command lines use.

`CONFIG.yaml [--flag value ...]` or flags alone, for any `HfArgumentParser` dataclasses; flags override the config;
a mistake in either is one line (RecipeError) before anything loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .arguments import DistillationArguments
from .card import DEFAULT_LICENSE, LANGUAGE_RE, LICENSE_RE
from .data import DataArguments, DataError
from .data.utf8 import bom_encoding
from .errors import DistillationConfigError, RecipeError

# What `main` reports as one line (exit 2); anything else is a bug and keeps its traceback.
USER_ERRORS = (DistillationConfigError, DataError)
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
@dataclass
class ModelArguments:
    """Which student, which tokenizer (the teacher is `teacher_model_name_or_path` of DistillationArguments)."""

    student_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from this existing student instead of initialising one from the teacher."},
    )
    student_num_layers: int = field(default=6, metadata={"help": "Layers of the student built from the teacher."})
    student_layers: str = field(
        default="every_other",
        metadata={"help": "Teacher layers that initialise the student: every_other (1,3,5,…), distilbert "
                  "(0,2,4,7,9,11) or comma-separated indices, e.g. 0,3,6,9."},
    )
    student_hidden_size: int | None = field(
        default=None,
        metadata={"help": "Width of a narrower student (e.g. 312): a width, FFN size or head count other than the "
                  "teacher's builds a randomly initialised student (TinyBERT); default: the teacher's."},
    )
    student_intermediate_size: int | None = field(
        default=None, metadata={"help": "Feed-forward size of a narrower student (e.g. 1200); default: the teacher's."}
    )
    student_num_attention_heads: int | None = field(
        default=None, metadata={"help": "Attention heads of a narrower student (e.g. 12); default: the teacher's."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel of teacher and student: sdpa, eager, flash_attention_2, flash_attention_3, "
                  "flex_attention, or auto (flash_attention_2 where a CUDA GPU, the flash-attn package and bf16/fp16 "
                  "are there and the model supports it: attention over the real tokens only, unpadded; the model's "
                  "default otherwise). Default: transformers' choice for the model (sdpa where supported)."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, when not the teacher's own."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow code from the model repositories to run (teacher, student, tokenizer)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are cached."})


@dataclass
class RunArguments:
    """How this run treats its output folder and its card."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow writing into a non-empty output_dir that holds no checkpoint to resume."},
    )
    evaluate_before_training: bool = field(
        default=True,
        metadata={"help": "Evaluate the freshly initialised student first, to show what distillation gained."},
    )
    card_license: str | None = field(
        default=None,
        metadata={"help": f"License in the model card's front matter. Unset: {DEFAULT_LICENSE}, or 'other' when the "
                  "corpus comes with a data-use note (MIMIC-III: share the model only as its agreement permits)."})
    card_language: str = field(default="en", metadata={"help": "Language code(s), comma-separated, for the card."})


ARGUMENT_CLASSES = (ModelArguments, DataArguments, DistillationArguments, RunArguments)


def _field_names() -> set[str]:
    return {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise RecipeError(f"{self.name}:{key_node.start_mark.line + 1}: {key!r} is set twice (also on line "
                                  f"{seen[key] + 1}); keep one.")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _json_pairs(path):
    def unique(pairs):
        keys = [key for key, _ in pairs]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:
            raise RecipeError(f"{path}: {', '.join(map(repr, twice))} set twice; keep one.")
        return dict(pairs)
    return unique


def _read_config(path: str, known: set[str] | None = None, prog: str = "hf-distil") -> dict:
    """The config's mapping; a syntax error names the file and line, an unknown key the closest known one."""
    if not os.path.isfile(path):
        raise RecipeError(f"Config file {path!r} not found: pass the path of a .yaml or .json config.")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Windows Notepad) is dropped, for JSON as for YAML
    except UnicodeDecodeError as err:
        encoding = bom_encoding(data)
        if encoding:  # "Unicode" from Windows Notepad or PowerShell: latin1 would be the wrong source encoding
            stem, ext = os.path.splitext(path)  # the converted copy keeps .yaml / .json, which picks the parser
            raise RecipeError(
                f"{path} is {encoding.upper()} (it starts with a byte-order mark), not UTF-8; re-encode it, e.g. "
                f"iconv -f {encoding} -t utf-8 {path} > {stem}.utf8{ext}"
            ) from None
        line = data[:err.start].count(b"\n") + 1
        raise RecipeError(
            f"{path} is not UTF-8: line {line} has byte 0x{data[err.start]:02x}; re-encode it, e.g. "
            f"iconv -f latin1 -t utf-8 {path} > {path}.utf8 (-f cp1252 for Windows files)."
        ) from None
    try:
        if path.endswith(".json"):
            values = json.loads(text, object_pairs_hook=_json_pairs(path))
        else:
            loader = _UniqueKeyLoader(text)
            loader.name = path
            try:
                values = loader.get_single_data()
            finally:
                loader.dispose()
    except json.JSONDecodeError as err:
        raise RecipeError(f"{path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg}); fix the config.") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{where}: invalid YAML ({problem}); fix the config.") from err
    if not isinstance(values, dict):
        raise RecipeError(f"Config {path!r} must be a mapping of argument names to values.")
    known = _field_names() if known is None else known
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" See `{prog} --help` for the accepted names."
            raise RecipeError(f"Unknown key {key!r} in {path}.{hint}")
    return values


def parse_config_and_flags(classes, argv: list[str], prog: str = "hf-distil", required: tuple[str, ...] = ()):
    """`CONFIG.yaml [--flag value ...]` or flags alone, for any `HfArgumentParser` dataclasses; flags override the
    config. Mistakes in either raise RecipeError (or the dataclasses' own error types)."""
    argv = list(argv)
    parser = HfArgumentParser(classes, prog=prog)

    def refuse(message: str):  # argparse's own mistakes (a bad value, a missing one): one line, no usage screen
        flag = message.split(":", 1)[0].removeprefix("argument ").split("/", 1)[0]
        hint = (f" (a value starting with '-' is written {flag}=VALUE)"
                if "expected one argument" in message else "")
        raise RecipeError(f"{message}{hint}; see `{prog} --help`.")

    parser.error = refuse
    known = {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}
    config = {}
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        config_path, argv = argv[0], argv[1:]
        config = _read_config(config_path, known, prog)
    late = [a for i, a in enumerate(argv) if a.endswith(CONFIG_SUFFIXES) and not a.startswith("-")
            and i > 0 and not argv[i - 1].startswith("-")]  # not the value of a flag: a config file after them
    if late:
        raise RecipeError(f"{late[0]} comes after the flags: the config file goes first, e.g. `{prog} {late[0]} "
                          "--flag value` (flags then override it).")
    flags = {option for action in parser._actions for option in action.option_strings}
    unknown = [a for a in argv if a.startswith("--") and a.split("=", 1)[0] not in flags]
    if unknown:
        key = unknown[0][2:].split("=", 1)[0].replace("-", "_")
        close = difflib.get_close_matches(key, sorted(known), n=1)
        raise RecipeError(f"Unknown flag {unknown[0]!r}." + (f" Did you mean '--{close[0]}'?" if close else ""))
    for name in required if not {"-h", "--help"} & set(argv) else ():  # --help needs no config
        if name not in config and not any(a.split("=", 1)[0] == f"--{name}" for a in argv):
            raise RecipeError(f"No {name}: set {name} in the config or pass --{name}.")
    # fields that take a boolean (a True default also has a --no_ flag, of another action type)
    booleans = {a.dest for a in parser._actions if a.type in (string_to_bool, bool) or isinstance(a.const, bool)}
    for action in parser._actions:
        if action.dest in config:
            action.required = False  # given by the config
            value = config[action.dest]
            if isinstance(value, bool) and action.dest not in booleans and action.choices:
                # YAML 1.1 reads an unquoted no / yes / off / on as a boolean; a field of named choices takes none
                if not value and "no" in action.choices:
                    config[action.dest] = value = "no"  # `eval_strategy: no` means "no"
                else:
                    raise RecipeError(f"{action.dest}: {str(value).lower()} in the config is not a "
                                      f"{action.dest} value: YAML reads an unquoted yes / no / on / off as a boolean; "
                                      f"quote the value, e.g. {action.dest}: \"...\".")
            if isinstance(value, str) and action.type in (int, float):  # YAML reads 1e-3 as a string
                try:
                    config[action.dest] = action.type(value)
                except ValueError:
                    kind = "an integer" if action.type is int else "a number"
                    raise RecipeError(f"{action.dest}={value!r} in the config is not {kind}.") from None
    parser.set_defaults(**config)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=argv))
    except USER_ERRORS:
        raise
    except ValueError as err:  # a dataclass's own validation (TrainingArguments.__post_init__) of the user's values
        raise RecipeError(" ".join(line.strip() for line in str(err).strip().splitlines())) from err


def parse_arguments(argv: list[str] | None = None):
    """`CONFIG.yaml [--flag value ...]` or flags alone; flags override the config. Returns the four dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = parse_config_and_flags(ARGUMENT_CLASSES, argv, "hf-distil", required=("output_dir",))
    if not str(parsed[2].output_dir or "").strip():
        raise RecipeError("output_dir is empty: pass --output_dir PATH, e.g. --output_dir out/distilled.")
    _check_training_length(parsed[2])
    _check_card_arguments(parsed[3])
    return parsed


def _check_training_length(training_args: DistillationArguments) -> None:
    """A run that would take no step (num_train_epochs 0 and no max_steps) would save the untrained student."""
    epochs = training_args.num_train_epochs
    if training_args.max_steps <= 0 and not (math.isfinite(epochs) and epochs > 0):
        raise RecipeError(
            f"num_train_epochs={epochs!r} with max_steps={training_args.max_steps!r}: nothing to train (or no end); "
            "pass --num_train_epochs above 0 or --max_steps above 0."
        )


def _check_card_arguments(run_args: RunArguments) -> None:
    """The card's licence and languages, checked now rather than when the card is written after training."""
    if run_args.card_license is not None and not LICENSE_RE.match(str(run_args.card_license)):
        raise RecipeError(
            f"card_license={run_args.card_license!r} is not a Hub licence id: use one such as apache-2.0, mit, other."
        )
    for code in codes(run_args.card_language):
        if not LANGUAGE_RE.match(code):
            raise RecipeError(f"card_language {code!r} is not an ISO 639 code: use e.g. en, or en,fr for several.")


def codes(value) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(c).strip() for c in items if str(c).strip()]


def usage_or_version(argv: list[str], prog: str, example: str) -> int | None:
    """What a command says before parsing: its usage for no arguments at all (exit 2), its version for --version
    (exit 0); None when there is something to parse."""
    if not argv:
        print(f"usage: {prog} CONFIG.yaml [--flag value ...]   (or flags alone; `{prog} --help` lists every flag)\n"
              f"  e.g. {prog} {example}", file=sys.stderr)
        return 2
    if argv == ["--version"]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"{prog} {version('hf-distil')}")
        except PackageNotFoundError:  # run from a source tree that was not installed
            print(f"{prog} (hf-distil, not installed)")
        return 0
    return None
