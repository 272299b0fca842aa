"""TS-CAM, Token Semantic Coupled Attention Map (Gao et al., 2021; survey §2.2.1): a DeiT
vision transformer whose patch tokens, reshaped to the patch grid, go through a conv head
to per-class *semantic-aware* maps (scored by GAP, trained with cross-entropy); the
*semantic-agnostic* attention map is the class token's attention to the patch tokens,
averaged over heads and layers; the CAM of class c is their product, ``S_c ⊙ A``, on the
patch grid, then upsampled (``wsol.cams.to_cam``).

Following the TS-CAM code (``deit_tscam``): head = conv3×3 from the embedding to the classes;
attention weights taken after the softmax and before attention dropout; the per-layer maps
are combined by a mean (TS-CAM sums them: the same CAM after min-max normalisation);
``drop_path_rate`` 0.1. The survey uses DeiT-Ti / DeiT-S / DeiT-B.

The transformer is timm's (``arch``), built with random weights; ``weights`` loads a local
state dict (timm / DeiT key names; a DeiT release's ``{"model": ...}`` works; the
classifier ``head.*`` is ignored) and never downloads anything. The blocks run through our
own loop (same modules, same parameters) so that the class-token attention is available
while the attention itself stays fused (SDPA). Image sizes other than 224: the position
embedding's grid part is resampled (bicubic) to the image's patch grid; height and width
must be multiples of the patch size (16), otherwise a ConfigError says so. TS-CAM ignores
``model.backbone``: the DeiT is chosen by ``arch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from wsol.cams import to_cam
from wsol.config import BackboneConfig
from wsol.errors import ConfigError
from wsol.methods.base import Method, MethodParams, Output, register
from wsol.nn.backbones import Normalize


class TSCAMParams(MethodParams):
    arch: Literal["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"] = Field(
        "deit_small_patch16_224",
        description="timm DeiT architecture (survey: DeiT-Ti, DeiT-S, DeiT-B; TS-CAM's default DeiT-S)",
    )
    weights: str = Field(
        "none",
        description="'none' (random init) or a local state-dict file of that DeiT (timm key names); never downloaded",
    )
    drop_path_rate: float = Field(0.1, ge=0.0, lt=1.0, description="stochastic depth rate of the blocks (TS-CAM: 0.1)")


def _check_vit(vit: Any, arch: str) -> None:
    attn = vit.blocks[0].attn
    need = [
        n
        for n in ("qkv", "proj", "num_heads", "scale", "q_norm", "k_norm", "proj_drop", "attn_drop")
        if not hasattr(attn, n)
    ]
    need += [
        n for n in ("norm1", "norm2", "mlp", "ls1", "ls2", "drop_path1", "drop_path2") if not hasattr(vit.blocks[0], n)
    ]
    if need or getattr(vit, "num_prefix_tokens", 1) != 1 or getattr(vit, "no_embed_class", False):
        raise ConfigError(
            f"TS-CAM: timm's {arch} has an unexpected layout (missing {need}); install a timm version "
            "whose VisionTransformer blocks have norm1/attn(qkv, proj)/norm2/mlp (timm >= 0.9)"
        )


def resample_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Position embedding 1×(1+h·w)×D of a class token + an ``old_grid`` of patches -> the
    same for ``new_grid`` (grid part resampled bicubically, class token kept)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False).to(pos_embed.dtype)
    return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


def load_deit_weights(vit: Any, path: str, arch: str) -> None:
    """Load a local state dict into timm's DeiT ``vit`` (head ignored, position embedding
    resampled to the model's grid when it was trained at another size)."""
    file = Path(path).expanduser()
    field = "model.method.params (tscam).weights"
    if not file.is_file():
        raise ConfigError(f"{field}: file {file} not found (expected a local {arch} state dict; nothing is downloaded)")
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / not a torch file / pickled code
        raise ConfigError(f"{field}: cannot read {file} as a torch state dict ({e})") from None
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ConfigError(f"{field}: {file} holds a {type(sd).__name__}, expected a state dict")
    sd = {k.removeprefix("module.").removeprefix("vit."): v for k, v in sd.items()}
    own = vit.state_dict()
    keep = {k: v for k, v in sd.items() if k in own and not k.startswith("head")}
    if "pos_embed" in keep and keep["pos_embed"].shape != own["pos_embed"].shape:
        n_old = keep["pos_embed"].shape[1] - 1
        side = int(round(n_old**0.5))
        if side * side != n_old:
            raise ConfigError(f"{field}: pos_embed of {n_old} patch tokens is not a square grid")
        keep["pos_embed"] = resample_pos_embed(keep["pos_embed"], (side, side), vit.patch_embed.grid_size)
    bad = [k for k, v in keep.items() if v.shape != own[k].shape]
    missing = [k for k in own if k not in keep]
    if bad or missing:
        what = f"shape mismatch for {bad[:3]}" if bad else f"missing {len(missing)} tensors, e.g. {missing[:3]}"
        raise ConfigError(f"{field}: {file} does not fit {arch} ({what}); expected a timm/DeiT state dict of {arch}")
    vit.load_state_dict(keep, strict=False)


