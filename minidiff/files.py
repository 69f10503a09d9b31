"""File plumbing, in one place: atomic writes, folder swaps, the one-run-per-folder lock, and the
Hugging Face hub look-ups.

Everything minidiff saves (configs, weights, pipeline folders, checkpoints) goes through `atomic_path`
or `swap_in`, so a crash or a full disk leaves either the old file or the new one, never half of one,
and every file gets the same mode (0666 less the umask, as `open` gives). `FolderLock` lets one run at
a time write into an output folder; the OS drops the lock when its process dies, so none goes stale.
Every hub look-up (model files, data sets) asks `hub_offline` / `hub_reachable` first, so without a
network it fails in seconds with a message instead of retrying for half a minute.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub and datasets read their flags


# ---- atomic writes ------------------------------------------------------------------------------------
def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` durable (not every platform can open a folder: then skip)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def file_mode() -> int:
    """The mode `open` gives a new file: 0o666 less the umask (which can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield one temporary path beside each of `paths` for the block to write. When the block succeeds,
    each is fsynced and renamed over its target, in order; when it fails, none is, and the temporary
    files are removed. A target is thus always whole: the old file or the new one.

        with atomic_paths("w.safetensors", "config.json") as (weights_tmp, config_tmp): ...
    """
    targets = [Path(p) for p in paths]
    temporary = [t.with_name(f".{t.name}.tmp-{os.getpid()}") for t in targets]
    try:
        yield temporary
        mode = file_mode()
        for tmp in temporary:
            _fsync_file(tmp)
            os.chmod(tmp, mode)  # some writers (safetensors) create 0600 files; all get the same mode
        for tmp, target in zip(temporary, targets):
            os.replace(tmp, target)
        for folder in {t.parent for t in targets}:
            fsync_dir(folder)
    finally:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)  # only left when the block or a rename failed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """`atomic_paths` for one file: `with atomic_path(p) as tmp: torch.save(state, tmp)`."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Fail now, before a model loads or a sample is drawn, when `path` (a file to write, or with `folder`
    a folder to write into) cannot be written: one line in the words of `minidiff train`'s check. Creates
    nothing.

    Args:
        path: the output file or folder.
        folder: `path` is a folder (else a file, whose parent folder is checked).

    Returns:
        `path`.
    """
    path = Path(path).expanduser()
    target = path if folder else path.parent
    if not folder and path.is_dir():
        raise IsADirectoryError(f"output file {str(path)!r} is not writable: it is a folder")
    existing = target
    while not existing.exists() and existing != existing.parent:  # the nearest part that exists
        existing = existing.parent
    if not existing.is_dir():
        what = "it is a file" if existing == target else f"{str(existing)!r} is a file"
        raise PermissionError(f"output folder {str(target)!r} is not writable: {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {str(target)!r} is not writable: permission denied")
    return path


def check_pipeline_folder(model: str | os.PathLike, flag: str = "model", pipeline: bool = True) -> None:
    """Before torch loads: a local-looking `model` that is not a pipeline folder fails at once, and so does
    a hub id whose model_index.json is neither downloadable (offline, no network) nor cached, with the
    hub's one message. `pipeline` False: a local folder may be a UNet's, a hub repository may lack
    model_index.json (only an unreachable hub fails)."""
    index = Path(model).expanduser() / "model_index.json"
    if looks_local(model):
        if pipeline and not index.is_file():
            raise FileNotFoundError(
                f"{flag} {model}: {index} does not exist; expected a pipeline folder (OUT/model)"
            )
        return
    try:
        resolve_file(model, "model_index.json")
    except HubUnreachable:
        raise
    except OSError:
        if pipeline:
            raise


def writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove we can write there, before any time is spent."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(f"output folder {str(path)!r} is not writable: {err}") from err
    return path


# ---- folder swaps -------------------------------------------------------------------------------------
def swap_in(target: str | os.PathLike, names: Sequence[str], write) -> Path:
    """Replace the entries `names` of the folder `target` by new ones that `write(folder)` creates,
    all or nothing. Other entries of `target` are left alone.

    `write` fills a temporary sibling folder first; only when it succeeded are the new entries renamed
    into `target` one by one, the old ones kept aside until every rename succeeded and put back if one
    fails. A failure (disk full, a bad component) leaves what was saved in `target` before untouched.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{str(target)!r} is a file; expected a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    try:
        new = stage / "new"
        new.mkdir()
        write(new)
        if not target.exists():  # a fresh folder: one rename
            os.replace(new, target)
        else:
            _replace_entries(new, target, stage / "old", names)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def _replace_entries(new: Path, target: Path, old: Path, names: Sequence[str]) -> None:
    old.mkdir()
    moved_aside: list[str] = []
    placed: list[str] = []
    try:
        for name in names:
            if (target / name).exists():
                os.replace(target / name, old / name)
                moved_aside.append(name)
            os.replace(new / name, target / name)
            placed.append(name)
    except BaseException:
        for name in reversed(placed):
            path = target / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for name in reversed(moved_aside):
            os.replace(old / name, target / name)
        raise


