"""``LaVITBackbone``: the Pigeon backbone interface (pigeon/backbone.py) over a LaVIT-7B-v2 folder."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pigeon.backbone import Backbone
from pigeon.lavit.config import (
    CLIP_MEAN,
    CLIP_STD,
    CONFIG_FILE,
    DECODER_FILE,
    EVA_FILE,
    LM_DIR,
    PIXEL_DIR,
    REPO_ID,
    TOKENIZER_FILE,
    LaVITConfig,
)
from pigeon.lavit.layout import check_state_dict, load_weights, require_complete
from pigeon.lavit.pixel_decoder import PixelDecoder
from pigeon.lavit.tokenizer_decoder import HighresTokenizerDecoder
from pigeon.lavit.visual_tokenizer import DynamicVisualTokenizer
from pigeon_bench import fileio
from pigeon_bench.errors import UserError
from pigeon_bench.fileio import to_rgb

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_folder(path_or_id: str | Path) -> Path:
    """A local folder as is; a hub id ("owner/name") through the hub cache (download unless offline)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _HUB_ID.fullmatch(str(path_or_id)):
        raise UserError(f"LaVIT folder not found: {path_or_id}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(path_or_id)))
    except Exception as exc:  # offline, unknown repo, network: all mean "weights absent here"
        first = str(exc).splitlines()[0][:100] if str(exc) else ""
        reason = ("not in the local hub cache and downloads are off"
                  if isinstance(exc, LocalEntryNotFoundError) else f"{type(exc).__name__}: {first}")
        raise UserError(f"LaVIT weights {path_or_id} are not available here ({reason}); download "
                        f"{REPO_ID} (~26 GB) and pass its folder") from None


def _eight_bit(device: str | torch.device) -> dict[str, Any]:
    """from_pretrained options that load a model in 8-bit on ``device``; UserError where it cannot be."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None or torch.device(device).type != "cuda":
        raise UserError("an 8-bit LLM needs bitsandbytes and a CUDA device (see pigeon.inference.resolve)")
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": {"": str(device)}}


class LaVITBackbone(Backbone):
    """LaVIT-7B-v2: EVA ViT-g + dynamic visual tokenizer, Llama-2-7B with 16384 visual tokens appended
    (LM ids 32002..48385, <img> = 32000, </img> = 32001), high-res tokenizer decoder and SDXL-size UNet."""

    name = "lavit"

    def __init__(self, config: LaVITConfig, visual_tokenizer: DynamicVisualTokenizer,
                 tokenizer_decoder: HighresTokenizerDecoder, language_model: torch.nn.Module,
                 text_tokenizer: Any, pixel_decoder: PixelDecoder, source: str, root: Path):
        super().__init__()
        self.config = config
        self.visual_tokenizer = visual_tokenizer
        self.tokenizer_decoder = tokenizer_decoder
        self.language_model = language_model
        self.text_tokenizer = text_tokenizer
        self.pixel_decoder = pixel_decoder
        self.source, self.root = source, root
        text_vocab = len(text_tokenizer)
        lm_vocab = language_model.get_input_embeddings().num_embeddings
        self.visual_vocab_size = config.codebook_size
        self.visual_offset = text_vocab + 2  # <img>, </img> follow the text vocabulary, then the codes
        if lm_vocab != self.visual_offset + self.visual_vocab_size:
            raise UserError(f"{root / LM_DIR}: LM vocabulary {lm_vocab} != text {text_vocab} + 2 specials + "
                            f"{self.visual_vocab_size} visual codes (not a LaVIT language model?)")
        self.special_ids = {"bos": int(text_tokenizer.bos_token_id), "boi": text_vocab, "eoi": text_vocab + 1}
        self.hidden_size = int(language_model.config.hidden_size)
        self.feature_length = config.num_patches
        self.feature_dim = config.feature_dim
        self.image_size = config.output_size
        self.min_visual_tokens = config.min_visual_tokens
        self.max_visual_tokens = config.num_patches  # the decoder has num_patches code positions

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path = REPO_ID, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device = "cpu", load_in_8bit: bool = False,
                        **config_overrides: Any) -> LaVITBackbone:
        """Load a LaVIT-7B-v2 folder (or hub id); ``config_overrides`` e.g. output_size=512 (faster).

        ``load_in_8bit``: the LLM in 8-bit (bitsandbytes, CUDA only), the rest in ``dtype``.
        """
        quantization = _eight_bit(device) if load_in_8bit else {}
        root = resolve_folder(path_or_id)
        require_complete(root)
        config = LaVITConfig.for_folder(root, **config_overrides)

        eva = load_weights(root, EVA_FILE)
        check_state_dict(eva, EVA_FILE, config)
        tok_state = load_weights(root, TOKENIZER_FILE)
        check_state_dict(tok_state, TOKENIZER_FILE, config)
        with torch.device("meta"):
            visual_tokenizer = DynamicVisualTokenizer(config)
            tokenizer_decoder = HighresTokenizerDecoder(config)
        visual_tokenizer.encoder.load_state_dict(eva, strict=True, assign=True)
        # LaVIT loads this file non-strictly after EVA: it lacks encoder.* and vit_proj.* (understanding only)
        visual_tokenizer.load_state_dict(tok_state, strict=False, assign=True)
        dec_state = load_weights(root, DECODER_FILE)
        check_state_dict(dec_state, DECODER_FILE, config)
        tokenizer_decoder.load_state_dict(dec_state, strict=True, assign=True)
        del eva, tok_state, dec_state

        from transformers import LlamaForCausalLM, LlamaTokenizer

        lm_dir = root / LM_DIR
        try:
            text_tokenizer = LlamaTokenizer.from_pretrained(lm_dir)
            language_model = LlamaForCausalLM.from_pretrained(lm_dir, dtype=dtype, **quantization)
        except (OSError, ValueError, ImportError) as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise UserError(f"{lm_dir}: cannot load the LaVIT language model ({reason})") from None
        pixel_decoder = PixelDecoder.from_folder(root / PIXEL_DIR, dtype)
        visual_tokenizer.to(dtype)  # the LM and diffusers parts were loaded in ``dtype`` already
        tokenizer_decoder.to(dtype)
        backbone = cls(config, visual_tokenizer, tokenizer_decoder, language_model, text_tokenizer,
                       pixel_decoder, str(path_or_id), root)
        return backbone.to(device).requires_grad_(False).eval()

    # 1. visual tokenizer ------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """LaVIT's image processor: RGB, bicubic resize to the encoder size, CLIP normalisation."""
        import torchvision.transforms.functional as TF

        size = self.config.image_size
        batch = torch.stack([
            TF.to_tensor(to_rgb(im).resize((size, size), Image.Resampling.BICUBIC)) for im in images
        ])
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return ((batch - mean) / std).to(self.device, self.dtype)

    @torch.no_grad()
    def tokenize_images(self, images: Sequence[Image.Image], batch_size: int = 1) -> list[torch.Tensor]:
        """One image per forward by default: batched kernels may round differently, and a flipped keep
        decision or codebook argmin would make an image's tokens depend on its batch (EVA-g on one 224 px
        image is cheap next to the LM and the UNet)."""
        out: list[torch.Tensor] = []
        for start in range(0, len(images), batch_size):
            out += self.visual_tokenizer(self.preprocess(images[start:start + batch_size]))
        return out

    # 2. text tokenizer -------------------------------------------------------------------------------------
    def tokenize_text(self, texts: Sequence[str]) -> list[torch.Tensor]:
        ids = self.text_tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [torch.tensor(i, dtype=torch.long, device=self.device) for i in ids]

    # 4. tokenizer decoder ----------------------------------------------------------------------------------
    def _decode(self, codes: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One image at a time (no padding), so an image's features never depend on its batch."""
        vt = self.visual_tokenizer
        parts = [self.tokenizer_decoder([vt.code_vectors(c.to(self.device))]) for c in codes]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def decode_tokens(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Codes -> the UNet context LaVIT feeds its pixel decoder, (B, 256, 2048) released."""
        return self._decode(codes)[0]

    @torch.no_grad()
    def decode_tokens_pooled(self, codes: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes -> (context (B, F, C), pooled (B, 1280 released)): both SDXL conditionings."""
        return self._decode(codes)

    # 5. pixel decoder --------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_pixels(self, features: torch.Tensor, seeds: Sequence[int],
                      pooled: torch.Tensor | None = None) -> list[Image.Image]:
        """Context features -> images, one image at a time (an image never depends on its batch). Without
        ``pooled`` it is recovered from the context (``HighresTokenizerDecoder.pooled_from_context``);
        ``render`` passes the decoder's own."""
        if len(seeds) != features.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {features.shape[0]} images")
        features = features.to(self.device, self.dtype)
        if pooled is None:
            pooled = self.tokenizer_decoder.pooled_from_context(features)
        pooled = pooled.to(self.device, self.dtype)
        c = self.config
        return [im for i, seed in enumerate(seeds)
                for im in self.pixel_decoder(features[i:i + 1], pooled[i:i + 1], [seed], c.output_size,
                                             c.num_inference_steps, c.guidance_scale, c.show_progress)]

    def render(self, codes: Sequence[torch.Tensor], seeds: Sequence[int]) -> list[Image.Image]:
        context, pooled = self.decode_tokens_pooled(codes)
        return self.decode_pixels(context, seeds, pooled=pooled)

    # identity ----------------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        fingerprint = fileio.folder_fingerprint(self.root, exclude=(".cache",))
        return {"backbone": self.name, "source": self.source, "fingerprint": fingerprint,
                "config": "released" if not (self.root / CONFIG_FILE).is_file() else self.config.to_json()}


