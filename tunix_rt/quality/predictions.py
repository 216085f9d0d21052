"""Reading a predictions file (JSON Lines, see docs/CONTRACT.md) into judge items.

The whole file is validated before any item is returned, so a bad line fails the
evaluation before anything is written. Every error names the URI and the line.

Reading is bounded: a file larger than ``TUNIX_RT_PREDICTIONS_MAX_BYTES``, a line
longer than ``TUNIX_RT_PREDICTIONS_MAX_LINE_BYTES`` and a local path that is not a
regular file (a FIFO, a device, a directory) are refused, whatever the URI's source.
A URI that arrives over the webhook must also be under one of the prefixes of
``TUNIX_RT_PREDICTIONS_ALLOW`` (:func:`check_allowed`), when it arrives and again when
it is read (``allow=``): a job could replace its file with a symbolic link after the
delivery was accepted, so the path is resolved and checked at the open itself.

A URI whose filesystem cannot be had (an unknown protocol, a backend package or native
library that is missing, a malformed URI) is a :class:`PredictionsError`: retrying
cannot help. A network error reaching a store (refused, reset, timed out, a failed name
lookup) propagates as the ``OSError`` it is, and the calling task retries it a bounded
number of times: a store that restarts comes back.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any, NoReturn, TypeVar

from tunix_rt.judges.base import Item
from tunix_rt.errors import PredictionsError

MAX_ID_LENGTH = 255
DEMO_DIR = "./tunix_rt_demo"  # `tunix-rt demo`'s default --workdir
READ_CHUNK = 64 * 1024
T = TypeVar("T")

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_CHAIN = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*::")  # fsspec's "simplecache::s3://..."
# Said when a webhook's URI, accepted before, fails the allow-list as it is read.
_AT_READ = "checked again as it was read: not read"
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def read_predictions(uri: str, *, require_reference: bool = False,
                     line_of: dict[str, int] | None = None,
                     allow: Sequence[str] | None = None) -> list[Item]:
    """Open ``uri`` (see :func:`read_jsonl`) and parse it; a :class:`PredictionsError` on bad input.

    Network errors reaching a store propagate unchanged: they may be transient and
    the calling task retries them. ``line_of``, when given, is filled with each
    item's line number; ``allow``, when given, are the prefixes the file must be under
    when it is opened (:func:`allowed_for`).
    """
    return read_jsonl(uri, lambda lines: parse_predictions(
        lines, uri=uri, require_reference=require_reference, line_of=line_of), allow=allow)


def read_predictions_upto(uri: str, limit: int, *, line_of: dict[str, int] | None = None,
                          allow: Sequence[str] | None = None) -> list[Item] | None:
    """The file's items, as :func:`read_predictions` gives them, if it has at most
    ``limit``; else None, having read (and held) no more than ``limit`` items' lines.

    One open either way: a small file is read once, as before chunked scoring; a large
    one is left to the chunked path (tunix_rt.quality.chunks), which streams it.
    """
    def parse(lines: Iterable[str]) -> list[Item] | None:
        buffered: list[str] = []
        count = 0
        for line in lines:
            buffered.append(line)
            if line.strip():
                count += 1
                if count > limit:
                    return None
        return parse_predictions(buffered, uri=uri, line_of=line_of)

    return read_jsonl(uri, parse, allow=allow)


def read_jsonl(uri: str, parse: Callable[[Iterable[str]], T], *, what: str = "predictions",
               max_bytes: int | None = None, max_line_bytes: int | None = None,
               allow: Sequence[str] | None = None) -> T:
    """Open ``uri`` (a path or anything fsspec opens) as UTF-8 text and ``parse`` its lines.

    A local path or ``file://`` URI is opened directly, and only if it is a regular
    file (checked without opening it: opening a FIFO blocks); anything else through
    fsspec. At most ``max_bytes`` are read and no line may exceed ``max_line_bytes``
    (defaults: the settings). A missing, oversized or non-regular file, a line too
    long, text that is not UTF-8, a URI no filesystem can open and, with ``allow``, a
    file outside those prefixes are :class:`PredictionsError`s naming the URI (and
    the line).
    """
    if max_bytes is None or max_line_bytes is None:
        from tunix_rt.settings import get_settings

        settings = get_settings()
        max_bytes = settings.predictions_max_bytes if max_bytes is None else max_bytes
        max_line_bytes = (settings.predictions_max_line_bytes if max_line_bytes is None
                          else max_line_bytes)
    with _open_binary(uri, what, allow) as handle:
        try:
            return parse(_text_lines(handle, uri, max_bytes, max_line_bytes))
        except FileNotFoundError:
            raise PredictionsError(f"{what} file not found: {uri}") from None
        except IsADirectoryError:
            raise PredictionsError(f"{uri}: is a directory, not a {what} file") from None


def local_path(uri: str) -> str | None:
    """The local path ``uri`` names (a plain path, a ``file:`` or ``local://`` URI), or None.

    A ``file:`` URI is percent-decoded (RFC 8089: ``Path.as_uri()`` writes a space as
    ``%20``); one naming another host, or a path with a NUL, is a :class:`PredictionsError`.
    """
    if _CHAIN.match(uri):
        return None
    scheme = _SCHEME.match(uri)
    if scheme is not None:
        protocol = scheme.group(1).lower()
        if protocol == "file":
            path = _file_uri_path(uri)
        elif protocol == "local":
            path = uri[scheme.end():]
        else:
            return None
    elif uri[:5].lower() == "file:":
        path = _file_uri_path(uri)
    else:
        path = uri
    if "\0" in path:
        raise PredictionsError(f"{uri!r}: the path contains a NUL character")
    return path


def _file_uri_path(uri: str) -> str:
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise PredictionsError(f"{uri!r}: a file URI naming another host ({parts.netloc}) "
                               "cannot be opened")
    return unquote(parts.path)


def _require_regular(mode: int, uri: str, what: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    raise PredictionsError(f"{uri}: is {kind}, not a {what} file (only regular files are read)")


def _stat(path: str, uri: str, what: str) -> os.stat_result:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise PredictionsError(f"{what} file not found: {uri}") from None
    except PermissionError:
        raise PredictionsError(f"{uri}: permission denied") from None
    except ValueError as exc:  # an embedded NUL
        raise PredictionsError(f"{uri!r}: not a usable path ({exc})") from None


def open_binary(uri: str, allow: Sequence[str] | None = None,
                what: str = "predictions") -> Any:
    """The file ``uri`` names, opened for reading bytes, with every check of
    :func:`read_jsonl` (a context manager; chunked scoring seeks in it)."""
    return _open_binary(uri, what, allow)


@contextmanager
def _open_binary(uri: str, what: str,
                 allow: Sequence[str] | None = None) -> Iterator[IO[bytes]]:
    path = local_path(uri)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if path is not None and allow is not None:
        # What the path names now, not when the delivery came: resolved, checked, and
        # opened without following a link that a job swaps in between the two.
        try:
            path = _check_local(path, uri, allow)
        except PredictionsError as exc:
            raise PredictionsError(f"{exc}; {_AT_READ}") from None
        flags |= getattr(os, "O_NOFOLLOW", 0)
    elif path is None and allow is not None:
        try:
            check_allowed(uri, allow)
        except PredictionsError as exc:
            raise PredictionsError(f"{exc}; {_AT_READ}") from None
    if path is not None:
        _require_regular(_stat(path, uri, what).st_mode, uri, what)
        # O_NONBLOCK: a FIFO swapped in since the stat must not block the open.
        try:
            fd = os.open(path, flags)
        except (FileNotFoundError, NotADirectoryError):
            raise PredictionsError(f"{what} file not found: {uri}") from None
        except (PermissionError, IsADirectoryError) as exc:
            raise PredictionsError(f"{uri}: cannot open the {what} file ({exc.strerror})") \
                from None
        except OSError as exc:
            if allow is None or exc.errno != getattr(os, "ELOOP", None):
                raise
            raise PredictionsError(f"{_outside(uri, path, 'a symbolic link was swapped in')}; "
                                   f"{_AT_READ}") from None
        try:
            _require_regular(os.fstat(fd).st_mode, uri, what)
            if allow is not None:
                _check_opened(fd, uri, allow)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as handle:
            yield handle
        return

    from fsspec.core import url_to_fs  # fsspec registers many protocols on import
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, fs_path = url_to_fs(uri)
    except (ImportError, ValueError, TypeError) as exc:
        # ValueError: "Protocol not known: ..." or a malformed URL; ImportError: the
        # protocol's package (s3fs, gcsfs, ...) is not installed.
        raise PredictionsError(f"cannot open {what} URI {uri!r}: no filesystem for it "
                               f"({exc})") from None
    except OSError as exc:
        if is_network_error(exc):
            raise  # the store may be back for the task's next attempt
        # pyarrow's hdfs:// without a JVM or libhdfs ("Unable to load libjvm"), or any
        # backend that fails before it reaches the network: the same on every attempt.
        raise PredictionsError(f"cannot open {what} URI {uri!r}: its filesystem could not "
                               f"be set up ({_first_line(exc)})") from None
    if isinstance(fs, LocalFileSystem):  # a local filesystem under another protocol
        _require_regular(_stat(fs_path, uri, what).st_mode, uri, what)
    try:
        handle = fs.open(fs_path, "rb")
    except FileNotFoundError:
        raise PredictionsError(f"{what} file not found: {uri}") from None
    except IsADirectoryError:
        raise PredictionsError(f"{uri}: is a directory, not a {what} file") from None
    except (ImportError, ValueError) as exc:
        raise PredictionsError(f"cannot open {what} URI {uri!r}: {exc}") from None
    with handle:
        yield handle


def is_network_error(exc: BaseException) -> bool:
    """True when ``exc`` is, or was caused by, a failure to reach a host: refused, reset,
    timed out, a failed name lookup (requests and aiohttp wrap these; their chain shows
    them). Such an error may pass; a store's own error or a missing backend does not."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        current = current.__cause__ or current.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _text_lines(handle: IO[bytes], uri: str, max_bytes: int,
                max_line_bytes: int) -> Iterator[str]:
    """The lines of ``handle`` as text, counting bytes as they are read."""
    for _lineno, _start, _end, line in lines_at(handle, uri, max_bytes, max_line_bytes):
        yield line


