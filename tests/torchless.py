"""Processes without torch: a sitecustomize on PYTHONPATH makes `import torch` fail in them and
in every Python process they start, and logs each attempt with its caller, so a test shows that
a path never reached for torch (torch never entered sys.modules) rather than only that it ran."""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Loaded at interpreter start-up (site.py imports `sitecustomize` from sys.path), before any code
# of the process; a meta-path finder ahead of the standard ones refuses torch and its submodules.
SITECUSTOMIZE = """\
import os
import sys
import traceback

_log = os.environ.get("TORCHLESS_LOG")
if _log:
    with open(_log + ".loaded", "a") as _out:
        _out.write(f"{os.getpid()}\\n")


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            if _log:
                caller = "".join(traceback.format_stack(limit=12)[:-1])
                with open(_log, "a") as out:
                    out.write(f"--- pid {os.getpid()} imports {name}\\n{caller}")
            raise ModuleNotFoundError(f"No module named {name!r} (torchless test)", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
"""


@dataclass(frozen=True)
class Torchless:
    """A directory to put first on PYTHONPATH, and the log of torch imports it records."""

    directory: Path
    log: Path

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        path = [str(self.directory), *filter(None, [base.get("PYTHONPATH")])]
        return {**base, "PYTHONPATH": os.pathsep.join(path), "TORCHLESS_LOG": str(self.log)}

    def attempts(self) -> str:
        """Every torch import tried so far, each with the stack that tried it ('' when none)."""
        return self.log.read_text() if self.log.exists() else ""

    def loaded_in(self) -> int:
        """How many processes started with the blocker (0 means the check proves nothing)."""
        loaded = self.log.with_name(self.log.name + ".loaded")
        return len(loaded.read_text().split()) if loaded.exists() else 0


def torchless(directory: Path) -> Torchless:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return Torchless(directory, directory / "torch-imports.log")
