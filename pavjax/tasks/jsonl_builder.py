"""The `tensorflow-datasets` builder behind the jsonl_math task.

`JsonlMath` (tfds name `jsonl_math`) reads the user's JSONL files from the manual
directory, validates them all first (`jsonl_reader.validate_manual_dir`), then writes
one ArrayRecord file per split. Reading goes through `builder.as_data_source()` or
`tfds.data_source('jsonl_math/fp_<hash>', data_dir=...)`, so neither writing nor
reading needs TensorFlow. Each config is named after a fingerprint of the input
files and options (`jsonl_math.fingerprint`), so changed data gets a fresh
directory instead of a stale cache.

Record features (one example per problem, in file order, `index` = position in
its split): uid, source (`file:line`), format ('gsm8k' | 'math'), question,
steps (reference steps), answer (normalized final answer), solution (the raw
reference text), index.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from pavjax.tasks import jsonl_reader

_TEXT_FEATURES = ("uid", "source", "format", "question", "answer", "solution")


@dataclasses.dataclass(eq=False)
class JsonlMathConfig(tfds.core.BuilderConfig):
  """Options that shape the records (see `jsonl_reader.validate_manual_dir`)."""

  fmt: str = "auto"
  strict: bool = True
  max_prompt_chars: int = 4000
  seed: int = 0
  val_fraction: float = 0.05


class JsonlMath(tfds.core.GeneratorBasedBuilder):
  """GSM8K / MATH style JSONL problems from a manual directory."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put train.jsonl and test.jsonl (and optionally validation.jsonl) in the manual "
      "directory; see pavjax/tasks/jsonl_math.py for the record formats.")

  # A `jsonl_reader.ValidationResult` of the manual directory, when the caller has
  # validated it already (saves a second pass); else `_split_generators` validates.
  prevalidated = None

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # The stock lookup trips over a missing `importlib_resources` (a tfds bug on
    # Python >= 3.9 when the builder lives in a package); this file is the answer.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {name: tfds.features.Text() for name in _TEXT_FEATURES}
    features["steps"] = tfds.features.Sequence(tfds.features.Text())
    features["index"] = np.int64
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict(features), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    result = self.prevalidated
    if result is None:
      result = jsonl_reader.validate_manual_dir(
          os.fspath(dl_manager.manual_dir), fmt=cfg.fmt, strict=cfg.strict,
          max_prompt_chars=cfg.max_prompt_chars, seed=cfg.seed, val_fraction=cfg.val_fraction)
    # self.data_dir is the temporary directory renamed into place once all splits
    # are written, so the summary appears together with the data.
    summary = stored_summary(result, cfg.name)
    with open(os.path.join(self.data_dir, jsonl_reader.SUMMARY_FILE), "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
    return {split: self._generate_examples(records)
            for split, records in result.records.items()}

  def _generate_examples(self, records):
    for rec in records:
      yield rec["index"], {key: rec[key] for key in (*_TEXT_FEATURES, "steps", "index")}


def stored_summary(result: jsonl_reader.ValidationResult, config_name: str) -> dict[str, Any]:
  """The validation summary as it is stored next to the prepared data."""
  return dict(result.summary, fingerprint=config_name)


def make_builder(data_dir: str, fingerprint: str, *, fmt: str, strict: bool,
                 max_prompt_chars: int, seed: int, val_fraction: float) -> JsonlMath:
  """The ArrayRecord builder of config `fp_<fingerprint>` under `data_dir`."""
  config = JsonlMathConfig(
      name=f"fp_{fingerprint}", fmt=fmt, strict=bool(strict),
      max_prompt_chars=int(max_prompt_chars), seed=int(seed), val_fraction=float(val_fraction))
  return JsonlMath(data_dir=data_dir, config=config,
                   file_format=tfds.core.FileFormat.ARRAY_RECORD)


def download_and_prepare(builder: JsonlMath, manual_dir: str) -> None:
  """Writes the builder's ArrayRecord files from `manual_dir` (no-op when present)."""
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_example(example: dict[str, Any]) -> dict[str, Any]:
  """A data-source example with bytes turned into `str` and steps into a list."""
  out = {key: _text(example[key]) for key in _TEXT_FEATURES}
  out["steps"] = [_text(s) for s in example["steps"]]
  out["index"] = int(example["index"])
  return out


def read_split(builder: JsonlMath, split: str) -> list[dict[str, Any]]:
  """All records of a prepared split, in file order, via the ArrayRecord data source."""
  source = builder.as_data_source(split=split)
  records = [decode_example(source[i]) for i in range(len(source))]
  records.sort(key=lambda r: r["index"])
  return records