def lines_at(handle: IO[bytes], uri: str, max_bytes: int, max_line_bytes: int, *,
             offset: int = 0, lineno: int = 0) -> Iterator[tuple[int, int, int, str]]:
    """(line number, first byte, byte after its newline, text) of each line of ``handle``:
    the lines of :func:`raw_lines`, decoded (a CRLF ending read as a newline).

    ``offset`` and ``lineno`` say where in the file ``handle`` starts (a chunk read
    from the middle). Chunked scoring records the byte ranges to read a chunk again.
    """
    for number, start, end, raw in raw_lines(handle, uri, max_bytes, max_line_bytes,
                                             offset=offset, lineno=lineno):
        stop = len(raw) - 1 if raw.endswith(b"\n") else len(raw)
        yield number, start, end, _decode(raw, 0, stop, uri, number, max_line_bytes)


def _too_large(uri: str, max_bytes: int) -> NoReturn:
    raise PredictionsError(f"{uri}: larger than {max_bytes} bytes, the most read of one file "
                           "(TUNIX_RT_PREDICTIONS_MAX_BYTES)")


def raw_lines(handle: IO[bytes], uri: str, max_bytes: int, max_line_bytes: int, *,
              offset: int = 0, lineno: int = 0) -> Iterator[tuple[int, int, int, bytes]]:
    """(line number, first byte, byte after its newline, bytes) of each line of
    ``handle``, its newline kept, not decoded: chunked scoring parses the bytes
    themselves and hashes them, and decodes a line only to name what is wrong with it.

    The file is read in blocks, counting bytes as they come: more than ``max_bytes``
    in all, or a line longer than ``max_line_bytes`` (without its newline), is refused
    as soon as it is seen, naming the line. ``offset`` and ``lineno``: as in
    :func:`lines_at`."""
    total = 0
    pending = b""
    base = offset  # the file offset of pending[0]
    while True:
        block = handle.read(READ_CHUNK)
        if not block:
            break
        total += len(block)
        if total > max_bytes:
            _too_large(uri, max_bytes)
        buffer = pending + block if pending else block
        find = buffer.find
        start = 0
        while (end := find(b"\n", start)) >= 0:
            lineno += 1
            if end - start > max_line_bytes:
                _line_too_long(uri, lineno, max_line_bytes)
            yield lineno, base + start, base + end + 1, buffer[start:end + 1]
            start = end + 1
        pending = buffer[start:]
        base += start
        if len(pending) > max_line_bytes:
            _line_too_long(uri, lineno + 1, max_line_bytes)
    if pending:
        yield lineno + 1, base, base + len(pending), pending