# ---- one run per folder ---------------------------------------------------------------------------------
LOCK_NAME = ".minidiff.lock"


class FolderInUse(RuntimeError):
    """Another live process holds the folder's lock; `holder` is what it wrote there (pid, host, start)."""

    def __init__(self, folder: Path, holder: str):
        self.folder, self.holder = folder, holder
        super().__init__(
            f"output folder {str(folder)!r} is in use by another run ({holder or 'holder unknown'}); "
            "wait for it to end or stop it, or choose another output folder"
        )


class FolderLock:
    """An exclusive OS lock (fcntl's lockf; msvcrt on Windows) on `folder/.minidiff.lock`, re-entrant
    within a process, so the command line can take it before the library does. The file stays (it names
    the last holder); the lock dies with the process, so a killed run never blocks the next one. This
    process never opens the file twice: closing any descriptor of it would drop a POSIX lock.

        with FolderLock("out/run"): ...        # FolderInUse if another process holds it
    """

    _held: dict[str, list] = {}  # real path -> [file descriptor, count] of this process's locks

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.key = os.path.realpath(self.folder)

    def acquire(self) -> FolderLock:
        held = self._held.get(self.key)
        if held is not None:
            held[1] += 1
            return self
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _try_lock(fd):
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
                raise FolderInUse(self.folder, holder)
            started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
        except BaseException:
            os.close(fd)  # closing drops a lock we may have taken
            raise
        self._held[self.key] = [fd, 1]
        return self

    def release(self) -> None:
        held = self._held.get(self.key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.key]
            os.close(held[0])  # releases the lock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on `fd` without waiting; False when another process holds it."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:  # a POSIX record lock: owned by this process alone, so forked workers never keep it alive
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


# ---- the Hugging Face hub -----------------------------------------------------------------------------
class HubUnreachable(OSError):
    """A hub id's file is neither downloadable now (offline, no network) nor in the hub's cache."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE or HF_DATASETS_OFFLINE set to a true value (read now, not at import)."""
    return any(
        os.environ.get(name, "").upper() in TRUE_VALUES for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can a TCP connection to the hub (HF_ENDPOINT, default huggingface.co) open within `timeout` s?

    Behind an HTTP(S) proxy a direct connection proves nothing, so then the answer is yes and the
    download itself is left to try.
    """
    from urllib.parse import urlparse

    proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    if any(os.environ.get(name) for name in proxies):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def hub_dataset_error(source: str, why: str) -> ConnectionError:
    """The one message of a hub dataset id that cannot be read (`why`), with what to use instead."""
    return ConnectionError(
        f"{source!r} is not a local folder, so it was taken for a Hugging Face hub dataset id, but {why}. "
        "Use the embedded 'digits' data set, a local folder of images (e.g. data/butterflies), or, if this "
        "dataset was downloaded before, set HF_HUB_OFFLINE=1 to read it from the cache."
    )


def check_hub_dataset(source: str | os.PathLike) -> None:
    """Before torch or `datasets` load: a hub dataset id while the hub cannot be reached fails at once (with
    HF_HUB_OFFLINE set the cache is read later, by `datasets`)."""
    source = str(source)
    if source == "digits" or looks_local(source) or hub_offline():  # "digits": minidiff.data.DEFAULT_DATASET
        return
    if not hub_reachable():
        raise hub_dataset_error(source, "the hub could not be reached (no network?)")


def looks_local(path_or_repo_id: str | os.PathLike) -> bool:
    """A path the user meant as a local one: it exists, starts with . / ~, or has more than one '/'."""
    text = str(path_or_repo_id)
    return Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.count("/") > 1


def resolve_file(path_or_repo_id: str | os.PathLike, filename: str, subfolder: str | None = None) -> Path:
    """Find `filename` in a local folder or, failing that, in a Hugging Face hub repository.

    A hub download goes through `huggingface_hub` (its cache makes later calls work offline). Offline or
    without a network only the cache is read, and the error says what was tried.
    """
    folder = Path(path_or_repo_id)
    local = folder / subfolder / filename if subfolder else folder / filename
    if local.is_file():
        return local
    if looks_local(path_or_repo_id):
        raise FileNotFoundError(
            f"{local} does not exist (looked for {filename!r} in {str(path_or_repo_id)!r})"
        )
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache_only = constants.HF_HUB_OFFLINE or hub_offline() or not hub_reachable()
    try:
        path = hf_hub_download(
            str(path_or_repo_id), filename, subfolder=subfolder, local_files_only=cache_only
        )
        return Path(path)
    except LocalEntryNotFoundError as err:
        raise HubUnreachable(
            f"{path_or_repo_id!r} is not a local folder, and {filename!r} could not be downloaded from the "
            "Hugging Face hub nor found in its cache (no network?). Pass a local folder, or download it "
            "once while online."
        ) from err
    except Exception as err:  # repository missing, gated, file missing...
        raise OSError(f"could not get {filename!r} of {path_or_repo_id!r} from the hub: {err}") from err
