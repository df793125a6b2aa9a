"""The one writer of fxprune outputs: checkpoint directories (and single files), written atomically.

Every command that writes goes through ``checkpoint_dir`` (or ``atomic_file``); ``check_output`` is
the same decision made early (dry run, before loading or calibrating), so a bad ``--out`` fails in
seconds, not after the work.

What may be written (``check_output``)
* a new path, or an existing *empty* directory;
* an existing fxprune checkpoint, only with ``overwrite``. Files in it that fxprune did not write
  (not listed in its ``fxprune_manifest.json``) are carried into the new checkpoint (hard links):
  fxprune never removes a file it did not write;
* anything else that is not empty (a user's folder, a checkpoint fxprune did not write, a file) is
  refused with ``OutputError`` naming what is in the way.

How it is written (``checkpoint_dir``)
* into a sibling temporary ``.<name>.fxprune-tmp-<hex>`` that the writing process holds an
  ``flock`` on; when complete it gets the manifest (bytes and sha256 of every file written, sha256 of
  every tensor), umask modes (0666/0777 & ~umask, or the mode of the directory it replaces) and an
  fsync, then is swapped with the target in one ``renameat2(RENAME_EXCHANGE)`` (a plain rename when
  the target is new or empty): at every instant the target is the whole old checkpoint or the whole
  new one;
* Ctrl-C / SIGTERM (the CLI turns SIGTERM into ``KeyboardInterrupt``) remove the temporary; both
  signals are deferred while the swap and the clean-up run, so they never leave half of either;
* after a SIGKILL the temporary stays, unlocked; the next ``check_output``/writer in that parent
  directory removes every unlocked ``.*.fxprune-tmp-*`` sibling (under an ``flock`` of the parent,
  so it never races a writer that is creating its own).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import OutputError, ResourceError

MANIFEST = "fxprune_manifest.json"
MANIFEST_FORMAT = "fxprune-checkpoint"
TMP_TAG = ".fxprune-tmp-"
OLD_TAG = ".fxprune-old-"  # only where the platform has no atomic exchange (see ``_commit``)
_TEMP_RE = re.compile(r"^\..+(\.fxprune-tmp-|\.fxprune-old-)[0-9a-f]{8,}$")

#: What an fxprune checkpoint written before manifests existed may hold (treated as fxprune's own).
LEGACY_NAMES = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                "model.safetensors.index.json", "modeling_fxprune.py", "fxprune_report.json",
                "sparsity_report.json", "sparsity_report.md", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                "tokenizer.model", "chat_template.jinja", "chat_template.json")
#: Files whose presence (beside ``config.json``) marks a directory as written by fxprune.
_FXPRUNE_MARKERS = ("fxprune_report.json", "sparsity_report.json", "modeling_fxprune.py")

#: Set to False to exercise the fallback commit (tests): rename aside, rename in, remove.
USE_EXCHANGE = True


# ------------------------------------------------------------------------------------ decisions
@dataclass(frozen=True)
class OutputPlan:
    """What writing to ``path`` will do. ``existing``: ``new`` (nothing there), ``empty`` (an empty
    directory) or ``checkpoint`` (an fxprune checkpoint that will be replaced); ``keep``: its
    top-level entries fxprune did not write, carried into the new checkpoint."""

    path: Path
    existing: str
    keep: tuple[str, ...] = ()


def _listing(names, limit=5) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _read_manifest(path: Path) -> dict | None:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("files"), dict):
        return None
    return m


def _legacy_fxprune(path: Path, names: set[str]) -> bool:
    if "config.json" not in names:
        return False
    if any(n in names for n in _FXPRUNE_MARKERS):
        return True
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "fxprune_structure" in cfg


def _owned(path: Path, names: set[str]) -> set[str] | None:
    """Top-level names of ``path`` fxprune wrote, or None if ``path`` is not an fxprune checkpoint."""
    manifest = _read_manifest(path)
    if manifest is not None:
        files = {f.split("/", 1)[0] for f in manifest["files"]}
        return ({MANIFEST} | files) & names
    if _legacy_fxprune(path, names):
        return {n for n in names if (path / n).is_file() and not (path / n).is_symlink()
                and any(fnmatch.fnmatchcase(n, pat) for pat in LEGACY_NAMES)}
    return None


def _resolve(path) -> Path:
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    if p.is_symlink():
        p = Path(os.path.realpath(p))
    return p


def _existing_ancestor(p: Path) -> Path:
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    return anc


def check_output(path, *, overwrite: bool = False, need_bytes: int = 0, clean: bool = True) -> OutputPlan:
    """Decide whether ``path`` may be written, before any work; raise ``OutputError`` if not.

    ``need_bytes``: the size of what will be written; refused (``ResourceError``) when the file
    system has less free space (the old checkpoint stays until the new one is complete, so both
    must fit). ``clean``: remove stale temporaries of killed runs in the parent directory."""
    if path is None or str(path).strip() == "":
        raise OutputError("--out: no output directory given")
    p = _resolve(path)
    if p == p.parent:
        raise OutputError(f"--out {str(p)!r}: refusing to write over the file system root")
    if p.exists() and not p.is_dir():
        raise OutputError(f"--out {str(p)!r} is a file, not a directory: choose a new directory")
    anc = _existing_ancestor(p)
    if not anc.is_dir():
        raise OutputError(f"--out {str(p)!r}: {str(anc)!r} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"--out {str(p)!r}: cannot create files in {str(anc)!r} (permission denied)")
    plan = _decide(p, overwrite)
    if need_bytes:
        free = shutil.disk_usage(anc).free
        margin = 64 << 20
        if free < need_bytes + margin:
            raise ResourceError(f"--out {str(p)!r}: the checkpoint needs about {_gib(need_bytes)} and "
                                f"{str(anc)!r} has {_gib(free)} free: free some space or choose another --out")
    if clean and p.parent.is_dir():
        clean_stale(p.parent)
    return plan


def _decide(p: Path, overwrite: bool) -> OutputPlan:
    if not p.exists():
        return OutputPlan(p, "new")
    try:
        names = set(os.listdir(p))
    except OSError as e:
        raise OutputError(f"--out {str(p)!r}: cannot list the directory ({e.strerror})") from e
    if not names:
        return OutputPlan(p, "empty")
    owned = _owned(p, names)
    if owned is None:
        if "config.json" in names:
            raise OutputError(f"--out {str(p)!r} holds a checkpoint fxprune did not write ({_listing(names)}); "
                              "fxprune never replaces files it did not write: choose a new or empty directory")
        raise OutputError(f"--out {str(p)!r} is not empty and not an fxprune checkpoint (it holds "
                          f"{_listing(names)}): choose a new or empty directory")
    keep = tuple(sorted(names - owned))
    if not overwrite:
        kept = f"; files fxprune did not write are kept ({_listing(keep)})" if keep else ""
        raise OutputError(f"--out {str(p)!r} already holds an fxprune checkpoint: pass --overwrite to "
                          f"replace it{kept}")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise OutputError(f"--out {str(p)!r}: cannot create files in {str(p.parent)!r} (permission denied)")
    return OutputPlan(p, "checkpoint", keep)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------------ locking
@contextlib.contextmanager
def _locked_dir(path: Path, blocking: bool = True):
    """Hold an flock on ``path`` (a directory or a file); yields False (nothing held) if non-blocking
    and busy."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0) | os.O_NOFOLLOW)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT/SIGTERM until the block ends (then they take effect): a swap or a clean-up is
    never cut in half by Ctrl-C.

    Done with Python-level handlers, not the thread signal mask: the OS may deliver a signal to any
    thread (tqdm's monitor, OpenMP workers), but Python runs handlers in the main thread, so a handler
    that only records the signal defers it whichever thread received it. Nested blocks pass the
    signal outwards; an ignored signal stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, frame):
        pending.append(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler in (signal.SIG_IGN, None):
            continue
        previous[sig] = handler
        signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):
            handler = previous[sig]
            if callable(handler):
                handler(sig, None)  # raises KeyboardInterrupt / Terminated, or records it (nested)
            else:  # SIG_DFL: the default action, now
                os.kill(os.getpid(), sig)


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def clean_stale(parent: Path) -> list[str]:
    """Remove temporaries of fxprune writers that died (unlocked ``.*.fxprune-tmp-*`` in ``parent``).

    A ``.fxprune-old-`` entry whose target is missing is the previous checkpoint of a writer killed
    in the middle of the (non-exchange) swap: it is renamed back instead. Returns what it removed."""
    removed = []
    try:
        with _locked_dir(parent):
            for name in sorted(os.listdir(parent)):
                if not _TEMP_RE.match(name):
                    continue
                entry = parent / name
                try:
                    ctx = contextlib.nullcontext(True) if entry.is_symlink() else _locked_dir(entry, blocking=False)
                    with ctx as free:
                        if not free:
                            continue  # a live writer holds it
                        tag = OLD_TAG if OLD_TAG in name else TMP_TAG
                        target = parent / name[1:name.rindex(tag)]
                        with deferred_signals():
                            if tag == OLD_TAG and not target.exists():
                                os.rename(entry, target)
                            else:
                                _rmtree(entry)
                        removed.append(name)
                except OSError:
                    continue
    except OSError:
        pass  # an unreadable parent: writing there fails later with a clear error
    return removed


