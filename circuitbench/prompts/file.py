"""Prompts from a data file: `generator: {name: file, path: prompts.jsonl}`.

`path` is relative to the task YAML's folder (to the working directory for a spec built in
Python). JSONL (one JSON object per line; blank lines skipped) or CSV (a header row, then one
record per row; empty cells count as absent), told apart by the extension (.jsonl / .ndjson /
.csv) or `format:`. A record's fields (anything else is an error naming the line):

    prompt               the clean prompt (required)
    answer               the single-token answer, leading space included (" Mary"); every record
                         or none (a task with no answers runs sequence metrics only)
    distractor           the token logit_diff compares against; every record or none (without
                         one, metrics that need it, logit_diff, are refused when the task loads)
    corrupted            the counterfactual prompt; every record or none
    corrupted_NAME       further counterfactual prompts, one column each (corrupted_swapped, …):
                         every record or none; `counterfactual: NAME` in the generator picks one
                         (default: corrupted), a task's `counterfactuals: [corrupted, swapped]` uses several
    split                train | val | test; absent: a hash of `key` decides, as for every generator
    key                  the split key (default: the prompt text); unique over the file
    positions            named positions: {"IO": " Mary", "S2": {"text": " John", "occurrence": -1}}
    corrupted_positions  the same names located in `corrupted` (optional): encoding then checks
                         that they land on the clean prompt's token indices

A position is a substring of the prompt whose *last token* is that position. A plain string must
occur exactly once in the prompt (an ambiguous one is an error); {"text": ..., "occurrence": k}
picks the k-th occurrence, 0-based, negative from the end (-1: the last). Every record names the
same positions; END (always the last token) is not named. In CSV, `positions` and
`corrupted_positions` cells hold that JSON object. The prompt is cut into segments at the
positions' ends, so encoding checks them against the whole prompt's tokenization as for every
generator (a substring ending inside a token drops the prompt, counted).

The task's spec stores the resolved path and the file's sha256 (give `sha256:` to pin the data:
loading then fails if the file differs); the spec and content hashes cover the sha256 and
format, not the path. `n_prompts` are drawn from the split's records in a seeded order, so the
first k prompts are the same for any n >= k; `all` is every record of the split (up to ALL_CAP).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, model_validator

from circuitbench.errors import CircuitbenchError, did_you_mean
from circuitbench.prompts.base import ALL_CAP, Prompt, Segment, split_of
from circuitbench.specs.catalog import UnreadableFile, read_regular_file
from circuitbench.specs.registries import GeneratorParams, generator
from circuitbench.specs.task import SPLITS, Split

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
POSITION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
JSON_CELLS = ("positions", "corrupted_positions")  # CSV cells holding a JSON object


class DataFileError(ValueError):
    """A mistake in the data file: the message names the file and line."""


class Position(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, description="a substring of the prompt; its last token is the position")
    occurrence: int = Field(description="which occurrence: 0-based, negative from the end (-1: the last)")


PositionRef = Annotated[str, Field(min_length=1)] | Position


class Record(BaseModel):
    """One line (JSONL) or row (CSV) of a data file."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    answer: str | None = Field(None, min_length=1)
    distractor: str | None = Field(None, min_length=1)
    corrupted: str | None = Field(None, min_length=1)
    split: Split | None = None
    key: str | int | None = None
    positions: dict[str, PositionRef] = Field(default_factory=dict)
    corrupted_positions: dict[str, PositionRef] = Field(default_factory=dict)
    counterfactuals: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict, description="further counterfactual prompts by name (columns corrupted_NAME)")


FIELDS = tuple(f for f in Record.model_fields if f != "counterfactuals")
NAMED_COUNTERFACTUAL = re.compile(r"^corrupted_(?!positions$)([A-Za-z0-9_]+)$")  # a corrupted_NAME column


def _named_counterfactuals(obj: dict[str, Any]) -> dict[str, Any]:
    """A record with its corrupted_NAME columns gathered under `counterfactuals`."""
    named = {m.group(1): obj[k] for k in obj if (m := NAMED_COUNTERFACTUAL.match(k))}
    if not named:
        return obj
    return {**{k: v for k, v in obj.items() if not NAMED_COUNTERFACTUAL.match(k)}, "counterfactuals": named}