def _decode(buffer: bytes | bytearray, start: int, end: int, uri: str, lineno: int,
            max_line_bytes: int) -> str:
    if end - start > max_line_bytes:
        _line_too_long(uri, lineno, max_line_bytes)
    if end > start and buffer[end - 1] == 0x0D:  # CRLF
        end -= 1
    try:
        return buffer[start:end].decode("utf-8") + "\n"
    except UnicodeDecodeError as exc:
        raise PredictionsError(f"{uri}, line {lineno}: not UTF-8 text ({exc.reason} at byte "
                               f"{exc.start + 1} of the line)") from None


def _line_too_long(uri: str, lineno: int, max_line_bytes: int) -> None:
    raise PredictionsError(f"{uri}, line {lineno}: longer than {max_line_bytes} bytes, the "
                           "longest line read (TUNIX_RT_PREDICTIONS_MAX_LINE_BYTES)")


def allowed_prefixes(settings: Any) -> list[str]:
    """The prefixes a webhook's ``predictions_uri`` may start with (``TUNIX_RT_PREDICTIONS_ALLOW``).

    Unset: the jobs directory and the demo's directory, each relative to the
    working directory of the process that checks.
    """
    if settings.predictions_allow is not None:
        return settings.predictions_allow.split()
    return [settings.jobs_dir, DEMO_DIR]


