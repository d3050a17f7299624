"""LaVIT key/shape compatibility with the released rain1011/LaVIT-7B-v2 weight files (no weights needed)."""

from __future__ import annotations

import re

import pytest
import torch

from pigeon.lavit.config import DECODER_FILE, EVA_FILE, TINY, TOKENIZER_FILE, LaVITConfig
from pigeon.lavit.layout import WEIGHT_FILES, check_state_dict, expected_shapes, missing_files
from pigeon.lavit.tokenizer_decoder import HighresTokenizerDecoder
from pigeon.lavit.visual_tokenizer import DynamicVisualTokenizer
from pigeon_bench.errors import UserError


def _file_states(config: LaVITConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Our modules' state dicts split the way the release splits them into files."""
    tok, dec = DynamicVisualTokenizer(config), HighresTokenizerDecoder(config)
    return {
        EVA_FILE: tok.encoder.state_dict(),
        TOKENIZER_FILE: {k: v for k, v in tok.state_dict().items() if not k.startswith("encoder.")},
        DECODER_FILE: dec.state_dict(),
    }


@pytest.fixture(scope="module")
def full_states() -> dict[str, dict[str, torch.Tensor]]:
    with torch.device("meta"):  # released sizes without allocating 1.8 B parameters
        return _file_states(LaVITConfig())


@pytest.mark.parametrize("config", [TINY, LaVITConfig()], ids=["tiny", "released"])
def test_module_keys_and_shapes_match_the_released_table(config, full_states):
    states = full_states if config == LaVITConfig() else _file_states(config)
    for file, state in states.items():
        expected = expected_shapes(file, config)
        assert set(state) == set(expected), file
        assert {k: tuple(v.shape) for k, v in state.items()} == expected
        # every documented pattern is used by at least one concrete key
        used = {re.sub(r"\.\d+\.", ".{i}.", k, count=1) if k not in WEIGHT_FILES[file] else k for k in state}
        assert used == set(WEIGHT_FILES[file]), file


def test_released_shapes_are_the_numbers_in_the_lavit_sources(full_states):
    eva, tok, dec = full_states[EVA_FILE], full_states[TOKENIZER_FILE], full_states[DECODER_FILE]
    assert eva["pos_embed"].shape == (1, 257, 1408)
    assert eva["patch_embed.proj.weight"].shape == (1408, 3, 14, 14)
    assert eva["blocks.39.attn.qkv.weight"].shape == (4224, 1408)
    assert eva["blocks.0.mlp.fc1.weight"].shape == (6144, 1408)
    assert eva["head.weight"].shape == (1024, 1408)
    assert "blocks.40.norm1.weight" not in eva
    assert tok["quantize.embedding.weight"].shape == (16384, 32)
    assert tok["causal_encoder.blocks.11.token_causal_attn.qkv.bias"].shape == (4224,)
    assert tok["token_predictor.out_conv.4.weight"].shape == (2, 352)
    assert tok["encode_task_layer.2.weight"].shape == (32, 1408)
    assert dec["in_proj.weight"].shape == (1408, 32)
    assert dec["unet_proj_1.weight"].shape == (768, 1408)
    assert dec["unet_proj_2.weight"].shape == (1280, 1408)
    assert dec["unet_attnpool.positional_embedding"].shape == (257, 1408)
    assert dec["unet_attnpool.c_proj.weight"].shape == (1280, 1408)


@pytest.mark.parametrize(("file", "released_bytes"),
                         [(EVA_FILE, 2_025_338_783), (TOKENIZER_FILE, 808_189_293)])
def test_full_size_parameter_bytes_match_the_released_file_sizes(file, released_bytes, full_states):
    """bf16 payload of our key set vs the LFS sizes on the hub: only per-tensor pickle overhead may remain.

    This is what shows tokenizer_encoder.bin holds exactly selector + merger + task layer + codebook (a
    vit_proj, 1408 x 4096, would add 11.5 MB) and that the EVA file is the 40-block ViT-g.
    """
    state = full_states[file]
    payload = 2 * sum(v.numel() for v in state.values())
    overhead = released_bytes - payload
    assert 0 < overhead < 400 * len(state)


def test_check_state_dict_names_the_missing_key_and_the_wrong_shape():
    state = _file_states(TINY)[DECODER_FILE]
    check_state_dict(state, DECODER_FILE, TINY)
    bad = dict(state)
    del bad["unet_proj_2.bias"]
    with pytest.raises(UserError, match=r"missing weights unet_proj_2\.bias"):
        check_state_dict(bad, DECODER_FILE, TINY)
    bad = {**state, "query_embed": torch.zeros(1, 9, TINY.decoder_width)}
    with pytest.raises(UserError, match=r"query_embed has shape \(1, 9, 32\), expected \(1, 16, 32\)"):
        check_state_dict(bad, DECODER_FILE, TINY)


def test_missing_files_lists_every_absent_part(tmp_path):
    assert len(missing_files(tmp_path)) == 11
    (tmp_path / "visual_tokenizer").mkdir()
    (tmp_path / EVA_FILE).write_bytes(b"x")
    missing = missing_files(tmp_path)
    assert EVA_FILE not in missing and TOKENIZER_FILE in missing and "language_model/<weights>" in missing
