"""Tiny random-weight Stable Diffusion checkpoints, built from config (no download).

This is how diffusers' own fast tests build pipelines. ``build_tiny_checkpoint`` writes a
normal diffusers checkpoint directory with ``save_pretrained``, so the engine loads it with
the same ``from_pretrained`` code that loads a real checkpoint on a GPU host.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["TinyConfig", "PRESETS", "build_tiny_checkpoint", "write_byte_level_tokenizer"]


class TinyConfig(BaseModel):
    """Sizes of a random-weight build. Defaults: a few MB, fast on one CPU core.

    ``PRESETS`` also holds real-architecture sizes (random weights) for GPU benchmarks.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    unet_channels: tuple[int, ...] = (32, 64)
    down_block_types: tuple[str, ...] | None = None  # default: DownBlock2D then cross-attn blocks
    up_block_types: tuple[str, ...] | None = None
    attention_head_dim: int | tuple[int, ...] = 8
    use_linear_projection: bool = False
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_layers_per_block: int = 1
    cross_attention_dim: int = 32
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int | None = None  # default: 2 x cross_attention_dim
    layers_per_block: int = 1
    sample_size: int = 64  # latent size; image size = sample_size * 2**(len(vae_channels)-1)
    # "sdxl": a StableDiffusionXLPipeline (two text encoders, pooled text + size conditioning);
    # its UNet's cross_attention_dim is the two encoders' widths together.
    architecture: Literal["sd", "sdxl"] = "sd"
    transformer_layers_per_block: int | tuple[int, ...] = 1
    addition_time_embed_dim: int = 8
    text2_hidden: int = 32  # sdxl: the second (projecting) encoder; the first gets the rest
    text2_layers: int = 2
    text2_heads: int = 4
    text2_intermediate: int | None = None


PRESETS: dict[str, TinyConfig] = {
    "tiny": TinyConfig(),
    # Stable Diffusion 2.1 / SD-Turbo architecture (865M-parameter UNet, OpenCLIP-H-sized
    # text encoder, 512px), random weights. Vocabulary is the byte-level one below.
    "sd-turbo-class": TinyConfig(
        unet_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        layers_per_block=2,
        vae_channels=(128, 256, 512, 512),
        vae_layers_per_block=2,
        cross_attention_dim=1024,
        text_layers=23,
        text_heads=16,
        text_intermediate=4096,
        sample_size=64,
    ),
    # SDXL-shaped and small enough for a CPU test: two text encoders, text_time conditioning.
    "tiny-xl": TinyConfig(
        architecture="sdxl",
        unet_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        vae_channels=(32, 64),
        cross_attention_dim=64,
        text2_hidden=32,
        sample_size=32,
    ),
    # Stable Diffusion XL base architecture (2.6B-parameter UNet, CLIP-L + OpenCLIP-bigG text
    # encoders, 1024px), random weights.
    "sdxl-class": TinyConfig(
        architecture="sdxl",
        unet_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        use_linear_projection=True,
        layers_per_block=2,
        vae_channels=(128, 256, 512, 512),
        vae_layers_per_block=2,
        cross_attention_dim=2048,
        text_layers=12,
        text_heads=12,
        text_intermediate=3072,
        addition_time_embed_dim=256,
        text2_hidden=1280,
        text2_layers=32,
        text2_heads=20,
        text2_intermediate=5120,
        sample_size=128,
    ),
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_byte_level_tokenizer(directory: Path) -> int:
    """A character-level CLIP BPE vocabulary (no merges); returns the vocabulary size."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def build_tiny_checkpoint(directory: Path, config: TinyConfig | None = None) -> Path:
    """Write a random-weight StableDiffusion(XL)Pipeline checkpoint into ``directory``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    cfg = config or TinyConfig()
    directory = Path(directory)
    tok_dir = directory / ".tokenizer-src"
    vocab_size = write_byte_level_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer(
        vocab_file=str(tok_dir / "vocab.json"),
        merges_file=str(tok_dir / "merges.txt"),
        model_max_length=77,
    )

    xl = cfg.architecture == "sdxl"
    text1_hidden = cfg.cross_attention_dim - cfg.text2_hidden if xl else cfg.cross_attention_dim
    xl_unet: dict[str, Any] = (
        dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=cfg.addition_time_embed_dim,
            # pooled text (the second encoder's projection) + 6 size/crop numbers
            projection_class_embeddings_input_dim=6 * cfg.addition_time_embed_dim
            + cfg.text2_hidden,
            transformer_layers_per_block=cfg.transformer_layers_per_block,
        )
        if xl
        else {}
    )
    torch.manual_seed(cfg.seed)
    n = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        **xl_unet,
        block_out_channels=cfg.unet_channels,
        layers_per_block=cfg.layers_per_block,
        sample_size=cfg.sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=cfg.down_block_types
        or ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=cfg.up_block_types or ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        use_linear_projection=cfg.use_linear_projection,
        norm_num_groups=min(32, cfg.unet_channels[0]),
    )
    torch.manual_seed(cfg.seed)
    m = len(cfg.vae_channels)
    vae = AutoencoderKL(
        block_out_channels=cfg.vae_channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * m,
        up_block_types=("UpDecoderBlock2D",) * m,
        latent_channels=4,
        layers_per_block=cfg.vae_layers_per_block,
        norm_num_groups=min(32, cfg.vae_channels[0]),
        sample_size=cfg.sample_size * 2 ** (m - 1),
    )

    def text_config(
        hidden: int, intermediate: int | None, heads: int, layers: int
    ) -> CLIPTextConfig:
        return CLIPTextConfig(
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            hidden_size=hidden,
            intermediate_size=intermediate or hidden * 2,
            layer_norm_eps=1e-05,
            num_attention_heads=heads,
            num_hidden_layers=layers,
            vocab_size=vocab_size,
            max_position_embeddings=77,
            projection_dim=hidden,
        )

    torch.manual_seed(cfg.seed)
    text_encoder = CLIPTextModel(
        text_config(text1_hidden, cfg.text_intermediate, cfg.text_heads, cfg.text_layers)
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
    )
    pipe: Any
    if xl:
        torch.manual_seed(cfg.seed)
        text_encoder_2 = CLIPTextModelWithProjection(
            text_config(cfg.text2_hidden, cfg.text2_intermediate, cfg.text2_heads, cfg.text2_layers)
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    directory.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(directory), safe_serialization=True)
    (directory / "lanes-tiny.json").write_text(cfg.model_dump_json())
    return directory