def allowed_for(origin: str | None, settings: Any = None) -> list[str] | None:
    """The prefixes a run's predictions must be under when they are read, or None.

    Runs whose predictions came over the webhook (origin ``webhook``) are checked
    again at evaluation against this process's ``TUNIX_RT_PREDICTIONS_ALLOW``; runs the
    operator registered, launched or tuned are not subject to the list.
    """
    if origin != "webhook":
        return None
    if settings is None:
        from tunix_rt.settings import get_settings

        settings = get_settings()
    return allowed_prefixes(settings)


def check_allowed(uri: str, prefixes: Sequence[str]) -> None:
    """Raise :class:`PredictionsError` unless ``uri`` is under one of ``prefixes``.

    A local path or ``file:`` URI is compared after resolving ``..`` and symbolic
    links (of the URI and of the prefix), so ``file:///data/runs/../../etc/passwd``
    is not under ``/data/runs/``; a prefix covers whole path components only
    (``/data/runs`` does not cover ``/data/runs2``). Any other URI must start with a
    prefix of its own kind (``s3://team-bucket/``) at a ``/``, and the rest may hold
    no ``.`` or ``..`` component and no fsspec chain (``::``).
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise PredictionsError(f"predictions_uri {uri!r} contains a control character")
    path = local_path(uri)
    if path is not None:
        _check_local(path, uri, prefixes)
        return
    for prefix in prefixes:
        if _local_prefix(prefix) is None and _remote_under(uri, prefix):
            return
    raise PredictionsError(f"predictions_uri {uri!r} is not under a prefix this service reads "
                           "predictions from (TUNIX_RT_PREDICTIONS_ALLOW)")


def _check_local(path: str, uri: str, prefixes: Sequence[str]) -> str:
    """``path`` resolved (``..`` and symbolic links), when under a local prefix."""
    if not os.path.isabs(path):
        # Relative to what? The receiver's and the worker's directories may differ.
        raise PredictionsError(f"predictions_uri {uri!r} is a relative path; send an "
                               "absolute path or a file:// URI (TUNIX_RT_PREDICTIONS_ALLOW)")
    resolved = os.path.realpath(path)
    if not _under_any(resolved, prefixes):
        raise PredictionsError(_outside(uri, resolved if resolved != path else None))
    return resolved


def _check_opened(fd: int, uri: str, prefixes: Sequence[str]) -> None:
    """The file actually opened must be under a prefix too: a directory of the path
    may have been swapped for a link between the check and the open (Linux names the
    open file in /proc; elsewhere the check before the open stands)."""
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return
    if os.path.isabs(opened) and not _under_any(opened, prefixes):
        raise PredictionsError(f"{_outside(uri, opened)}; {_AT_READ}")


def _under_any(resolved: str, prefixes: Sequence[str]) -> bool:
    return any(root is not None and _under(resolved, root)
               for root in map(_local_prefix, prefixes))


def _outside(uri: str, resolved: str | None, how: str | None = None) -> str:
    where = f" resolves to {resolved!r}, which" if resolved else ""
    text = (f"predictions_uri {uri!r}{where} is not under a prefix this service reads "
            "predictions from (TUNIX_RT_PREDICTIONS_ALLOW)")
    return f"{text}: {how}" if how else text


def _local_prefix(prefix: str) -> str | None:
    try:
        path = local_path(prefix)
    except PredictionsError:
        return None
    return None if path is None or not path else os.path.realpath(path)


def _under(path: str, root: str) -> bool:
    return root == os.sep or path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _remote_under(uri: str, prefix: str) -> bool:
    from urllib.parse import unquote

    def lowered_scheme(text: str) -> str:
        scheme = _SCHEME.match(text)
        return text if scheme is None else scheme.group(1).lower() + text[scheme.end() - 3:]

    uri, prefix = lowered_scheme(uri), lowered_scheme(prefix)
    if not uri.startswith(prefix):
        return False
    rest = uri[len(prefix):]
    if not prefix.endswith("/") and rest and not rest.startswith("/"):
        return False  # s3://team-bucket does not cover s3://team-bucket-2
    if "::" in rest:
        return False
    segments = re.split(r"[/\\]", unquote(rest))
    return not any(segment in (".", "..") for segment in segments)


def parse_predictions(lines: Iterable[str], *, uri: str = "<predictions>",
                      require_reference: bool = False, require_response: bool = True,
                      line_of: dict[str, int] | None = None) -> list[Item]:
    """Parse JSON Lines into items; blank lines are allowed, everything else is checked.

    Without ``require_response`` (an eval-set file: ids, prompts, references) a line
    may leave the response out. ``line_of``, when given, maps each id to its line.
    """
    items: list[Item] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        item = parse_line(line, f"{uri}, line {lineno}", require_reference=require_reference,
                          require_response=require_response)
        if item is None:
            continue
        if item.id in seen:
            raise PredictionsError(f"{uri}, line {lineno}: duplicate id {item.id!r} (first seen "
                                   f"on line {seen[item.id]})")
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise PredictionsError(no_items_message(uri, require_response))
    if line_of is not None:
        line_of.update(seen)
    return items


def no_items_message(uri: str, require_response: bool = True) -> str:
    what = "predictions file" if require_response else "items file"
    return f"{uri}: the {what} has no items"


def parse_line(line: str, where: str, *, require_reference: bool = False,
               require_response: bool = True) -> Item | None:
    """One line as an item (None for a blank line); a :class:`PredictionsError` naming
    ``where`` when it is not one. Duplicates are the caller's to find."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PredictionsError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") \
            from None
    except RecursionError:
        raise PredictionsError(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise PredictionsError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise PredictionsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    item_id = _required_str(obj, "id", where)
    if not item_id.strip():
        raise PredictionsError(f"{where}: field 'id' is empty")
    if len(item_id) > MAX_ID_LENGTH:
        raise PredictionsError(f"{where}: field 'id' is longer than {MAX_ID_LENGTH} characters")
    response = (_required_str(obj, "response", where) if require_response
                else _optional_str(obj, "response", where) or "")
    reference = _optional_str(obj, "reference", where)
    if require_reference and reference is None:
        raise PredictionsError(
            f"{where}: field 'reference' is required by the judge but missing")
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise PredictionsError(f"{where}: field 'metadata' must be an object")
    prompt = _optional_str(obj, "prompt", where)
    # JSON text holds a NUL only as the escape \u0000 (a raw one is invalid), and a
    # surrogate only as an escape \uD800-\uDFFF: a line without them has neither, and
    # its fields need no walk.
    if ("\\u0000" not in line and "\x00" not in line and "\\ud" not in line
            and "\\uD" not in line):
        return Item(id=item_id, response=response, prompt=prompt, reference=reference,
                    metadata=metadata)
    for key, value in (("id", item_id), ("response", response), ("prompt", prompt),
                       ("reference", reference), ("metadata", metadata)):
        if _has_nul(value):
            # PostgreSQL stores no NUL in text or JSON; refuse it here, with the line.
            raise PredictionsError(f"{where}: field {key!r} contains a NUL character "
                                   "(\\u0000)")
        if _has_lone_surrogate(value):
            # Not Unicode text: no database (nor UTF-8) can store it.
            raise PredictionsError(f"{where}: field {key!r} contains a lone surrogate "
                                   "escape (\\uD800-\\uDFFF not in a pair): not Unicode text")
    return Item(id=item_id, response=response, prompt=prompt, reference=reference,
                metadata=metadata)


def _has_nul(value: Any) -> bool:
    """True when ``value`` (a string, or a JSON object or array) holds a NUL anywhere."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\0" in value:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _has_lone_surrogate(value: Any) -> bool:
    """True when ``value`` (a string, or a JSON object or array) holds a surrogate code
    point that JSON's escapes left unpaired anywhere."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _required_str(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj or obj[key] is None:
        raise PredictionsError(f"{where}: required field {key!r} is missing")
    value = obj[key]
    if not isinstance(value, str):
        raise PredictionsError(f"{where}: field {key!r} must be a string, "
                               f"got {type(value).__name__}")
    return value


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A numeric reference ("reference": 42) is common in math sets; keep its text.
        return json.dumps(value)
    if not isinstance(value, str):
        raise PredictionsError(f"{where}: field {key!r} must be a string, "
                               f"got {type(value).__name__}")
    return value
