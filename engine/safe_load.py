"""Load torch files (`model.pt`, `checkpoint.pt`, `--weights`) without ever running code stored in them.

A `.pt` file is a pickle, and unpickling can call any Python function the file names: a crafted `model.pt` would
run its payload on `torch.load(..., weights_only=False)`. Every file this tool reads back is loaded with
`weights_only=True` (tensors, containers and plain numbers/strings only) plus an explicit allow-list for numpy
arrays, which checkpoints of earlier versions held (O2U's flag scores); anything else is refused with a
clear error instead of being executed. What the tool writes is plain data (`FitState.to_dict`), so the list
stays this short.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import IO, Any

from engine.errors import InputError, Problem


def _numpy_array_globals() -> list:
    """What pickling a numeric ndarray refers to: the array type, numpy's array rebuild function, `np.dtype` and
    the dtype classes of booleans, integers and floats (no object arrays)."""
    import numpy as np

    multiarray = (getattr(np, "_core", None) or np.core).multiarray
    return [multiarray._reconstruct, np.ndarray, np.dtype, *{type(np.dtype(code)) for code in "?bBhHiIlLqQefd"}]


def torch_load(source: Path | str | IO[bytes], *, what: str = "torch file") -> Any:
    """`torch.load(source, weights_only=True)` on the CPU. A file that holds anything but tensors and plain data
    is an InputError naming it; nothing in it runs. `what` names the file's role in the message."""
    import torch

    name = str(source) if isinstance(source, (str, Path)) else what
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err).split("WeightsUnpickler error:", 1)[-1].strip()
        found = re.search(r"GLOBAL (\S+) was not an allowed global", text)
        # torch's own advice (allow-list the global "if you trust" it) is not what a user of this tool should do
        detail = f"it refers to {found.group(1)}" if found else text.splitlines()[0].split(". ")[0]
        raise InputError(Problem(
            name, f"refused to load this {what}: it holds Python objects other than tensors and plain data, and "
            f"loading them could run code ({detail})",
            "use a file written by this tool (model.pt, checkpoint.pt, pretrain.pt) or a plain state dict "
            "(or .safetensors) from a source you trust")) from None