# ------------------------------------------------------------------------------------ writing
def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _hash_file(path: Path) -> tuple[str, dict]:
    """sha256 of the file and, for safetensors, of every tensor's bytes (one sequential read)."""
    h = hashlib.sha256()
    tensors = {}

    def read(n, *hashers):
        while n > 0:
            chunk = f.read(min(n, 1 << 22))
            if not chunk:
                return
            for x in hashers:
                x.update(chunk)
            n -= len(chunk)

    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            head = f.read(8)
            h.update(head)
            n = int.from_bytes(head, "little")
            raw = f.read(n)
            h.update(raw)
            entries = sorted(((k, v) for k, v in json.loads(raw).items() if k != "__metadata__"),
                             key=lambda kv: kv[1]["data_offsets"][0])
            pos = 0
            for name, info in entries:
                start, end = info["data_offsets"]
                read(start - pos, h)
                th = hashlib.sha256()
                read(end - start, h, th)
                pos = max(pos, end)
                tensors[name] = {"dtype": info["dtype"], "shape": info["shape"], "sha256": th.hexdigest()}
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest(), tensors


def tensor_digests(path) -> dict[str, str]:
    """``{tensor name: sha256 of its bytes}`` over every safetensors file of checkpoint ``path``."""
    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        for name, info in _hash_file(f)[1].items():
            out[name] = info["sha256"]
    return out