def _record_error(err: ValidationError) -> str:
    """Every mistake of one record (a missing field and its misspelling come together)."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown field '{loc}'.{did_you_mean(loc, FIELDS)} Fields: {', '.join(FIELDS)}, "
                         "corrupted_NAME")
        else:
            parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def _jsonl_objects(text: str, where: str) -> list[tuple[int, Any]]:
    out = []
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            out.append((line, json.loads(raw)))
        except json.JSONDecodeError as e:
            raise DataFileError(f"{where} line {line}: not valid JSON ({e.msg} at column {e.colno})") from None
    return out


def _csv_objects(text: str, where: str) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames
    if not header:
        raise DataFileError(f"{where}: empty; a CSV data file starts with a header row ({', '.join(FIELDS)})")
    for column in header:
        if column not in FIELDS and not NAMED_COUNTERFACTUAL.match(column):
            raise DataFileError(f"{where} line 1: unknown column '{column}'.{did_you_mean(column, FIELDS)} "
                                f"Columns: {', '.join(FIELDS)}")
    if len(set(header)) != len(header):
        raise DataFileError(f"{where} line 1: a column appears twice ({', '.join(header)})")
    out = []
    for row in reader:
        line = reader.line_num  # where the row ends (a quoted cell may span lines)
        if None in row:
            raise DataFileError(f"{where} line {line}: more cells than the header's {len(header)} columns")
        obj: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
        for cell in JSON_CELLS:
            if cell in obj:
                try:
                    obj[cell] = json.loads(obj[cell])
                except json.JSONDecodeError as e:
                    raise DataFileError(f"{where} line {line}: {cell}: not a JSON object ({e.msg})") from None
        out.append((line, obj))
    return out


def _position_end(text: str, name: str, ref: str | Position, where: str) -> int:
    """The character offset just after the position's substring in `text`."""
    sub = ref if isinstance(ref, str) else ref.text
    starts = [i for i in range(len(text)) if text.startswith(sub, i)]
    if not starts:
        raise DataFileError(f"{where}: position {name}: {sub!r} is not in {text!r}")
    if isinstance(ref, str):
        if len(starts) > 1:
            pick = json.dumps({"text": sub, "occurrence": 0})
            raise DataFileError(f"{where}: position {name}: {sub!r} occurs {len(starts)} times in {text!r}; say which, "
                                f"e.g. {pick} (0: the first, -1: the last)")
        return starts[0] + len(sub)
    if not -len(starts) <= ref.occurrence < len(starts):
        raise DataFileError(f"{where}: position {name}: occurrence {ref.occurrence} of {sub!r}, which occurs "
                            f"{len(starts)} times in {text!r}")
    return starts[ref.occurrence] + len(sub)


def segments_of(text: str, positions: dict[str, str | Position], where: str) -> list[Segment]:
    """`text` cut at the end of each named position, that segment labelled with the name (two
    positions ending at the same character: an empty segment carries the second name)."""
    for name in positions:
        if name == "END" or not POSITION_NAME.match(name):
            why = "END is always the last token" if name == "END" else "use letters, digits and _"
            raise DataFileError(f"{where}: position name {name!r}: {why}")
    ends = sorted(((_position_end(text, name, ref, where), name) for name, ref in positions.items()),
                  key=lambda e: e[0])
    segments, start = [], 0
    for end, name in ends:
        segments.append(Segment(text=text[start:end], label=name))
        start = end
    if start < len(text):
        segments.append(Segment(text=text[start:]))
    return segments


