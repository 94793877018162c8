"""Untrusted pickles: crafted CIFAR-10 batch files in the user's dataset folder.

The CIFAR-10 reader unpickles the batch files of a folder the user points the config at;
a file whose pickle names ``os.system`` (or ``exec``, ``subprocess.Popen``, ...) would run
its payload as it is read. Every crafted file here tries to create a marker file: the
right behaviour is a one-line error naming the file and the refused global, and no
marker. Real-format batches (Python 3 protocols 0-5, Python 2's ``cPickle`` layout, numpy 1
and numpy 2 module paths, string or bytes keys) must still load, to the same arrays.
"""

from __future__ import annotations

import contextlib
import pickle
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from probe import Case, Verdict, snapshot

GROUP = "untrusted-pickle"
N_IMAGES = 10  # images per batch file
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
FILES = [*TRAIN, "test_batch"]


# --------------------------------------------------------------------------- fake CIFAR-10


def _batch(seed: int, key: Callable[[str], str | bytes] = str.encode, scalar_labels: bool = False) -> dict:
    """A batch dict shaped like the real ones: uint8 ``(n, 3072)`` data, list labels."""
    rng = np.random.default_rng(seed)
    labels = [int(v) for v in rng.integers(0, 10, N_IMAGES)]
    return {
        key("batch_label"): f"batch {seed}".encode(),
        key("labels"): [np.int64(v) for v in labels] if scalar_labels else labels,
        key("data"): rng.integers(0, 256, (N_IMAGES, 3072), dtype=np.uint8),
        key("filenames"): [f"img_{seed}_{j}.png".encode() for j in range(N_IMAGES)],
    }


def _write_folder(root: Path, dump: Callable[[dict], bytes] | None = None, **batch_kw) -> dict[str, dict]:
    """``root/cifar-10-batches-py`` with the six batch files and ``batches.meta``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    dump = dump or (lambda obj: pickle.dumps(obj, protocol=2))
    batches = {}
    for i, name in enumerate(FILES):
        batches[name] = _batch(i, **batch_kw)
        (folder / name).write_bytes(dump(batches[name]))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"x"] * 10}, protocol=2))
    return batches


@contextlib.contextmanager
def _no_torchvision() -> Iterator[None]:
    """The reader's pickle path (torchvision, when installed, reads md5-checked originals)."""
    saved = {m: sys.modules.get(m) for m in ("torchvision", "torchvision.datasets")}
    sys.modules["torchvision"] = None  # type: ignore[assignment]
    sys.modules["torchvision.datasets"] = None  # type: ignore[assignment]
    from tarot_select.tasks.cifar10 import data

    data._load_cached.cache_clear()
    try:
        yield
    finally:
        data._load_cached.cache_clear()
        for m, mod in saved.items():
            if mod is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = mod


def _load(root: Path):
    from tarot_select.tasks.cifar10.data import load_cifar10

    with _no_torchvision():
        return load_cifar10(str(root))


# --------------------------------------------------------------------------- payloads


def _s(text: str) -> bytes:
    """A ``str`` argument (BINUNICODE: any text, no escaping)."""
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _b(data: bytes) -> bytes:
    """A ``bytes`` argument (BINBYTES)."""
    return b"B" + struct.pack("<I", len(data)) + data


def _call(module: str, name: str, *args: str) -> bytes:
    """Protocol-0 opcodes that push ``module.name(*args)`` (GLOBAL, MARK, strings, TUPLE, REDUCE)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n(" + b"".join(_s(a) for a in args) + b"tR"


def _touch_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _payloads(marker: Path) -> dict[str, bytes]:
    """Name -> the opcodes of one expression whose evaluation creates ``marker`` (no STOP)."""
    sh = f"touch '{marker}'"
    code = _touch_code(marker)
    return {
        "os-system": _call("os", "system", sh),
        "posix-system": _call("posix", "system", sh),
        "nt-system": _call("nt", "system", sh),
        "builtins-exec": _call("builtins", "exec", code),
        "builtins-eval": _call("builtins", "eval", code),
        "py2-builtin-eval": _call("__builtin__", "eval", code),
        "subprocess-getoutput": _call("subprocess", "getoutput", sh),
        "subprocess-popen-sh": b"csubprocess\ncall\n((l" + _s("sh") + b"a" + _s("-c") + b"a" + _s(sh) + b"atR",
        "numpy-runstring": b"cnumpy.testing._private.utils\nrunstring\n(" + _s(code) + b"(dtR",
        "importlib-then-system": _call("importlib", "import_module", "os"),
        "pickle-loads-nested": b"c_pickle\nloads\n(" + _b(b"cos\nsystem\n(" + _s(sh) + b"tR.") + b"tR",
        "copyreg-reconstructor": b"ccopy_reg\n_reconstructor\n(cos\nsystem\nc__builtin__\nobject\nNtR",
        "functools-partial": b"cfunctools\npartial\n(cos\nsystem\n" + _s(sh) + b"tR)R",
        "builtins-getattr": b"c__builtin__\ngetattr\n(c__builtin__\n__import__\n("
        + _s("os")
        + b"tR"
        + _s("system")
        + b"tR("
        + _s(sh)
        + b"tR",
        "numpy-load": _call("numpy", "load", str(marker)),
        "torch-load": _call("torch", "load", str(marker)),
    }


def _stack_global(marker: Path) -> bytes:
    """Protocol 4: ``os.system`` named by STACK_GLOBAL (short unicode strings, then ``\\x93``)."""
    sh = f"touch '{marker}'".encode()

    def u(text: bytes) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text

    return b"\x80\x04" + u(b"os") + u(b"system") + b"\x93" + u(sh) + b"\x85R."


def _crafted_file(body: bytes) -> bytes:
    """A whole pickle whose result is ``body``'s value (protocol 0 framing)."""
    return body + b"."


