"""HFTextEncoder on tiny randomly initialised transformers models with a tokenizer built here (never a download)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from minidit.data.captions import VOCABULARY
from minidit.text.hf import HFTextEncoder, require_transformers

TEXTS = ["a red circle at the top left", "two tiny blue boxes in the middle", "a zebra"]
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def word_level_tokenizer(transformers, **special_tokens):
    """A ``PreTrainedTokenizerFast`` over a ``tokenizers`` WordLevel model of the caption vocabulary."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {token: i for i, token in enumerate(SPECIALS + list(VOCABULARY))}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = tokenizers.normalizers.Lowercase()
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="[BOS]",
                                                eos_token="[EOS]", model_max_length=32, **special_tokens)


@pytest.fixture(scope="module")
def hf_tokenizer(transformers):
    return word_level_tokenizer(transformers, pad_token="[PAD]")


def tiny_model(transformers, kind: str, vocab_size: int):
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
        return transformers.BertModel(config)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=32)
    return transformers.GPT2Model(config)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_encode_layers_pooled(transformers, hf_tokenizer, kind):
    encoder = HFTextEncoder(tiny_model(transformers, kind, len(hf_tokenizer)), hf_tokenizer, max_length=16)
    assert encoder.dim == 32 and encoder.config.max_length == 16 and encoder.config.name == kind
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.train().model.training
    ids, mask = encoder.tokenize(TEXTS)
    assert ids.shape == mask.shape == (3, 16) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [9, 9, 4]  # [BOS] words [EOS]; "zebra" is [UNK]
    states = encoder.hidden_states(ids, mask)
    assert len(states) == 2 + 1 and all(s.shape == (3, 16, 32) for s in states)
    for layer in (-3, -2, -1, 0, 1, 2):
        assert torch.equal(encoder(ids, mask, layer=layer), states[layer])
    features, feature_mask = encoder.encode(TEXTS, layer=-2)
    assert torch.equal(features, states[-2]) and torch.equal(feature_mask, mask)
    assert bool((features[~mask] == 0).all())
    pooled = encoder.pooled(TEXTS, layer=1)
    for row in range(3):
        assert torch.allclose(pooled[row], states[1][row, mask[row]].mean(dim=0), atol=1e-6)
    with pytest.raises(ValueError, match="layer 3 does not exist"):
        encoder(ids, mask, layer=3)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_padding_invariance(transformers, hf_tokenizer, kind):
    model = tiny_model(transformers, kind, len(hf_tokenizer))
    short, long = HFTextEncoder(model, hf_tokenizer, max_length=12), HFTextEncoder(model, hf_tokenizer, max_length=24)
    (a, mask), (b, _) = short.encode(TEXTS), long.encode(TEXTS)
    assert torch.allclose(a[mask], b[:, :12][mask], atol=1e-5)


def test_errors(transformers, hf_tokenizer):
    encoder = HFTextEncoder(tiny_model(transformers, "bert", len(hf_tokenizer)), hf_tokenizer, max_length=6)
    with pytest.raises(ValueError, match=r"has 9 tokens .* max_length is 6"):
        encoder.encode(TEXTS[:1])
    ids, mask = encoder.tokenizer.encode(TEXTS[:1], 6, truncation="cut")
    assert ids.shape == (1, 6) and bool(mask.all())
    with pytest.raises(ValueError, match="empty or only whitespace"):
        encoder.encode(["a red circle", "  "])
    with pytest.raises(TypeError, match="not a transformers.PreTrainedModel"):
        HFTextEncoder(torch.nn.Linear(2, 2), hf_tokenizer)
    no_pad = word_level_tokenizer(transformers)
    assert no_pad.pad_token is None
    with pytest.raises(ValueError, match="no pad token; set tokenizer.pad_token"):
        HFTextEncoder(tiny_model(transformers, "gpt2", len(hf_tokenizer)), no_pad, max_length=8)


def test_missing_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match=r"pip install minidit\[hub\]"):
        require_transformers()
    with pytest.raises(ImportError, match=r"pip install minidit\[hub\]"):
        HFTextEncoder.from_pretrained("gpt2")


def test_import_is_lazy():
    code = "import sys, minidit.text; assert 'transformers' not in sys.modules, 'minidit.text imported transformers'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_config_trains_on_a_local_hugging_face_lm_with_a_refiner(transformers, hf_tokenizer, tmp_path, capsys):
    # configs/shapes_t2i_llm_hf.toml's path: a decoder-only LM from a local folder, its tokenizer for the captions.
    from minidit.__main__ import main

    folder = tmp_path / "tiny-gpt2"
    model = tiny_model(transformers, "gpt2", len(hf_tokenizer))
    model.config.n_positions = 32
    model.save_pretrained(folder)
    hf_tokenizer.save_pretrained(folder)
    config = tmp_path / "llm.toml"
    config.write_text(f'''
[model]
type = "dit"
input_size = 24
patch_size = 8
in_channels = 3
hidden_size = 32
depth = 2
num_heads = 2
text_conditioning = "cross"
text_encoder = "hf"
text_encoder_path = "{folder}"
text_max_length = 32
text_layer = -2
text_refiner = "token"
refiner_heads = 2

[data]
name = "shapes"
resolution = 24
max_objects = 2
captions = "template"
text_length = 32

[train]
batch_size = 4
log_every = 1

[sample]
n = 2
steps = 2
''')
    main(["train", str(config), "--steps", "2", "--out", str(tmp_path / "run")])
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert checkpoint.exists() and "step 2" in capsys.readouterr().out
    main(["sample", str(checkpoint), "--prompt", "a large zebra at the top left", "--out", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").exists() and "zebra" in capsys.readouterr().err  # the tokenizer's unknown word
    config.write_text(config.read_text().replace(str(folder), str(tmp_path / "missing")))
    with pytest.raises(SystemExit):
        main(["train", str(config), "--steps", "1", "--out", str(tmp_path / "run2")])
    assert "is not a folder; download the model once" in capsys.readouterr().err


def test_instruction_crop_with_a_hugging_face_tokenizer(transformers, hf_tokenizer):
    from minidit.causal_bias import INSTRUCTION, encode_prompts

    encoder = HFTextEncoder(tiny_model(transformers, "gpt2", len(hf_tokenizer)), hf_tokenizer, max_length=32)
    prompts = TEXTS[:2]
    features, mask = encode_prompts(encoder, prompts, instruction=INSTRUCTION)
    plain, plain_mask = encode_prompts(encoder, prompts)
    assert torch.equal(mask, plain_mask[:, 1:])  # the prompt's words and [EOS]; [BOS] went with the instruction
    assert (features - plain[:, 1:])[mask].abs().max() > 1e-4  # read with the instruction in context
