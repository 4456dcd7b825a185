"""Architecture adapters: a table of tensor names and roles per transformers family."""
from hyperclone.arch.families import FAMILIES, Family, Role, Rule, family_for

__all__ = ["FAMILIES", "Family", "Role", "Rule", "family_for"]
