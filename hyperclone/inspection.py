"""What a checkpoint is: family, shape, parameters, dtype, size on disk — from headers alone."""
from __future__ import annotations

import math
import os
from collections import Counter

from hyperclone.arch import BUFFERS, MOE_LAYOUTS
from hyperclone.consistency import check_config_matches_weights
from hyperclone.display import Inspection
from hyperclone.dtypes import NAME_BY_DTYPE
from hyperclone.io.reader import Checkpoint, open_checkpoint
from hyperclone.moe import moe_spec
from hyperclone.spec import ModelSpec, spec_from_config


def counted_tensors(ckpt: Checkpoint, spec: ModelSpec) -> dict:
    """The tensors transformers counts as parameters: no cached tables, no tied lm_head, no buffers saved
    with the weights (sigmoid routers' correction biases)."""
    fam = spec.adapter
    counted = {n: t for n, t in ckpt.tensors.items() if not n.endswith(fam.ignore_suffixes + BUFFERS)}
    if spec.tied:
        counted.pop(fam.lm_head + ".weight", None)
    return counted


def checkpoint_params(ckpt: Checkpoint, spec: ModelSpec) -> tuple[int, int]:
    """(total, active) parameters: active leaves out the routed experts a token does not use."""
    total = sum(math.prod(t.shape) for t in counted_tensors(ckpt, spec).values())
    layout = MOE_LAYOUTS.get(spec.family)
    if layout is None:
        return total, total
    moe = moe_spec(ckpt.config, layout, spec.layers)
    return total, total - sum(moe.moe_layers) * (moe.experts - moe.top_k) * layout.expert_params(spec.hidden, moe.inter)


def inspect_checkpoint(source: str | os.PathLike, **open_options) -> dict:
    ckpt = open_checkpoint(source, **open_options)
    spec = spec_from_config(ckpt.config)
    check_config_matches_weights(ckpt, "checkpoint")
    counted = counted_tensors(ckpt, spec)
    dtypes = Counter()
    for t in counted.values():
        dtypes[NAME_BY_DTYPE.get(t.dtype, str(t.dtype))] += math.prod(t.shape)
    info = {
        "path": str(ckpt.path),
        **spec.as_dict(),
        "parameters": sum(math.prod(t.shape) for t in counted.values()),
        "dtype": dtypes.most_common(1)[0][0] if dtypes else None,
        "dtypes": dict(dtypes),
        "size_on_disk": sum(f.stat().st_size for f in ckpt.weight_files()),
        "files": len(ckpt.weight_files()),
        "config_inferred": bool(ckpt.config_inferred),
    }
    layout = MOE_LAYOUTS.get(spec.family)
    if layout is not None:
        moe = moe_spec(ckpt.config, layout, spec.layers)
        info.update(experts=moe.experts, top_k=moe.top_k, expert_inner=moe.inter, shared_inner=moe.shared_inter,
                    moe_layers=sum(moe.moe_layers), routing=f"{layout.scoring}{', renormalised' if moe.normalised else ''}")
        info["active_parameters"] = checkpoint_params(ckpt, spec)[1]
    manifest = ckpt.directory / "growth.json"
    if manifest.exists():
        info["grown_by_hyperclone"] = True
    return Inspection(info)
