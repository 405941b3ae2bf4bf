"""Tokenizers behind one small interface.

Two implementations:
  * `SentencePieceTokenizer`: a `.model` file, or one trained offline here on
    an in-memory corpus. Training keeps text exact (newlines, runs of spaces,
    any unicode via byte fallback), since a reasoning step ends at a newline.
  * `HFTokenizer`: a local Hugging Face tokenizer folder.

`load_tokenizer` picks one from the path.
"""

import abc
import functools
import hashlib
import json
from collections.abc import Iterable
import os
import pathlib
import tempfile

import numpy as np
import sentencepiece as spm
from etils import epath

from restmcts_jax import paths

PathLike = str | os.PathLike

# SentencePiece writes a space as U+2581, so decoding turns a literal U+2581
# into a space. With byte fallback, `SentencePieceTokenizer.encode` feeds it as
# its UTF-8 byte pieces instead, which decode back to U+2581.
_SPACE_MARK = "\u2581"

# Any of these marks a folder as holding a Hugging Face tokenizer.
_HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
)


class Tokenizer(abc.ABC):
  """Text <-> token ids."""

  @abc.abstractmethod
  def encode(
      self, text: str, *, add_bos: bool = False, add_eos: bool = False
  ) -> list[int]:
    """Token ids of `text`, optionally wrapped in BOS / EOS."""

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """Text of 1-D `ids`; pad, BOS and EOS ids are skipped."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of token ids (all ids are below it)."""

  @property
  @abc.abstractmethod
  def pad_id(self) -> int:
    """Padding id (EOS when the tokenizer has no pad token)."""

  @property
  @abc.abstractmethod
  def bos_id(self) -> int | None:
    """Beginning-of-sequence id, None if there is none."""

  @property
  @abc.abstractmethod
  def eos_id(self) -> int:
    """End-of-sequence id."""

  def fingerprint(self) -> str:
    """A hash of the whole vocabulary: two tokenizers of one size that map
    ids to other pieces differ here."""
    return self._fingerprint

  @functools.cached_property
  def _fingerprint(self) -> str:  # a 150k-piece vocabulary takes a while
    return hashlib.sha256(self._vocabulary_bytes()).hexdigest()

  @abc.abstractmethod
  def _vocabulary_bytes(self) -> bytes:
    """Every piece, in id order, serialized."""

  def token_id(self, piece: str) -> int:
    """Id of `piece`, which must encode to exactly one token (e.g. "\\n")."""
    ids = self.encode(piece)
    if len(ids) != 1:
      raise ValueError(f"{piece!r} is not a single token: it encodes to {ids}.")
    return ids[0]

  def step_delimiter_ids(self, delimiter: str = "\n") -> tuple[int, ...]:
    """Every id whose text contains `delimiter`: the sampler's stop tokens.

    BPE vocabularies merge the newline with neighbours (`"\n\n"`, `".\n"`),
    so stopping at the plain newline token alone would run past most line
    ends. Scans the whole vocabulary once.
    """
    special = {self.pad_id, self.bos_id, self.eos_id}
    return tuple(i for i in range(self.vocab_size)
                 if i not in special and delimiter in self.decode([i]))

  def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
    if add_bos:
      if self.bos_id is None:
        raise ValueError("add_bos=True but the tokenizer has no BOS token.")
      ids = [self.bos_id] + ids
    return ids + [self.eos_id] if add_eos else ids

  def _content_ids(self, ids: Iterable[int]) -> list[int]:
    """`ids` as a list of ints without pad, BOS and EOS."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1:
      raise ValueError(f"decode takes 1-D ids, got shape {ids.shape}.")
    special = {self.pad_id, self.bos_id, self.eos_id}
    return [i for i in ids.tolist() if i not in special]


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model."""

  def __init__(self, processor: spm.SentencePieceProcessor):
    self._sp = processor
    if processor.eos_id() < 0:
      raise ValueError("The SentencePiece model has no EOS token.")
    mark_bytes = [
        processor.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_MARK.encode()
    ]
    has_bytes = all(processor.is_byte(i) for i in mark_bytes)
    self._space_mark_bytes = mark_bytes if has_bytes else None

  @classmethod
  def load(cls, path: PathLike) -> "SentencePieceTokenizer":
    """Loads a `.model` file (a local path or a URL such as gs://...)."""
    path = epath.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"No SentencePiece model file at {path}.")
    return cls(spm.SentencePieceProcessor(model_proto=path.read_bytes()))

  @classmethod
  def train(
      cls,
      texts: Iterable[str],
      model_prefix: PathLike,
      vocab_size: int,
      *,
      model_type: str = "bpe",
      character_coverage: float = 1.0,
      **options,
  ) -> "SentencePieceTokenizer":
    """Trains on `texts`, writes `{model_prefix}.model` and loads it.

    Every text is one training sentence and may span several lines. The
    newline is a token of its own, text is not normalized and whitespace is
    kept, and unseen characters fall back to bytes, so any text round-trips.
    Ids: pad 0, unk 1, BOS 2, EOS 3, newline 4. Training is single-threaded
    and deterministic.

    Args:
      texts: the corpus.
      model_prefix: where to write `.model` and `.vocab` (folder must exist;
        a local path or a URL).
      vocab_size: includes the 256 byte pieces and the 5 ids above.
      model_type: "bpe" or "unigram".
      character_coverage: share of characters given their own piece.
      **options: further `sentencepiece` trainer flags (override the above).

    Returns:
      The trained tokenizer.
    """
    flags = dict(
        model_type=model_type,
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        user_defined_symbols=["\n"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        byte_fallback=True,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        num_threads=1,
        minloglevel=2,
    )
    flags.update(options)
    # The trainer writes local files only: train in a scratch folder, then
    # copy the two files where they belong, each whole (a run killed
    # mid-copy leaves no half `.model` for the next run to load), `.model`
    # last.
    with tempfile.TemporaryDirectory() as scratch:
      local = os.path.join(scratch, "sp")
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(texts), model_prefix=local, **flags)
      for suffix in (".vocab", ".model"):
        paths.write_atomic(epath.Path(f"{model_prefix}{suffix}"),
                           pathlib.Path(local + suffix).read_bytes())
    return cls.load(f"{model_prefix}.model")

  def encode(
      self, text: str, *, add_bos: bool = False, add_eos: bool = False
  ) -> list[int]:
    if self._space_mark_bytes is None:
      ids = self._sp.encode(text)
    else:
      first, *rest = text.split(_SPACE_MARK)
      ids = self._sp.encode(first)
      for part in rest:
        ids += self._space_mark_bytes + self._sp.encode(part)
    return self._wrap(ids, add_bos, add_eos)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode(self._content_ids(ids))

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  @property
  def pad_id(self) -> int:
    pad = self._sp.pad_id()
    return pad if pad >= 0 else self.eos_id

  @property
  def bos_id(self) -> int | None:
    bos = self._sp.bos_id()
    return bos if bos >= 0 else None

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  def _vocabulary_bytes(self) -> bytes:
    return "\0".join(self._sp.id_to_piece(i)
                     for i in range(self.vocab_size)).encode()