@register
class TSCAM(Method):
    """TS-CAM: DeiT with per-class token maps coupled to the class-token attention averaged over layers."""

    name = "tscam"
    Params = TSCAMParams
    #: lighter params for tests/test_contract.py (the smallest DeiT)
    contract_params: ClassVar[dict] = {"arch": "deit_tiny_patch16_224"}
    backbone_prefixes = ("vit.",)

    def __init__(self, params: TSCAMParams, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        import timm  # lazy: only TS-CAM needs it

        self.normalize = Normalize()  # DeiT: ImageNet mean / std, images in [0, 1]
        vit: Any = timm.create_model(params.arch, pretrained=False, num_classes=0, drop_path_rate=params.drop_path_rate)
        _check_vit(vit, params.arch)
        if params.weights.lower() != "none":
            load_deit_weights(vit, params.weights, params.arch)
        self.vit = vit
        self.patch = int(vit.patch_embed.patch_size[0])
        self.head = nn.Conv2d(vit.embed_dim, num_classes, kernel_size=3, padding=1)

    def _block(self, blk: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One timm block (pre-norm attention + MLP, as ``blk(x)``) and the class token's
        attention to every token, averaged over heads: B×N."""
        a = blk.attn
        h = blk.norm1(x)
        b, n, _ = h.shape
        q, k, v = a.qkv(h).reshape(b, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        # the class token's softmax row (TS-CAM records it after softmax, before dropout)
        cls_attn = ((q[:, :, :1] * a.scale) @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, 0].mean(dim=1)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=a.attn_drop.p if self.training else 0.0, scale=a.scale)
        o = o.transpose(1, 2).reshape(b, n, -1)
        o = getattr(a, "norm", nn.Identity())(o)
        if getattr(a, "gate", None) is not None:
            o = o * a.gate(h).sigmoid()
        o = a.proj_drop(a.proj(o))
        x = x + blk.drop_path1(blk.ls1(o))
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        return x, cls_attn

    def tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens on the patch grid (B×D×h×w, after the final norm) and the class-token
        attention to the patches, averaged over heads and layers (B×h×w, >= 0)."""
        hh, ww = images.shape[-2:]
        if hh % self.patch or ww % self.patch:
            raise ConfigError(
                f"TS-CAM: image size {hh}×{ww} is not a multiple of the DeiT patch size {self.patch}; "
                f"set data.image_size (and data.crop_size) to multiples of {self.patch}, e.g. 224"
            )
        vit: Any = self.vit
        x = vit.patch_embed.proj(self.normalize(images))  # B×D×h×w
        gh, gw = x.shape[-2:]
        x = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))
        x = torch.cat([vit.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = vit.pos_drop(x + resample_pos_embed(vit.pos_embed, vit.patch_embed.grid_size, (gh, gw)))
        x = vit.norm_pre(vit.patch_drop(x))
        attn = []
        for blk in vit.blocks:
            x, a = self._block(blk, x)
            attn.append(a[:, 1:])  # class token -> patch tokens
        x = vit.norm(x)
        patches = x[:, 1:].transpose(1, 2).reshape(len(x), -1, gh, gw)
        return patches, torch.stack(attn).mean(dim=0).view(len(x), gh, gw)

    def forward(self, images: torch.Tensor) -> Output:
        patches, attn = self.tokens(images)
        token_maps = self.head(patches)  # semantic-aware maps B×C×h×w
        logits = token_maps.mean(dim=(2, 3))  # GAP
        coupled = token_maps * attn[:, None]  # TS-CAM: semantic map ⊙ semantic-agnostic attention
        return Output(logits=logits, maps=coupled, extras={"token_maps": token_maps, "attention": attn})

    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        out = self(images)
        t = self.select_targets(out.logits, targets)
        maps = out.maps[torch.arange(len(t), device=t.device), t]
        return to_cam(maps, (images.shape[-2], images.shape[-1]))
