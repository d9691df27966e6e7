"""`UserError`: a problem with the user's input, shown as one line (per problem) without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Message lines name the file and the problem; the CLI prints them and exits with `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def machine_problem(e: BaseException) -> str | None:
    """The one line for an error that is the machine's doing though it does not say so: a data loader worker
    killed (the kernel's out-of-memory killer, a bus error when /dev/shm is full) reaches the training loop as
    torch's RuntimeError, raised by its SIGCHLD handler wherever the loop happens to be; a worker that finds
    /dev/shm full, as a RuntimeError re-raised from the worker. None otherwise."""
    lines = str(e).strip().splitlines() or [""]
    died = ": a data loader worker process died (out of memory? lower data.num_workers or the batch size)"
    if isinstance(e, RuntimeError) and lines[0].startswith("DataLoader worker (pid"):
        return lines[0].rstrip(". ") + died
    if isinstance(e, (OSError, EOFError)) and _raised_in_the_loader(e):   # killed mid-handover: reset, refused...
        return f"{type(e).__name__}: {e}".rstrip(": ") + died
    if isinstance(e, RuntimeError) and "shared memory" in lines[-1] and "No space left" in lines[-1]:
        return (f"{lines[-1].removeprefix('RuntimeError: ')}: /dev/shm, where loader workers hand over batches, is "
                "full (a container's default is 64 MB): enlarge it (docker run --shm-size) or lower data.num_workers "
                "(0: no workers)")
    return None


def _raised_in_the_loader(e: BaseException) -> bool:
    """Whether e came up through a multi-process DataLoader receiving a batch from a worker (not a dataset's
    own read, which the worker would have raised as itself)."""
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "_try_get_data" and code.co_filename.replace("\\", "/").endswith("utils/data/dataloader.py"):
            return True
        tb = tb.tb_next
    return False
