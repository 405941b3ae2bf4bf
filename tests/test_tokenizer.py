"""Tests for restmcts_jax.tokenizer."""

import random
import re

from hypothesis import assume
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers
import transformers

from restmcts_jax import tokenizer as tokenizer_lib

GAME24_TEXTS = (
    "3 + 5 = 8 (left: 8 8)\nAnswer: (3 + 5) * 3 = 24\n",
    "Input: 4 4 6 8\nSteps:\n4 + 8 = 12 (left: 4 6 12)\n"
    "6 - 4 = 2 (left: 2 12)\n2 * 12 = 24 (left: 24)\n"
    "Answer: (6 - 4) * (4 + 8) = 24",
    "\n\n  two  spaces,  trailing   \n\tTab\n",
    "Ünïcödé 数学 😀 → ≥ ½\n",
    "<s> </s> <pad> <unk> are plain text here\n",
)
SP_VOCAB_SIZE = 400


def _game24_corpus(n=300, seed=0):
  """Game-of-24 style multi-line solutions."""
  rng = random.Random(seed)
  texts = []
  for _ in range(n):
    a, b, c, d = (rng.randint(1, 13) for _ in range(4))
    texts.append(
        f"Input: {a} {b} {c} {d}\nSteps:\n"
        f"{a} + {b} = {a + b} (left: {a + b} {c} {d})\n"
        f"{c} * {d} = {c * d} (left: {a + b} {c * d})\n"
        f"Answer: ({a} + {b}) * {c} = {(a + b) * c}\n"
    )
  return texts


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
  prefix = tmp_path_factory.mktemp("sp") / "game24"
  return tokenizer_lib.SentencePieceTokenizer.train(
      _game24_corpus(), prefix, vocab_size=SP_VOCAB_SIZE
  )


# --- SentencePiece ----------------------------------------------------------