def _finish(tmp: Path, mode_from: Path | None, extra: dict | None) -> None:
    """Manifest, modes and fsync of a complete temporary checkpoint."""
    mask = _umask()
    files, tensors = {}, {}
    for f in sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = f.relative_to(tmp).as_posix()
        digest, t = _hash_file(f)
        files[rel] = {"bytes": f.stat().st_size, "sha256": digest}
        tensors.update(t)
        os.chmod(f, 0o666 & ~mask)
        _fsync(f)
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "kind": "checkpoint", "files": files, "tensors": tensors}
    if extra:
        manifest.update(extra)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.chmod(tmp / MANIFEST, 0o666 & ~mask)
    _fsync(tmp / MANIFEST)
    for d in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):
        os.chmod(d, 0o777 & ~mask)
    mode = 0o777 & ~mask
    if mode_from is not None:
        with contextlib.suppress(OSError):
            mode = os.stat(mode_from).st_mode & 0o7777
    os.chmod(tmp, mode)
    _fsync(tmp, directory=True)


def _carry(old: Path, new: Path, names: tuple[str, ...]) -> None:
    """Hard-link (copy where links fail) entries fxprune did not write from ``old`` into ``new``."""
    for name in names:
        src, dst = old / name, new / name
        if dst.exists() or dst.is_symlink():
            raise OutputError(f"{str(old)!r}: {name!r} was not written by fxprune and the new checkpoint "
                              f"also writes {name!r}: move it away and run again")
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, dst)