def _inside_valid_batch(body: bytes) -> bytes:
    """A batch dict with every real key, whose ``labels`` value is ``body``'s result."""
    data = pickle.dumps(np.zeros((N_IMAGES, 3072), np.uint8), protocol=0)[:-1]  # drop STOP
    return b"(dp0\n" + _s("batch_label") + _s("x") + b"s" + _s("data") + data + b"s" + _s("labels") + body + b"s."


# --------------------------------------------------------------------------- verdicts


def _refused(work: Path, marker: Path, bad_file: str, global_name: str | None) -> Verdict:
    """Load the folder; expect a one-line TarotInputError naming the file (and the global) and no marker."""
    from tarot_select.errors import TarotInputError

    try:
        _load(work)
    except TarotInputError as exc:
        msg = str(exc)
        if marker.exists():
            return Verdict("silent", f"the payload ran (marker created), then: {msg[:120]}")
        if "\n" in msg:
            return Verdict("traceback", f"a multi-line message: {msg[:200]!r}")
        if bad_file not in msg:
            return Verdict("silent", f"the message does not name {bad_file}: {msg[:200]}")
        if global_name and global_name not in msg:
            return Verdict("silent", f"the message does not name the global {global_name}: {msg[:200]}")
        return Verdict("clear error", msg)
    except BaseException as exc:  # noqa: BLE001
        ran = " (and the payload ran)" if marker.exists() else ""
        return Verdict("traceback", f"{type(exc).__name__}: {str(exc)[:150]}{ran}")
    if marker.exists():
        return Verdict("silent", "the payload ran (marker created) and the folder loaded")
    return Verdict("silent", "a crafted file loaded without an error")


def _malicious(name: str, build: Callable[[Path], bytes], file: str = "data_batch_1", global_name: str | None = None):
    def run(work: Path) -> Verdict:
        _write_folder(work)
        marker = work / "PAYLOAD_RAN"
        (work / "cifar-10-batches-py" / file).write_bytes(build(marker))
        return _refused(work, marker, f"cifar-10-batches-py/{file}", global_name)

    return Case(GROUP, name, run)


def _loads_same(name: str, dump: Callable[[dict], bytes] | None = None, **batch_kw) -> Case:
    """A real-format folder loads to the arrays written."""

    def run(work: Path) -> Verdict:
        batches = _write_folder(work, dump, **batch_kw)
        try:
            x_tr, y_tr, x_te, y_te = _load(work)
        except BaseException as exc:  # noqa: BLE001
            return Verdict("traceback", f"{type(exc).__name__}: {str(exc)[:200]}")

        def field(b: dict, k: str):
            return b[k] if k in b else b[k.encode()]

        want_x = np.concatenate([field(batches[n], "data") for n in TRAIN]).reshape(-1, 3, 32, 32)
        want_y = np.concatenate([np.asarray(field(batches[n], "labels")) for n in TRAIN])
        test = batches["test_batch"]
        if not (
            np.array_equal(x_tr, want_x)
            and np.array_equal(y_tr, want_y)
            and np.array_equal(x_te, field(test, "data").reshape(-1, 3, 32, 32))
            and np.array_equal(y_te, np.asarray(field(test, "labels")))
        ):
            return Verdict("silent", "loaded arrays differ from the ones written")
        return Verdict("right answer")

    return Case(GROUP, name, run)