@pytest.mark.parametrize("text", GAME24_TEXTS)
def test_sp_round_trip(sp_tok, text):
  ids = sp_tok.encode(text)
  assert sp_tok.decode(ids) == text
  assert all(0 <= i < sp_tok.vocab_size for i in ids)


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_sp_round_trip_any_text(sp_tok, text):
  assert sp_tok.decode(sp_tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(a=st.text(), b=st.text())
def test_sp_concatenated_encodings_decode_to_concatenated_text(sp_tok, a, b):
  # A tree node's tokens are its prefix's tokens followed by its step's.
  assert sp_tok.decode(sp_tok.encode(a) + sp_tok.encode(b)) == a + b


def test_sp_literal_space_mark_round_trips(sp_tok):
  text = "a\u2581b \u2581\u2581\n\u2581"
  assert sp_tok.decode(sp_tok.encode(text)) == text


def test_sp_trains_to_requested_vocab_and_special_ids(sp_tok):
  assert sp_tok.vocab_size == SP_VOCAB_SIZE
  assert (sp_tok.pad_id, sp_tok.bos_id, sp_tok.eos_id) == (0, 2, 3)


def test_sp_newline_is_one_token(sp_tok):
  newline = sp_tok.token_id("\n")
  assert newline == 4
  assert sp_tok.encode("\n\n") == [newline, newline]
  text = GAME24_TEXTS[1]
  ids = sp_tok.encode(text)
  assert ids.count(newline) == text.count("\n")
  # Steps split at the newline id decode to the text's lines.
  steps, step = [], []
  for i in ids:
    step.append(i)
    if i == newline:
      steps.append(sp_tok.decode(step))
      step = []
  steps.append(sp_tok.decode(step))
  assert steps == text.splitlines(keepends=True)


def test_sp_learns_multi_char_pieces(sp_tok):
  text = "Answer: (3 + 5) * 3 = 24\n"
  assert len(sp_tok.encode(text)) < len(text.encode()) // 2


def test_token_id_rejects_multi_token_string(sp_tok):
  with pytest.raises(ValueError, match="'Answer: 24'"):
    sp_tok.token_id("Answer: 24")
  with pytest.raises(ValueError, match="''"):
    sp_tok.token_id("")


def test_sp_add_bos_eos(sp_tok):
  text = GAME24_TEXTS[0]
  ids = sp_tok.encode(text)
  wrapped = sp_tok.encode(text, add_bos=True, add_eos=True)
  assert wrapped == [sp_tok.bos_id] + ids + [sp_tok.eos_id]
  assert sp_tok.encode(text, add_eos=True) == ids + [sp_tok.eos_id]
  assert sp_tok.decode(wrapped) == text


def test_sp_decode_skips_pad_and_accepts_arrays(sp_tok):
  text = GAME24_TEXTS[0]
  ids = sp_tok.encode(text, add_bos=True, add_eos=True)
  padded = np.array(ids + [sp_tok.pad_id] * 5, dtype=np.int32)
  assert sp_tok.decode(padded) == text
  assert sp_tok.decode([sp_tok.pad_id] * 3) == ""
  with pytest.raises(ValueError, match="1-D"):
    sp_tok.decode(padded[None])


def test_sp_training_is_deterministic(sp_tok, tmp_path):
  again = tokenizer_lib.SentencePieceTokenizer.train(
      _game24_corpus(), tmp_path / "again", vocab_size=SP_VOCAB_SIZE
  )
  for text in GAME24_TEXTS:
    assert again.encode(text) == sp_tok.encode(text)
  assert again.fingerprint() == sp_tok.fingerprint()
  other = tokenizer_lib.SentencePieceTokenizer.train(
      _game24_corpus(seed=1), tmp_path / "other", vocab_size=SP_VOCAB_SIZE
  )
  assert other.decode(other.encode(GAME24_TEXTS[1])) == GAME24_TEXTS[1]
  # Another corpus, the same size: other pieces, so another fingerprint.
  assert other.vocab_size == sp_tok.vocab_size
  assert other.fingerprint() != sp_tok.fingerprint()


def test_sp_load_and_load_tokenizer(sp_tok, tmp_path):
  prefix = tmp_path / "small"
  tokenizer_lib.SentencePieceTokenizer.train(
      _game24_corpus(), prefix, vocab_size=SP_VOCAB_SIZE
  )
  loaded = tokenizer_lib.load_tokenizer(f"{prefix}.model")
  assert isinstance(loaded, tokenizer_lib.SentencePieceTokenizer)
  for text in GAME24_TEXTS:
    assert loaded.encode(text) == sp_tok.encode(text)


def test_sp_load_missing_file(tmp_path):
  missing = tmp_path / "missing.model"
  with pytest.raises(FileNotFoundError, match="missing.model"):
    tokenizer_lib.SentencePieceTokenizer.load(missing)
  with pytest.raises(FileNotFoundError, match="missing.model"):
    tokenizer_lib.load_tokenizer(missing)


# --- Hugging Face -----------------------------------------------------------


def _save_hf_tokenizer(folder, **special_tokens):
  """Trains a tiny byte-level BPE offline and saves it as an HF folder."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=400,
      special_tokens=list(special_tokens.values()),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tok.train_from_iterator(_game24_corpus(100), trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, **special_tokens
  )
  fast.save_pretrained(folder)
  return folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  return _save_hf_tokenizer(
      tmp_path_factory.mktemp("hf"),
      pad_token="<pad>",
      bos_token="<s>",
      eos_token="</s>",
  )


@pytest.fixture(scope="module")
def hf_tok(hf_folder):
  return tokenizer_lib.HFTokenizer(hf_folder)


@pytest.mark.parametrize("text", GAME24_TEXTS[:4])
def test_hf_round_trip(hf_tok, text):
  ids = hf_tok.encode(text)
  assert hf_tok.decode(ids) == text
  assert all(0 <= i < hf_tok.vocab_size for i in ids)


@settings(max_examples=100, deadline=None)
@given(text=st.text())
def test_hf_round_trip_any_text(hf_tok, text):
  assume(not any(s in text for s in ("<pad>", "<s>", "</s>")))
  assert hf_tok.decode(hf_tok.encode(text)) == text


def test_hf_special_ids_newline_and_wrapping(hf_tok):
  pad, bos, eos = hf_tok.pad_id, hf_tok.bos_id, hf_tok.eos_id
  assert len({pad, bos, eos}) == 3
  newline = hf_tok.token_id("\n")
  text = GAME24_TEXTS[1]
  ids = hf_tok.encode(text)
  assert newline in ids
  wrapped = hf_tok.encode(text, add_bos=True, add_eos=True)
  assert wrapped == [bos] + ids + [eos]
  assert hf_tok.decode(wrapped + [pad, pad]) == text
  with pytest.raises(ValueError, match="'Answer: 24'"):
    hf_tok.token_id("Answer: 24")


def test_hf_load_tokenizer_picks_hf(hf_folder, hf_tok, tmp_path):
  loaded = tokenizer_lib.load_tokenizer(hf_folder)
  assert isinstance(loaded, tokenizer_lib.HFTokenizer)
  assert loaded.encode(GAME24_TEXTS[0]) == hf_tok.encode(GAME24_TEXTS[0])
  assert loaded.fingerprint() == hf_tok.fingerprint()
  without_bos = tokenizer_lib.HFTokenizer(_save_hf_tokenizer(
      tmp_path / "other", pad_token="<pad>", eos_token="</s>"))
  assert without_bos.fingerprint() != hf_tok.fingerprint()


def test_hf_pad_falls_back_to_eos(tmp_path):
  tok = tokenizer_lib.HFTokenizer(
      _save_hf_tokenizer(tmp_path, eos_token="</s>")
  )
  assert tok.pad_id == tok.eos_id
  assert tok.bos_id is None
  text = GAME24_TEXTS[0]
  assert tok.decode(tok.encode(text, add_eos=True) + [tok.pad_id]) == text
  with pytest.raises(ValueError, match="BOS"):
    tok.encode(text, add_bos=True)


def test_hf_folder_without_tokenizer_files(tmp_path):
  (tmp_path / "weights.bin").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
    tokenizer_lib.HFTokenizer(tmp_path)
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
    tokenizer_lib.load_tokenizer(tmp_path)


def test_load_tokenizer_missing_or_unknown(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    tokenizer_lib.load_tokenizer(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    tokenizer_lib.HFTokenizer(tmp_path / "nowhere")
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("a\n")
  with pytest.raises(ValueError, match="vocab.txt"):
    tokenizer_lib.load_tokenizer(vocab)


def test_step_delimiters_include_merged_newline_tokens(tmp_path):
  """A BPE that merged "\\n\\n" must stop a step at that token too."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=300, special_tokens=["</s>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(["step one\nAnswer: 24\n\n"] * 50, trainer)
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="</s>").save_pretrained(tmp_path)
  hf = tokenizer_lib.HFTokenizer(tmp_path)
  double = hf.encode("\n\n")
  assert len(double) == 1  # merged into one token
  delimiters = hf.step_delimiter_ids()
  assert double[0] in delimiters and hf.token_id("\n") in delimiters
  assert hf.eos_id not in delimiters
  for i in delimiters:
    assert "\n" in hf.decode([i])
  ids = hf.encode("step one\nAnswer: 24\n\n")
  assert ids[-1] == double[0]
  assert sum(i in delimiters for i in ids) == 2


def test_sp_step_delimiters_are_the_newline_and_its_byte_piece(sp_tok):
  delimiters = sp_tok.step_delimiter_ids()
  assert sp_tok.token_id("\n") in delimiters
  assert [sp_tok.decode([i]) for i in delimiters] == ["\n"] * len(delimiters)
  assert len(delimiters) == 2  # the symbol and the byte-fallback <0x0A>