def _link_or_copy(src, dst):
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux ``renameat2``); False where the platform cannot."""
    if not USE_EXCHANGE:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _commit(plan: OutputPlan, tmp: Path) -> None:
    target = plan.path
    try:
        now = _decide(target, overwrite=True)
    except OutputError as e:
        raise OutputError(f"--out {str(target)!r} changed while fxprune was working and may no longer be "
                          f"written: {e}") from e
    if now.existing != plan.existing or (now.existing == "checkpoint" and set(now.keep) != set(plan.keep)):
        raise OutputError(f"--out {str(target)!r} changed while fxprune was working "
                          f"(was {plan.existing}, now {now.existing}): nothing was replaced")
    if plan.existing in ("new", "empty"):
        os.rename(tmp, target)  # replaces an empty directory atomically; fails if it filled up
        return
    _carry(target, tmp, plan.keep)
    if _exchange(tmp, target):
        _rmtree(tmp)  # tmp now holds the previous checkpoint
        return
    aside = target.parent / f".{target.name}{OLD_TAG}{secrets.token_hex(4)}"
    os.rename(target, aside)
    os.rename(tmp, target)
    _rmtree(aside)


class _Temporary:
    """A locked sibling temporary directory of ``target``."""

    def __init__(self, target: Path):
        self.target = target
        self.created_parents: list[Path] = []
        p = target.parent
        while not p.exists():
            self.created_parents.append(p)
            p = p.parent
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked_dir(target.parent):
            self.path = target.parent / f".{target.name}{TMP_TAG}{secrets.token_hex(4)}"
            os.mkdir(self.path, 0o700)
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        with deferred_signals():
            _rmtree(self.path)
            self.release()
            for d in self.created_parents:  # innermost first; only if still empty
                with contextlib.suppress(OSError):
                    d.rmdir()


@contextlib.contextmanager
def checkpoint_dir(path, *, overwrite: bool = False, need_bytes: int = 0,
                   manifest: dict | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory to write a checkpoint into; when the block ends normally it
    replaces ``path`` atomically (see the module docstring). On any exception or interrupt the
    temporary is removed and ``path`` is untouched. ``manifest``: extra fields for the manifest."""
    plan = check_output(path, overwrite=overwrite, need_bytes=need_bytes)
    tmp = None
    try:
        with deferred_signals():  # a signal held here is delivered on leaving: inside the try
            tmp = _Temporary(plan.path)
        yield tmp.path
        _finish(tmp.path, plan.path if plan.existing != "new" else None, manifest)
        with deferred_signals():
            with _locked_dir(plan.path.parent):
                _commit(plan, tmp.path)
            _fsync(plan.path.parent, directory=True)
            tmp.release()
    except BaseException:
        if tmp is not None:
            tmp.discard()
        raise


