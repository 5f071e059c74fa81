"""Tiny BERT-like and GPT-2-like models with random weights, and deterministic tokenizers built
in the test (no network): a fixed WordPiece vocabulary (some words split into pieces) and a
byte-level BPE trained on a few sentences."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = (
    "a the movie film was is great good bad dull and long but not very plot actors story "
    "i it this loved hated boring fun . , ! ? < > / script alert ( ) 1"
).split()
PIECES = ["mov", "##ie", "##s", "act", "##ing", "wonder", "##ful", "terr", "##ible"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

SENTENCES = [
    "the movie was great and the actors were wonderful.",
    "a dull and long film, i hated it!",
    "this story is not very good but the plot is fun.",
    "i loved the acting. the script was terrible?",
]


def bert_tokenizer(mask: bool = True, pad: bool = True):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = [s for s in SPECIALS if (mask or s != "[MASK]") and (pad or s != "[PAD]")]
    vocab = {token: i for i, token in enumerate([*specials, *WORDS, *PIECES])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]" if pad else None,
        mask_token="[MASK]" if mask else None,
    )


def gpt2_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES * 3, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>"
    )


def bert_classifier(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )
    return transformers.BertForSequenceClassification(config).eval().double()


def gpt2_lm(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_embd=16, n_layer=2, n_head=2, n_positions=64
    )
    return transformers.GPT2LMHeadModel(config).eval().double()


@pytest.fixture(scope="module")
def bert():
    tokenizer = bert_tokenizer()
    return bert_classifier(len(tokenizer)), tokenizer


@pytest.fixture(scope="module")
def gpt2():
    tokenizer = gpt2_tokenizer()
    return gpt2_lm(len(tokenizer)), tokenizer
