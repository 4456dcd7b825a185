"""Growth presets and training recipes as YAML (installed as package data of hyperclone.recipes)."""