@contextlib.contextmanager
def atomic_file(path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write one file into; it replaces ``path`` (``os.replace``)
    when the block ends normally. An existing ``path`` is refused unless ``overwrite``."""
    p = _resolve(path)
    if p.exists() and (p.is_dir() or not overwrite):
        raise OutputError(f"{str(p)!r} exists" + ("" if p.is_dir() else ": pass --overwrite to replace it"))
    anc = _existing_ancestor(p)
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{str(p)!r}: cannot create files in {str(anc)!r} (permission denied)")
    if p.parent.is_dir():
        clean_stale(p.parent)
    tmp_dir = None
    try:
        with deferred_signals():
            tmp_dir = _Temporary(p)
        yield tmp_dir.path / p.name
        f = tmp_dir.path / p.name
        os.chmod(f, 0o666 & ~_umask())
        _fsync(f)
        with deferred_signals():
            os.replace(f, p)
            _rmtree(tmp_dir.path)
            tmp_dir.release()
    except BaseException:
        if tmp_dir is not None:
            tmp_dir.discard()
        raise


# ------------------------------------------------------------------------------------ owned dirs
class OwnedDir:
    """A directory fxprune owns file by file: reports added to a checkpoint, a sweep's results.

    Every file is written atomically (a locked temporary ``.<name>.fxprune-tmp-<hex>`` beside it,
    then ``os.replace``) and listed in the directory's manifest, so a later ``--overwrite`` knows it is
    fxprune's. A file fxprune did not write is never replaced (``OutputError``). ``kind``: what the
    directory is (``checkpoint``, ``sweep``); ``create``: a new or empty directory may be started
    (else it must already be an fxprune directory of that kind)."""

    def __init__(self, path, *, kind: str = "checkpoint", create: bool = False):
        p = _resolve(path)
        if p.exists() and not p.is_dir():
            raise OutputError(f"{str(p)!r} is a file, not a directory")
        if not p.exists():
            if not create:
                raise OutputError(f"{str(p)!r}: no such directory")
            anc = _existing_ancestor(p)
            if not os.access(anc, os.W_OK | os.X_OK):
                raise OutputError(f"{str(p)!r}: cannot create files in {str(anc)!r} (permission denied)")
            p.mkdir(parents=True, mode=0o777)
        self.path = p
        clean_stale(p)
        with _locked_dir(p):
            names = set(os.listdir(p))
            m = _read_manifest(p)
            if m is None:
                if names and not (kind == "checkpoint" and _legacy_fxprune(p, names)):
                    what = "not empty and not written by fxprune" if create else "not written by fxprune"
                    raise OutputError(f"{str(p)!r} is {what} (it holds {_listing(names)}): fxprune never "
                                      "replaces files it did not write; choose a new or empty directory")
                owned = _owned(p, names) or set()
                m = {"format": MANIFEST_FORMAT, "version": 1, "kind": kind,
                     "files": {n: {"bytes": (p / n).stat().st_size, "sha256": _hash_file(p / n)[0]}
                               for n in sorted(owned - {MANIFEST})}}
                self._write_manifest(m)
            elif m.get("kind", "checkpoint") != kind:
                raise OutputError(f"{str(p)!r} is an fxprune {m.get('kind', 'checkpoint')} directory, not a {kind} "
                                  "directory: choose another directory")

    def _write_manifest(self, m: dict) -> None:
        tmp = self.path / f".{MANIFEST}{TMP_TAG}{secrets.token_hex(4)}"
        with deferred_signals():
            tmp.write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, self.path / MANIFEST)

    def _record(self, name: str, entry: dict) -> None:
        with _locked_dir(self.path):
            m = _read_manifest(self.path) or {"format": MANIFEST_FORMAT, "version": 1, "files": {}}
            m["files"][name] = entry
            self._write_manifest(m)

    def _check_name(self, name: str) -> Path:
        if not name or "/" in name or name in (".", "..", MANIFEST) or name.startswith("."):
            raise OutputError(f"{name!r} is not a plain file name")
        target = self.path / name
        m = _read_manifest(self.path) or {"files": {}}
        if (target.exists() or target.is_symlink()) and name not in m["files"]:
            raise OutputError(f"{str(target)!r} was not written by fxprune: it is never replaced; move it away")
        return target

    @contextlib.contextmanager
    def file(self, name: str) -> Iterator[Path]:
        """Yield a temporary path to write ``name`` into; it replaces ``DIR/name`` when the block ends
        normally (removed on any exception or interrupt)."""
        target = self._check_name(name)
        tmp, fd = None, None
        try:
            with deferred_signals(), _locked_dir(self.path):  # never races a clean-up of this directory
                tmp = self.path / f".{name}{TMP_TAG}{secrets.token_hex(4)}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())
            _fsync(tmp)
            entry = {"bytes": tmp.stat().st_size, "sha256": _hash_file(tmp)[0]}
            with deferred_signals():
                os.replace(tmp, target)
                self._record(name, entry)
        except BaseException:
            if tmp is not None:
                with deferred_signals():
                    tmp.unlink(missing_ok=True)
            raise
        finally:
            if fd is not None:
                os.close(fd)

    def write(self, name: str, data: bytes | str) -> Path:
        """Write ``name`` (text as UTF-8) atomically; returns its path."""
        with self.file(name) as tmp:
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return self.path / name

    def append(self, name: str, text: str) -> Path:
        """Append ``text`` to ``name`` (an fxprune log such as ``results.jsonl``) and fsync. An append is
        not atomic: a reader must tolerate a torn last line after a kill."""
        target = self._check_name(name)
        with deferred_signals():
            with open(target, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            self._record(name, {"bytes": None, "sha256": None, "appended": True})
        return target