def check_together(rows: list[tuple[int, Record]], where: str, what: str = "line") -> None:
    """Every record gives the same optional fields and position names; keys are unique. `what`
    names a record's number in messages (a data file's line; a spec's record)."""
    first_line, first = rows[0]
    for line, r in rows:
        for name in ("answer", "distractor", "corrupted"):
            if (getattr(r, name) is None) != (getattr(first, name) is None):
                has, lacks = (line, first_line) if getattr(r, name) is not None else (first_line, line)
                raise DataFileError(f"{where} {what} {lacks}: no {name}, but {what} {has} has one; give every record "
                                    f"a {name} or none")
        if r.distractor is not None and r.answer is None:
            raise DataFileError(f"{where} {what} {line}: a distractor without an answer")
        if r.corrupted_positions and r.corrupted is None:
            raise DataFileError(f"{where} {what} {line}: corrupted_positions without a corrupted prompt")
        if set(r.positions) != set(first.positions):
            raise DataFileError(f"{where} {what} {line}: positions {sorted(r.positions)} differ from {what} "
                                f"{first_line}'s {sorted(first.positions)}; every record names the same positions")
        if set(r.counterfactuals) != set(first.counterfactuals):
            raise DataFileError(f"{where} {what} {line}: counterfactual columns {sorted(r.counterfactuals)} differ "
                                f"from {what} {first_line}'s {sorted(first.counterfactuals)}; give every record the "
                                "same corrupted_NAME columns")
        if r.counterfactuals and r.corrupted is None:
            raise DataFileError(f"{where} {what} {line}: corrupted_{next(iter(r.counterfactuals))} without a corrupted "
                                "prompt (the primary counterfactual)")
        if r.corrupted_positions and set(r.corrupted_positions) != set(r.positions):
            raise DataFileError(f"{where} {what} {line}: corrupted_positions {sorted(r.corrupted_positions)} must name "
                                f"the positions {sorted(r.positions)}")
    seen: dict[str, int] = {}
    for line, r in rows:
        key = r.prompt if r.key is None else str(r.key)
        if key in seen:
            same = "key" if r.key is not None else "prompt (no key given)"
            raise DataFileError(f"{where} {what} {line}: the same {same} as {what} {seen[key]}; records need distinct "
                                "keys (a key decides the split)")
        seen[key] = line


def record_prompt(line: int, r: Record, where: str, what: str = "line",
                  counterfactual: str = "corrupted") -> tuple[Prompt, Split]:
    """One record as a Prompt (its counterfactual: `corrupted`, or the corrupted_NAME column named)
    and the split it belongs to (its own, or its key's hash)."""
    at = f"{where} {what} {line}"
    key = r.prompt if r.key is None else str(r.key)
    corrupted = None
    if counterfactual != "corrupted":
        corrupted = [Segment(text=r.counterfactuals[counterfactual])]
    elif r.corrupted is not None:
        corrupted = segments_of(r.corrupted, r.corrupted_positions, f"{at}, corrupted") if r.corrupted_positions \
            else [Segment(text=r.corrupted)]
    prompt = Prompt(segments=segments_of(r.prompt, r.positions, at), corrupted_segments=corrupted, answer=r.answer,
                    distractor=r.distractor, split_key=key, meta={"line": line})
    return prompt, r.split or split_of(key)


