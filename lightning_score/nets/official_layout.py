"""The official score_sde_pytorch state-dict layout of our NCSN++ / DDPM++ (``all_modules.<i>``,
with ``NIN`` weights as (in, out) matrices), mapped onto our module tree both ways."""

from __future__ import annotations

from torch import Tensor

from lightning_score.nets.ncsnpp import NCSNpp


def official_key_map(net: NCSNpp) -> dict[str, tuple[str, bool]]:
    """Our state-dict key -> (official key without ``module.``, whether it is a NIN weight/bias).

    Blocks whose children are named differently from the official ones carry
    ``official_names`` (our child -> official child) and ``official_nin`` (children that are
    official ``NIN`` layers: an (in, out) matrix ``W`` and a bias ``b``, held here as 1x1
    convolutions). Keys come out in the official registration order (``model.parameters()``).
    """
    paths = {id(m): name for name, m in net.named_modules()}
    mapping: dict[str, tuple[str, bool]] = {}
    for slot, module in enumerate(net.official_order):
        ours = paths[id(module)]
        names = getattr(module, "official_names", {})
        nin = getattr(module, "official_nin", set())
        for local in module.state_dict():
            child, _, param = local.rpartition(".")
            if child in nin:
                official = f"{names[child]}.{'W' if param == 'weight' else 'b'}"
            elif child:
                official = f"{names.get(child, child)}.{param}"
            else:
                official = param
            mapping[f"{ours}.{local}"] = (f"all_modules.{slot}.{official}", child in nin)
    return mapping


def to_official_state_dict(net: NCSNpp, prefix: str = "module.") -> dict[str, Tensor]:
    """Our weights in score_sde_pytorch's layout (``prefix`` is DataParallel's ``module.``)."""
    ours = net.state_dict()
    out: dict[str, Tensor] = {}
    for key, (official, nin) in official_key_map(net).items():
        value = ours[key]
        if nin and value.dim() == 4:  # 1x1 conv weight (out, in, 1, 1) -> NIN W (in, out)
            value = value[:, :, 0, 0].t().contiguous()
        out[prefix + official] = value
    return out


def from_official_state_dict(net: NCSNpp, official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an official ``model`` state dict (with or without ``module.``) onto ``net``'s keys.

    Raises a ValueError that lists missing, unexpected and wrongly shaped keys, so a checkpoint
    built for another config fails with the keys that differ.
    """
    stripped = {k.removeprefix("module."): v for k, v in official.items()}
    stripped.pop("sigmas", None)  # the official SMLD noise table buffer; our SDE owns the schedule
    ours = net.state_dict()
    result: dict[str, Tensor] = {}
    missing, mismatched = [], []
    for key, (off_key, nin) in official_key_map(net).items():
        if off_key not in stripped:
            missing.append(off_key)
            continue
        value = stripped.pop(off_key)
        if nin and value.dim() == 2:
            value = value.t()[:, :, None, None]
        if tuple(value.shape) != tuple(ours[key].shape):
            expected = tuple(ours[key].shape)
            if nin and len(expected) == 4:
                expected = (expected[1], expected[0])
                got = tuple(value.shape[:2][::-1])
            else:
                got = tuple(value.shape)
            mismatched.append(f"{off_key}: checkpoint {got} vs model {expected}")
            continue
        result[key] = value.to(ours[key].dtype)
    unexpected = sorted(stripped)
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched[:20]))
        if missing:
            parts.append(f"{len(missing)} keys missing from the checkpoint: {missing[:20]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys in the checkpoint: {unexpected[:20]}")
        raise ValueError(
            "the checkpoint does not fit this network configuration (wrong preset or overrides?): "
            + " | ".join(parts)
        )
    return result