def _py2_cpickle(batch: dict) -> bytes:
    """``batch`` as Python 2's ``cPickle.dump(..., protocol=2)`` wrote the real CIFAR-10 files:
    py2 ``str`` (BINSTRING) keys and raw array bytes, ``numpy.core.multiarray._reconstruct``."""

    def binstr(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def py_int(v: int) -> bytes:
        return b"K" + bytes([v])

    def array(a: np.ndarray) -> bytes:
        shape = b"(" + b"".join(b"M" + struct.pack("<H", n) for n in a.shape) + b"t"
        dtype = (
            b"cnumpy\ndtype\n"
            + binstr(b"u1")
            + b"K\x00K\x01\x87R"
            + b"(K\x03"
            + binstr(b"|")
            + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        )
        return (
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
            + binstr(b"b")
            + b"\x87R"
            + b"(K\x01"
            + shape
            + dtype
            + b"\x89"
            + binstr(a.tobytes())
            + b"tb"
        )

    out = b"\x80\x02}("
    for k, v in batch.items():
        out += binstr(k if isinstance(k, bytes) else k.encode())
        if isinstance(v, np.ndarray):
            out += array(v)
        elif isinstance(v, bytes):
            out += binstr(v)
        else:  # list of ints or of byte strings
            items = b"".join(py_int(e) if isinstance(e, int) else binstr(e) for e in v)
            out += b"](" + items + b"e"
    return out + b"u."


def _numpy1_paths(batch: dict) -> bytes:
    """Protocol 2 as numpy 1 wrote it: ``numpy.core.multiarray`` instead of ``numpy._core``."""
    return pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _numpy2_paths(batch: dict) -> bytes:
    return pickle.dumps(batch, protocol=2).replace(b"numpy.core.multiarray", b"numpy._core.multiarray")


def _damaged(name: str, damage: Callable[[bytes], bytes]) -> Case:
    """A real batch damaged (truncated, emptied, garbage): a one-line error naming the file."""

    def run(work: Path) -> Verdict:
        _write_folder(work)
        path = work / "cifar-10-batches-py" / "data_batch_3"
        path.write_bytes(damage(path.read_bytes()))
        return _refused(work, work / "PAYLOAD_RAN", "cifar-10-batches-py/data_batch_3", None)

    return Case(GROUP, name, run)


def _prepare_refuses(work: Path) -> Verdict:
    """Through the task's prepare (what the workflow's first job runs): refused, nothing written."""
    from tarot_select.errors import TarotInputError
    from tarot_select.tasks import get_task

    root, out = work / "data", work / "prepared"
    _write_folder(root)
    marker = work / "PAYLOAD_RAN"
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(_crafted_file(_payloads(marker)["os-system"]))
    out.mkdir()
    before = snapshot(out)
    try:
        with _no_torchvision():
            get_task("cifar10_resnet9", {"root": str(root)}, seed=0).prepare(out)
    except TarotInputError as exc:
        if marker.exists():
            return Verdict("silent", "the payload ran")
        if snapshot(out) != before:
            return Verdict("overwritten", f"prepare wrote {sorted(set(snapshot(out)) - set(before))}")
        return Verdict("clear error", str(exc))
    except BaseException as exc:  # noqa: BLE001
        return Verdict("traceback", f"{type(exc).__name__}: {str(exc)[:150]}")
    return Verdict("silent", "prepare accepted a crafted batch" + (" and ran it" if marker.exists() else ""))


def _all_cases() -> list[Case]:
    cases = []
    for name in _payloads(Path("/x")):
        module, attr = _payloads(Path("/x"))[name].split(b"\n")[:2]
        global_name = f"{module[1:].decode()}.{attr.decode()}"

        def build(marker: Path, name: str = name) -> bytes:
            return _crafted_file(_payloads(marker)[name])

        cases.append(_malicious(f"payload-{name}", build, global_name=global_name))
    cases += [
        _malicious("payload-stack-global-protocol-4", _stack_global, global_name="os.system"),
        _malicious(
            "payload-inside-a-valid-batch-dict",
            lambda m: _inside_valid_batch(_payloads(m)["os-system"]),
            global_name="os.system",
        ),
        _malicious(
            "payload-in-the-test-batch",
            lambda m: _crafted_file(_payloads(m)["builtins-exec"]),
            file="test_batch",
            global_name="builtins.exec",
        ),
        _malicious(
            "payload-as-the-array-subtype",
            lambda m: pickle.dumps(np.zeros(3, np.uint8), protocol=2).replace(b"numpy\nndarray", b"os\nsystem"),
            global_name="os.system",
        ),
        _malicious(
            "codecs-encode-abused-with-another-codec",
            lambda m: b"c_codecs\nencode\n(" + _s("x") + _s("zlib_codec") + b"tR.",
        ),
        Case(GROUP, "prepare-refuses-crafted-test-batch", _prepare_refuses),
        _loads_same("real-format-protocol-2-bytes-keys"),
        _loads_same("real-format-protocol-2-str-keys", key=str),
        _loads_same("real-format-python2-cpickle-layout", dump=_py2_cpickle),
        _loads_same("real-format-numpy1-module-path", dump=_numpy1_paths),
        _loads_same("real-format-numpy2-module-path", dump=_numpy2_paths),
        _loads_same("real-format-numpy-scalar-labels", scalar_labels=True),
    ]
    cases += [
        _loads_same(f"real-format-protocol-{p}", dump=lambda obj, p=p: pickle.dumps(obj, protocol=p))
        for p in (0, 1, 3, 4, 5)
    ]
    cases += [
        _damaged("batch-truncated-to-half", lambda b: b[: len(b) // 2]),
        _damaged("batch-zero-bytes", lambda b: b""),
        _damaged("batch-random-bytes", lambda b: np.random.default_rng(0).bytes(len(b))),
        _damaged("batch-last-byte-dropped", lambda b: b[:-1]),
        _damaged("batch-a-list-not-a-dict", lambda b: pickle.dumps([1, 2, 3], protocol=2)),
    ]
    return cases


CASES: list[Case] = _all_cases()
