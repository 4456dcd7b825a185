"""Architecture adapters: one table entry per transformers family, the only place that knows one."""
from hyperclone.arch.families import BUFFERS, DENSE_FAMILIES, FAMILIES, MOE_LAYOUTS, Family, Refusal, Role, Rule, families, family_for, fused_qkv_rows
from hyperclone.arch.moe import MoeLayout

__all__ = ["BUFFERS", "DENSE_FAMILIES", "FAMILIES", "MOE_LAYOUTS", "Family", "MoeLayout", "Refusal", "Role", "Rule", "families", "family_for", "fused_qkv_rows"]