class HFTokenizer(Tokenizer):
  """A Hugging Face tokenizer loaded from a local folder."""

  def __init__(self, folder: PathLike):
    # Imported here: transformers takes seconds to import.
    import transformers  # pylint: disable=g-import-not-at-top

    folder = pathlib.Path(folder)
    if not folder.is_dir():
      raise FileNotFoundError(f"No tokenizer folder at {folder}.")
    if not any((folder / name).is_file() for name in _HF_TOKENIZER_FILES):
      raise FileNotFoundError(
          f"No tokenizer files in {folder} (expected one of"
          f" {', '.join(_HF_TOKENIZER_FILES)})."
      )
    self._tok = transformers.AutoTokenizer.from_pretrained(
        folder, local_files_only=True
    )
    if self._tok.eos_token_id is None:
      raise ValueError(f"The tokenizer in {folder} has no EOS token.")

  def encode(
      self, text: str, *, add_bos: bool = False, add_eos: bool = False
  ) -> list[int]:
    ids = self._tok.encode(text, add_special_tokens=False)
    return self._wrap(list(ids), add_bos, add_eos)

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode(
        self._content_ids(ids),
        skip_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )

  @property
  def vocab_size(self) -> int:
    return len(self._tok)

  @property
  def pad_id(self) -> int:
    pad = self._tok.pad_token_id
    return pad if pad is not None else self.eos_id

  @property
  def bos_id(self) -> int | None:
    return self._tok.bos_token_id

  @property
  def eos_id(self) -> int:
    return self._tok.eos_token_id

  def _vocabulary_bytes(self) -> bytes:
    vocab = sorted(self._tok.get_vocab().items(), key=lambda kv: kv[1])
    return json.dumps(vocab).encode()


def load_tokenizer(path: PathLike) -> Tokenizer:
  """A `.model` file -> SentencePiece; a folder -> Hugging Face."""
  path = pathlib.Path(path)
  if path.is_dir():
    return HFTokenizer(path)
  if path.suffix == ".model":
    return SentencePieceTokenizer.load(path)
  if not path.exists():
    raise FileNotFoundError(f"No tokenizer at {path}.")
  raise ValueError(
      f"Unknown tokenizer at {path}: expected a SentencePiece .model file or"
      " a Hugging Face tokenizer folder."
  )
