"""Our networks as diffusers ``UNet2DModel``s, where that is exact, and why not where it is not.

The small ``unet`` network *is* a UNet2DModel. NCSN++ maps onto UNet2DModel's Skip blocks
(``SkipDownBlock2D`` / ``AttnSkipDownBlock2D`` / ``SkipUpBlock2D`` / ``AttnSkipUpBlock2D``, the
blocks diffusers' score-SDE models use) only in the 256 px layout: BigGAN residual blocks with
FIR resampling, an output-skip pyramid and an input-skip pyramid summed in through a 1x1
convolution, skip connections rescaled by 1/sqrt(2). Those blocks hard-code what NCSN++ leaves
open (3 image channels, the FIR kernel (1, 3, 3, 1), 32 groups in their attention norms), so each
knob is checked and a network that does not fit is refused with the reason.

Layer correspondence (ours -> UNet2DModel): ``embed.W`` -> ``time_proj.weight``; ``temb_mlp`` ->
``time_embedding``; level ``i`` of the down path -> ``down_blocks[i]`` (``downsample`` ->
``resnet_down``, ``combine.conv`` -> ``skip_conv``); ``mid`` -> ``mid_block``; level ``k`` of our
up path (lowest resolution first, as in diffusers) -> ``up_blocks[k]`` (``pyramid_out`` ->
``skip_norm`` / ``skip_conv``, at full resolution ``conv_norm_out`` / ``conv_out``; ``upsample``
-> ``resnet_up``). Attention 1x1 convolutions become the linear ``to_q/to_k/to_v/to_out.0``.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from typing import Any

from diffusers import UNet2DModel
from torch import Tensor, nn

from lightning_score.nets.ncsnpp import NCSNpp
from lightning_score.nets.unet import DiffusersUNet

#: diffusers' FIR resampling kernel (fixed inside its ResnetBlock2D / FirUpsample2D)
DIFFUSERS_FIR_KERNEL = (1.0, 3.0, 3.0, 1.0)
#: groups of the GroupNorm inside diffusers' AttnSkip blocks (NCSN++ uses min(C / 4, 32))
SKIP_ATTENTION_GROUPS = 32

_RESNET = {
    "norm0": "norm1",
    "conv0": "conv1",
    "temb_proj": "time_emb_proj",
    "norm1": "norm2",
    "conv1": "conv2",
    "shortcut": "conv_shortcut",
}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj": "to_out.0"}


class NotExpressible(ValueError):
    """A network (or a formulation) that diffusers cannot hold exactly."""


def ncsnpp_problem(net: NCSNpp) -> str | None:
    """Why ``net`` has no exact UNet2DModel, or None when it has one."""
    cfg = net.cfg
    if cfg.progressive_input == "residual":
        return (
            "its input pyramid is residual (progressive_input=residual, the CIFAR-10 NCSN++): "
            "UNet2DModel's skip blocks only add the input pyramid through a 1x1 convolution "
            "(progressive_input=input_skip)"
        )
    if (cfg.progressive, cfg.progressive_input) != ("output_skip", "input_skip"):
        name = "DDPM++" if cfg.progressive == cfg.progressive_input == "none" else "this NCSN++"
        return (
            f"{name} (progressive={cfg.progressive}, progressive_input={cfg.progressive_input}) "
            "has no UNet2DModel form: only the Skip blocks (output_skip + input_skip, the 256 px "
            "NCSN++) rescale residuals by 1/sqrt(2) and use NCSN++'s per-layer group counts"
        )
    problems = [
        (cfg.resblock_type != "biggan", f"resblock_type={cfg.resblock_type} (Skip blocks "
         "resample with BigGAN blocks)"),
        (not cfg.fir or tuple(map(float, cfg.fir_kernel)) != DIFFUSERS_FIR_KERNEL, f"fir="
         f"{cfg.fir}, fir_kernel={cfg.fir_kernel} (diffusers' FIR kernel is fixed to (1, 3, 3, 1))"),
        (not cfg.skip_rescale, "skip_rescale=False (Skip blocks always divide by sqrt(2))"),
        (cfg.progressive_combine != "sum", "progressive_combine=cat (Skip blocks sum the pyramid)"),
        (not cfg.conditional, "conditional=False (UNet2DModel always conditions on the noise)"),
        (net.conv_in.in_channels != 3, f"{net.conv_in.in_channels} image channels (diffusers' "
         "Skip blocks hard-code 3)"),
    ]  # fmt: skip
    for bad, why in problems:
        if bad:
            return why
    for level, attends in enumerate(net.attn_levels):
        channels = cfg.nf * cfg.ch_mult[level]
        if attends and min(channels // 4, 32) != SKIP_ATTENTION_GROUPS:
            return (
                f"attention at {channels} channels: diffusers' AttnSkip blocks normalise with "
                f"{SKIP_ATTENTION_GROUPS} groups, NCSN++ with min(C/4, 32) = {min(channels // 4, 32)} "
                "(attention levels need at least 128 channels)"
            )
    return None


def ncsnpp_unet_config(net: NCSNpp, resolution: int) -> dict[str, Any]:
    """The UNet2DModel config that holds ``net`` (whose image side is ``resolution``)."""
    cfg = net.cfg
    down = ["AttnSkipDownBlock2D" if a else "SkipDownBlock2D" for a in net.attn_levels]
    up = ["AttnSkipUpBlock2D" if a else "SkipUpBlock2D" for a in reversed(net.attn_levels)]
    channels = net.conv_in.in_channels
    return {
        "sample_size": resolution,
        "in_channels": channels,
        "out_channels": channels,
        "center_input_sample": net.center_input,
        "time_embedding_type": "fourier" if net.embed is not None else "positional",
        # the official (DDPM) sinusoidal embedding: sin first, frequencies over half - 1
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "down_block_types": tuple(down),
        "up_block_types": tuple(up),
        "block_out_channels": tuple(cfg.nf * m for m in cfg.ch_mult),
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": math.sqrt(2.0),
        "dropout": cfg.dropout,
        "act_fn": "silu",
        "attention_head_dim": None,  # one head over all channels
        "norm_num_groups": None,  # min(C / 4, 32) per layer, as NCSN++
        "norm_eps": 1e-6,
    }


def _ncsnpp_key(key: str, levels: int) -> str:
    """Our NCSN++ state-dict key -> the UNet2DModel key of the same tensor."""
    rules: Sequence[tuple[str, Any]] = (
        (r"^embed\.W$", "time_proj.weight"),
        (r"^temb_mlp\.0\.", "time_embedding.linear_1."),
        (r"^temb_mlp\.2\.", "time_embedding.linear_2."),
        (r"^down\.(\d+)\.blocks\.(\d+)\.(\w+)\.", lambda m: _res(f"down_blocks.{m[1]}.resnets.{m[2]}", m[3])),
        (r"^down\.(\d+)\.attns\.(\d+)\.(\w+)\.", lambda m: _att(f"down_blocks.{m[1]}.attentions.{m[2]}", m[3])),
        (r"^down\.(\d+)\.downsample\.(\w+)\.", lambda m: _res(f"down_blocks.{m[1]}.resnet_down", m[2])),
        (r"^down\.(\d+)\.combine\.conv\.", r"down_blocks.\1.skip_conv."),
        (r"^mid\.0\.(\w+)\.", lambda m: _res("mid_block.resnets.0", m[1])),
        (r"^mid\.1\.(\w+)\.", lambda m: _att("mid_block.attentions.0", m[1])),
        (r"^mid\.2\.(\w+)\.", lambda m: _res("mid_block.resnets.1", m[1])),
        (r"^up\.(\d+)\.blocks\.(\d+)\.(\w+)\.", lambda m: _res(f"up_blocks.{m[1]}.resnets.{m[2]}", m[3])),
        (r"^up\.(\d+)\.attn\.(\w+)\.", lambda m: _att(f"up_blocks.{m[1]}.attentions.0", m[2])),
        (r"^up\.(\d+)\.pyramid_out\.([02])\.", lambda m: _pyramid_out(int(m[1]), m[2], levels)),
        (r"^up\.(\d+)\.upsample\.(\w+)\.", lambda m: _res(f"up_blocks.{m[1]}.resnet_up", m[2])),
    )  # fmt: skip
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return key  # conv_in.* has the same name in both


def _res(block: str, child: str) -> str:
    return f"{block}.{_RESNET[child]}."


def _att(block: str, child: str) -> str:
    return f"{block}.{_ATTENTION[child]}."


def _pyramid_out(level: int, index: str, levels: int) -> str:
    top = level == levels - 1  # full resolution: UNet2DModel's own output layers
    norm, conv = (
        ("conv_norm_out", "conv_out")
        if top
        else (f"up_blocks.{level}.skip_norm", f"up_blocks.{level}.skip_conv")
    )
    return f"{norm if index == '0' else conv}."


def _ncsnpp_state_dict(net: NCSNpp, unet: UNet2DModel) -> dict[str, Tensor]:
    """``net``'s weights under ``unet``'s keys and shapes; every key of both is accounted for."""
    target = unet.state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in net.state_dict().items():
        new = _ncsnpp_key(key, net.num_levels)
        if new not in target:
            raise NotExpressible(f"internal error: {key} maps to {new}, which UNet2DModel lacks")
        if value.dim() == 4 and target[new].dim() == 2:  # attention 1x1 conv -> linear
            value = value[:, :, 0, 0]
        if value.shape != target[new].shape:
            raise NotExpressible(
                f"internal error: {key} {tuple(value.shape)} vs {new} {tuple(target[new].shape)}"
            )
        mapped[new] = value
    left = sorted(set(target) - set(mapped))
    if left:
        raise NotExpressible(f"internal error: UNet2DModel weights without a source: {left[:5]}")
    return mapped


def _check_groups(net: NCSNpp, unet: UNet2DModel) -> None:
    """Every mapped GroupNorm normalises over the same groups in both networks."""
    theirs = dict(unet.named_modules())
    for name, module in net.named_modules():
        if isinstance(module, nn.GroupNorm):
            other = theirs[_ncsnpp_key(f"{name}.weight", net.num_levels).removesuffix(".weight")]
            if other.num_groups != module.num_groups:
                raise NotExpressible(
                    f"{name} normalises over {module.num_groups} groups, its UNet2DModel "
                    f"counterpart over {other.num_groups}"
                )


def to_diffusers_unet(net: nn.Module, data_shape: Sequence[int]) -> UNet2DModel:
    """A UNet2DModel computing what ``net`` computes (weights copied), or NotExpressible."""
    if isinstance(net, DiffusersUNet):
        return copy.deepcopy(net.unet)
    if isinstance(net, NCSNpp):
        problem = ncsnpp_problem(net)
        if problem:
            raise NotExpressible(problem)
        unet = UNet2DModel(**ncsnpp_unet_config(net, int(data_shape[-1])))
        _check_groups(net, unet)
        unet.load_state_dict(_ncsnpp_state_dict(net, unet), strict=True)
        return unet.eval()
    raise NotExpressible(
        f"network {type(net).__name__} is not a UNet: only the 'unet' network and NCSN++ in its "
        "256 px layout map onto UNet2DModel"
    )


__all__ = [
    "NotExpressible",
    "ncsnpp_problem",
    "ncsnpp_unet_config",
    "to_diffusers_unet",
]
