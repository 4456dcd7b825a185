"""Lazy checkpoint reader: tensor names, shapes and row slices, never the whole model at once."""
from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hyperclone.dtypes import SAFETENSORS
from hyperclone.errors import UserError
from hyperclone.io.infer import infer_config
from hyperclone.io.resolve import resolve_source

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path
    offset: int = -1  # absolute byte offset of the data in a safetensors file; -1 for pickles


@dataclass
class Checkpoint:
    """A source opened lazily. `config` is config.json's content (or what was inferred)."""

    path: Path
    files: list[Path]
    tensors: dict[str, TensorInfo]
    config: dict
    config_inferred: list[str] = field(default_factory=list)
    config_file: Path | None = None  # the config.json read, None when inferred from the tensors
    _handles: dict = field(default_factory=dict, repr=False)

    @property
    def directory(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def _handle(self, file: Path):
        if file not in self._handles:
            if file.suffix in PICKLE_SUFFIXES:
                self._handles[file] = _load_pickle(file)
            else:
                self._handles[file] = os.open(file, os.O_RDONLY)
        return self._handles[file]

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor (elements for a vector), read without loading the rest.

        safetensors rows are read with pread at the header's offsets rather than through mmap, so
        pages already used do not pile up in this process's resident memory.
        """
        info = self.tensors[name]
        handle = self._handle(info.file)
        if isinstance(handle, dict):
            return handle[name][start:stop]
        row_elems = math.prod(info.shape[1:])
        size = (stop - start) * row_elems * info.dtype.itemsize
        buf = bytearray(size)
        got = os.preadv(handle, [buf], info.offset + start * row_elems * info.dtype.itemsize)
        if got != size:
            raise UserError(f"cannot read tensor {name} from {info.file}: the file ended early; re-export it")
        if size == 0:
            return torch.empty((stop - start, *info.shape[1:]), dtype=info.dtype)
        return torch.frombuffer(buf, dtype=info.dtype).reshape(stop - start, *info.shape[1:])

    def close(self) -> None:
        for handle in getattr(self, "_handles", {}).values():
            if isinstance(handle, int):
                os.close(handle)
        getattr(self, "_handles", {}).clear()

    def __del__(self) -> None:
        self.close()

    def weight_files(self) -> list[Path]:
        return sorted({t.file for t in self.tensors.values()})


def _safetensors_header(file: Path) -> tuple[dict[str, TensorInfo], dict]:
    """Parse a safetensors header and check it against the file's size (catches truncation)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            n = int.from_bytes(raw, "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("header length runs past the end of the file")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError(f"its header is a JSON {type(header).__name__}, not an object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("its __metadata__ is not an object of strings")
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{file} is not a valid safetensors file ({exc}): re-download or re-export it") from None
    infos: dict[str, TensorInfo] = {}
    end = 0
    for name, entry in header.items():
        try:
            dtype = SAFETENSORS[entry["dtype"]]
            begin, stop = (int(o) for o in entry["data_offsets"])
            shape = tuple(int(s) for s in entry["shape"])
            if begin < 0 or stop < begin or any(d < 0 for d in shape):
                raise ValueError("negative offsets or sizes")
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{file} has a malformed entry for tensor {name}: re-export the checkpoint") from None
        if stop - begin != math.prod(shape) * dtype.itemsize:
            raise UserError(f"{file}: tensor {name} has {stop - begin} bytes for shape {list(shape)}; the file is corrupt")
        end = max(end, stop)
        infos[name] = TensorInfo(name, shape, dtype, file, 8 + n + begin)
    if 8 + n + end > size:
        raise UserError(
            f"{file} is truncated ({size} bytes, its header needs {8 + n + end}): re-download or re-export it"
        )
    return infos, meta


def _load_pickle(file: Path) -> dict:
    """torch.load with weights_only=True; memory-mapped unless the file predates torch's zip format."""
    state = torch.load(file, map_location="cpu", mmap=zipfile.is_zipfile(file), weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a state dict")
    return state


def _pickle_tensors(file: Path, allow_pickle: bool) -> dict[str, TensorInfo]:
    if not allow_pickle:
        raise UserError(
            f"{file} is a pickled checkpoint; hyperclone reads safetensors only unless you pass --allow-pickle "
            "(then it loads with weights_only=True)"
        )
    try:
        state = _load_pickle(file)
    except Exception as exc:  # torch raises many types for bad pickles
        raise UserError(f"cannot load {file} safely ({str(exc).splitlines()[0]}); convert it to safetensors") from None
    return {k: TensorInfo(k, tuple(v.shape), v.dtype, file) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _weight_files(directory: Path, allow_pickle: bool) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                names = set(weight_map.values())
                if not all(isinstance(f, str) for f in names):
                    raise TypeError
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                raise UserError(f"{index} is not a valid shard index: it needs a 'weight_map' object of tensor -> file names") from None
            outside = sorted(f for f in names if Path(f).is_absolute() or ".." in Path(f).parts)
            if outside:
                raise UserError(f"{index} points at {outside[0]}, outside {directory}: a shard index may only name files "
                                "of its own model directory")
            files = sorted({directory / f for f in names})
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise UserError(f"{directory} misses shard {missing[0]} named in {index_name}: download it again")
            return files
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES and "training_args" not in p.name)
    if pickles and allow_pickle:
        return pickles
    hint = " (it has pickled weights: pass --allow-pickle)" if pickles else ""
    raise UserError(f"{directory} holds no .safetensors weights{hint}")


def open_checkpoint(
    source: str | os.PathLike,
    *,
    config_path: str | os.PathLike | None = None,
    overrides: dict | None = None,
    allow_pickle: bool = False,
    role: str = "source",
) -> Checkpoint:
    """Open a .safetensors file (config.json beside it), a model directory, or an hf:// source.

    `role` names the checkpoint in messages ("source", "grown model").
    """
    path = resolve_source(source, role, allow_pickle)
    if path.is_dir():
        files = _weight_files(path, allow_pickle)
        directory = path
    else:
        if path.suffix not in (".safetensors",) + PICKLE_SUFFIXES:
            raise UserError(f"{path} is neither a .safetensors file nor a model directory")
        files, directory = [path], path.parent
    tensors: dict[str, TensorInfo] = {}
    metadata: dict = {}
    for file in files:
        if file.suffix in PICKLE_SUFFIXES:
            found = _pickle_tensors(file, allow_pickle)
        else:
            found, meta = _safetensors_header(file)
            metadata.update(meta)
        tensors.update(found)
    if not tensors:
        raise UserError(f"{path} holds no tensors")

    cfg_file = Path(config_path) if config_path else directory / "config.json"
    inferred: list[str] = []
    if cfg_file.is_file():
        config = read_config(cfg_file)
        _refuse_rewrites(config, overrides or {}, cfg_file)
        config.update(overrides or {})
    elif config_path:
        raise UserError(f"config file {cfg_file} does not exist")
    else:
        config, inferred = infer_config({k: v.shape for k, v in tensors.items()}, metadata, overrides or {}, path)
    return Checkpoint(path=path, files=files, tensors=tensors, config=config, config_inferred=inferred,
                      config_file=cfg_file if cfg_file.is_file() else None)


def read_config(cfg_file: Path) -> dict:
    """config.json as a dict, or one line saying why it is not one."""
    try:
        config = json.loads(cfg_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{cfg_file} is not valid JSON ({exc}): fix or replace it") from None
    if not isinstance(config, dict):
        raise UserError(f"{cfg_file} holds a JSON {type(config).__name__}, not an object of config fields: fix or replace it")
    return config


def _refuse_rewrites(config: dict, overrides: dict, cfg_file: Path) -> None:
    """--set fills in what a config lacks; changing what it says would silently change the function."""
    for key, value in overrides.items():
        if key in config and config[key] != value:
            raise UserError(f"--set {key}={json.dumps(value)}: {cfg_file} already says {key}={json.dumps(config[key])}; "
                            "--set only fills in fields a config lacks (edit the config, or pass --config FILE)")