def parse(data: bytes, fmt: str, where: str, counterfactual: str = "corrupted") -> list[tuple[Prompt, Split]]:
    """Every record of a data file as (prompt, split), in file order, with the counterfactual named
    (`corrupted` or a corrupted_NAME column); DataFileError naming the line at the first mistake."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{where}: not UTF-8 text (byte {e.start})") from None
    objects = _jsonl_objects(text, where) if fmt == "jsonl" else _csv_objects(text, where)
    if not objects:
        raise DataFileError(f"{where}: no records")
    rows: list[tuple[int, Record]] = []
    for line, obj in objects:
        if not isinstance(obj, dict):
            raise DataFileError(f"{where} line {line}: a record is a JSON object, got {type(obj).__name__}")
        try:
            rows.append((line, Record.model_validate(_named_counterfactuals(obj))))
        except ValidationError as e:
            raise DataFileError(f"{where} line {line}: {_record_error(e)}") from None
    check_together(rows, where)
    if counterfactual != "corrupted" and counterfactual not in rows[0][1].counterfactuals:
        known = ", ".join(["corrupted", *(f"corrupted_{n}" for n in rows[0][1].counterfactuals)])
        raise DataFileError(f"{where}: counterfactual '{counterfactual}' has no column corrupted_{counterfactual} "
                            f"(counterfactual columns: {known})")
    return [record_prompt(line, r, where, counterfactual=counterfactual) for line, r in rows]


class FileParams(GeneratorParams):
    name: Literal["file"]
    path: str = Field(min_length=1, description="JSONL or CSV data file, relative to the task file's folder "
                      "(stored resolved)")
    format: Literal["jsonl", "csv"] | None = Field(
        None, description="default: from the extension (.jsonl, .ndjson: jsonl; .csv: csv)")
    counterfactual: str = Field(
        "corrupted", exclude_if=lambda name: name == "corrupted",
        description="which column holds the counterfactual: corrupted, or NAME of a corrupted_NAME column")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="the data's sha256, filled in when the task loads; give it to pin the data "
                               "(loading fails if the file differs)")
    _answers: tuple[bool, bool] = PrivateAttr((True, True))

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> "FileParams":
        task_dir = (info.context or {}).get("task_dir")
        path = Path(self.path).expanduser()
        if not path.is_absolute():
            path = Path(task_dir or Path.cwd()) / path
        try:
            path = path.resolve()
        except (RuntimeError, OSError):  # Python < 3.13 raises RuntimeError on a loop
            _read(path, ValueError)  # says what the path is (a symlink loop)
            raise
        fmt = self.format or FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the format of {path} from its extension: name it .jsonl or .csv, or set "
                             "format: jsonl | csv")
        data = _read(path, ValueError)
        digest = hashlib.sha256(data).hexdigest()
        if self.sha256 is not None and self.sha256 != digest:
            raise ValueError(f"{path} has sha256 {digest}, but the task pins sha256: {self.sha256} (the data changed: "
                             "restore it, or update the pin)")
        prompts = [p for p, _ in parse(data, fmt, str(path), self.counterfactual)]
        self.path, self.format, self.sha256 = str(path), fmt, digest
        self._answers = (prompts[0].answer is not None, prompts[0].distractor is not None)
        return self

    def identity(self) -> dict[str, Any]:
        """The data (its sha256) and how it is read, not where the file lies: the same task
        anywhere has the same hashes."""
        return self.model_dump(mode="json", exclude={"path"})


def _read(path: Path, error: type[Exception]) -> bytes:
    """The data file's bytes; `error` saying what the path is when it is no regular file (missing,
    a symlink loop, a directory, a FIFO: never opened blocking)."""
    try:
        return read_regular_file(path)
    except UnreadableFile as e:
        hint = " (a relative path is relative to the task file's folder)" if e.reason == "not found" else ""
        raise error(f"data file {e}{hint}") from None


def generate(params: FileParams, n: int | None, seed: int, split: Split) -> list[Prompt]:
    path = Path(params.path)
    data = _read(path, CircuitbenchError)
    digest = hashlib.sha256(data).hexdigest()
    if digest != params.sha256:
        raise CircuitbenchError(f"{path} changed since the task was loaded (sha256 {params.sha256}, now {digest}); "
                                "load the task again")
    assert params.format is not None  # set when the params were validated
    try:
        records = parse(data, params.format, str(path), params.counterfactual)
    except DataFileError as e:
        raise CircuitbenchError(str(e)) from None
    chosen = [p for p, s in records if s == split]
    if not chosen:
        counts = Counter(s for _, s in records)
        raise CircuitbenchError(f"{path} has no {split} records ({', '.join(f'{counts[s]} {s}' for s in SPLITS)}); "
                                "choose another split, or give records a split")
    random.Random(f"file:{seed}:{split}").shuffle(chosen)
    return chosen[: ALL_CAP if n is None else n]


generator(
    "file",
    params=FileParams,
    answers_of=lambda params: params._answers,
    description="prompts from a JSONL or CSV data file (answers, distractors, counterfactuals, named positions)",
)(generate)
