"""What a pickle would import, read from its opcodes without running it.

Used only to word the refusal of ``torch.save`` files (a whole pickled ``nn.Module`` versus a bare
state dict); nothing here builds an object from the pickle. ``pickletools.genops`` parses opcodes,
it never resolves a global nor calls a reduce.
"""

from __future__ import annotations

import pickletools
from enum import Enum

_STRING_OPS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})

# What torch.save writes for a dict of tensors: tensor and storage rebuilders and containers.
_TENSOR_GLOBALS = frozenset(
    {
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_device_tensor_from_numpy",
        "torch._utils._rebuild_qtensor",
        "torch.storage.UntypedStorage",
        "torch.device",
        "torch.Size",
        "collections.OrderedDict",
        "builtins.set",
        "__builtin__.set",
        "_codecs.encode",
    }
)


class PickleKind(Enum):
    """What a ``torch.save``/``pickle.dump`` payload holds, judged by the globals it names."""

    TENSORS = "tensors"  # a state dict or another container of tensors
    MODULE = "module"  # an nn.Module or other class instance: loading it runs the class's code
    UNREADABLE = "unreadable"


def pickle_globals(data: bytes, max_pickles: int = 1) -> set[str]:
    """``module.name`` of every global named (``GLOBAL``/``STACK_GLOBAL``) by the first
    ``max_pickles`` pickles stored back to back in ``data`` (legacy ``torch.save`` writes four)."""
    found: set[str] = set()
    start = 0
    for _ in range(max_pickles):
        if start >= len(data):
            break
        start += _scan_one(data[start:], found)
    return found


def _scan_one(data: bytes, found: set[str]) -> int:
    """Add one pickle's globals to ``found``; return the number of bytes it spans."""
    pushed: list[str | None] = []
    memo: dict[int, str | None] = {}
    end = 0
    for opcode, arg, pos in pickletools.genops(data):
        end = (pos or 0) + 1
        name = opcode.name
        if name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            found.add(f"{module}.{attr}")
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            top = pushed[-2:] if len(pushed) >= 2 else [None, None]
            found.add(f"{top[0] or '?'}.{top[1] or '?'}")
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else None)
        elif name in _PUT_OPS:
            memo[int(str(arg))] = pushed[-1] if pushed else None
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in _GET_OPS:
            pushed.append(memo.get(int(str(arg))))
        else:
            pushed.append(None)
        del pushed[:-2]
    return end


def classify_pickle(data: bytes, max_pickles: int = 1) -> PickleKind:
    """TENSORS when the pickle names only tensor/storage rebuilders and containers, else MODULE."""
    try:
        names = pickle_globals(data, max_pickles)
    except (ValueError, IndexError, KeyError, EOFError):
        return PickleKind.UNREADABLE
    if all(_is_tensor_global(name) for name in names):
        return PickleKind.TENSORS
    return PickleKind.MODULE


def _is_tensor_global(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return name in _TENSOR_GLOBALS or (module == "torch" and attr.endswith("Storage"))
