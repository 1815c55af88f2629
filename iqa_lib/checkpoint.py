"""Writing files so a crash never leaves half of one under a final name, and reading
checkpoints without ever running code from them.

A kit checkpoint `{res}_fold{k}.ckpt` is a plain dict of tensors and primitives: `format`
(KIT_FORMAT), `model` (state dict), `model_config` (MANIQAConfig as a dict), `input` (the
stored side and crop grid, iqa_lib.crops), `res`, `fold`, `mos_scale`, `epoch`, `metrics`,
`flip`, `cpu_bf16` (whether its validation ran in bf16 on a CPU: train.cpu_bf16, auto resolved). It loads with
`torch.load(weights_only=True)`, which refuses any pickled object that would run code.
"""
import io
import json
import os
import pickle
import tempfile
from pathlib import Path

import torch

KIT_FORMAT = "iqa_lib.checkpoint/1"
TMP_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and why."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`.

    The rename is atomic, so readers (and a rerun after a crash) see the old file or the
    new one, never a torn one. On any failure (disk full, permissions) the temp file is
    removed and the previous `path` stays as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only; these are ordinary outputs
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        kept = "the previous version is intact" if path.exists() else "nothing was written"
        raise OSError(e.errno, f"could not write '{path}' ({e.strerror or e}); {kept}. Free disk space or "
                               f"make the folder writable (or choose another out_dir), then rerun.") from e


def check_writable(folder: str | os.PathLike, name: str, fix: str) -> None:
    """Make `folder` if missing; an OSError that says it cannot be written and what to do."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OSError(e.errno, f"{name} '{folder}' is not writable ({e.strerror or e}): {fix}.") from None


def _first_sentence(e: BaseException, limit: int = 300) -> str:
    """An exception's text up to its first sentence's end (torch's run long), never cut mid-word."""
    text = " ".join(str(e).split())
    for end in (". ", ".\n"):
        if end in text[:limit]:
            return text[: text.index(end) + 1]
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def remove_stale_temp_files(folder: str | os.PathLike) -> None:
    """Temp files a killed writer left behind (they never carry a final name)."""
    for f in Path(folder).glob(f".*{TMP_SUFFIX}"):
        f.unlink(missing_ok=True)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_torch_save(obj, path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """`torch.load(weights_only=True)` with errors that name the file and the likely cause."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} '{path}' does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} '{path}' is empty (0 bytes): a write was interrupted; delete it and rerun.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn zip, legacy-pickle garbage (KeyError), text, ...: "unreadable"
        # torch's safe unpickler says "GLOBAL" when a file asks to import something; its other
        # refusals ("Unsupported operand ...") mean the bytes are not a pickle at all.
        if isinstance(e, pickle.UnpicklingError) and "global" in str(e).lower():
            raise CheckpointError(
                f"{what} '{path}' contains Python objects that would run code when loaded, so it was not "
                f"loaded ({type(e).__name__}). Kit checkpoints hold only tensors and plain values; if you trust "
                f"the file, re-save its state_dict with `torch.save(model.state_dict(), path)`."
            ) from e
        detail = next((ln.strip()[:200] for ln in str(e).splitlines() if ln.strip().startswith("Unsupported")), "")
        raise CheckpointError(
            f"{what} '{path}' is not a readable PyTorch file ({type(e).__name__}: {detail or _first_sentence(e)}). "
            f"It may be truncated (an interrupted copy or write) or not a checkpoint at all."
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} '{path}' holds a {type(obj).__name__}, not a dict of weights.")
    return obj


def load_model_checkpoint(path, expect: dict | None = None) -> dict:
    """Load a kit checkpoint; with `expect` (a model config dict) refuse one of another model."""
    ckpt = safe_torch_load(path)
    if ckpt.get("format") != KIT_FORMAT or "model" not in ckpt or "model_config" not in ckpt:
        keys = ", ".join(sorted(map(str, ckpt))[:8])
        raise CheckpointError(
            f"'{path}' is not an iqa_lib checkpoint (keys: {keys}). Expected the `{{res}}_fold{{k}}.ckpt` "
            f"files that training writes."
        )
    if expect is not None:
        held, want = ckpt["model_config"], expect
        diffs = [k for k in ("backbone", "img_size", "patch_size", "embed_dim", "head_dim", "head_hidden", "vit_kwargs")
                 if held.get(k) != want.get(k)]
        if diffs:
            raise CheckpointError(
                f"'{path}' holds a {describe(held)} model, but a {describe(want)} model was asked for "
                f"(differs in: {', '.join(diffs)}). Use the checkpoint of the matching resolution."
            )
    return ckpt


def describe(model_config: dict) -> str:
    return f"{model_config.get('img_size')}px '{model_config.get('backbone')}' (head {model_config.get('head_hidden')})"
