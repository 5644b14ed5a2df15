"""FixMatch (Sohn et al., NeurIPS 2020) as the reference semi-supervised learner to train on
the picks: the labeled cross-entropy plus the cross-entropy of a strongly augmented view to
the confident pseudo-label of a weakly augmented one, an EMA of the weights for evaluation.
Plain PyTorch (no torchvision); data sets live in memory as tensors."""

from __future__ import annotations

import copy
import io
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._io import check_index_range, read_index_file
from .._validate import as_float, as_int, as_interval
from .augment import cifar_augment, digits_augment

# --------------------------------------------------------------------------- models


class _Normalize(nn.Module):
    """(x - mean) / std per channel: augmentations work on [0, 1] images, the network
    sees standardised ones."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _PreActBlock(nn.Module):
    """Wide-ResNet block, pre-activation (BN -> LeakyReLU -> conv, twice; He et al. 2016):
    where the block changes width or stride, the 1x1 shortcut conv takes the activated
    input too; otherwise the identity path carries the raw input."""

    def __init__(self, cin: int, cout: int, stride: int, bn_momentum: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(0.1)
        self.shortcut = (
            None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(self.act(self.bn2(self.conv1(o))))
        return o + short


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 images (Zagoruyko & Komodakis 2016) in FixMatch's form:
    pre-activation blocks, BatchNorm momentum 0.001, LeakyReLU 0.1, no dropout, Kaiming
    init. ``WideResNet(28, 2, 10)`` is FixMatch's CIFAR-10 network (1.47M parameters)."""

    def __init__(
        self,
        depth: int = 28,
        widen: int = 2,
        num_classes: int = 10,
        in_channels: int = 3,
        bn_momentum: float = 0.001,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2471, 0.2435, 0.2616),
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"`depth` must be 6 n + 4 (got depth={depth})")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.norm = _Normalize(mean, std)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks: List[nn.Module] = []
        cin = widths[0]
        for g, cout in enumerate(widths[1:]):
            for b in range(n):
                stride = 2 if (g > 0 and b == 0) else 1
                blocks.append(_PreActBlock(cin, cout, stride, bn_momentum))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin, momentum=bn_momentum)
        self.act = nn.LeakyReLU(0.1)
        self.fc = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.blocks(self.stem(self.norm(x)))
        o = F.adaptive_avg_pool2d(self.act(self.bn(o)), 1).flatten(1)
        return self.fc(o)


class SmallCNN(nn.Module):
    """A small network for 8x8 grey digits: two stages of two 3x3 convs (``width`` and
    2 ``width`` channels, BN, LeakyReLU 0.1, a 2x2 max-pool between the stages), global
    average pooling, a linear layer. Width 16 (17k parameters) keeps a 2,000-step
    FixMatch run near 15 s on one CPU thread."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 16,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> List[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout, momentum=bn_momentum),
                nn.LeakyReLU(0.1, inplace=True),
            ]

        self.norm = _Normalize([0.5] * in_channels, [0.5] * in_channels)
        self.features = nn.Sequential(
            *conv(in_channels, width),
            *conv(width, width),
            nn.MaxPool2d(2),
            *conv(width, 2 * width),
            *conv(2 * width, 2 * width),
        )
        self.fc = nn.Linear(2 * width, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.features(self.norm(x))
        return self.fc(F.adaptive_avg_pool2d(o, 1).flatten(1))


def _init_weights(model: nn.Module) -> None:
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.Linear):
            nn.init.xavier_normal_(mod.weight)
            nn.init.zeros_(mod.bias)


# --------------------------------------------------------------------------- data


@dataclass
class ImageData:
    """A labeled image data set in memory: ``train_x`` (N, C, H, W) uint8, ``train_y`` (N,)
    int64, the same for the test split, and the number of classes."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def load_cifar(root: str, name: str = "cifar10") -> ImageData:
    """CIFAR-10/100 from the python-pickle batches (the format of ``cifar-10-python.tar.gz``
    / ``cifar-100-python.tar.gz``, which torchvision also reads), unpacked under ``root``:
    ``root/cifar-10-batches-py/{data_batch_1..5, test_batch}`` or
    ``root/cifar-100-python/{train, test}``. Nothing is ever downloaded.

    The batches are pickles by format; they are read by ``_CifarUnpickler``, which admits
    only what they hold (dicts, lists, bytes, str, ints, C-ordered integer numpy arrays of
    1 or 2 dimensions), so a file that would build anything else (run a command, open a
    file, an object array) is refused with a ValueError before that happens, as is a
    corrupt or truncated one, and a batch whose pixels are not uint8 (N, 3072) or whose
    labels are not N integers in [0, classes)."""
    if name not in CIFAR_DIRS:
        raise ValueError(f"`dataset` must be one of {tuple(CIFAR_DIRS)} for CIFAR (got {name!r})")
    base = os.path.join(root, CIFAR_DIRS[name])
    if name == "cifar10":
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, key, classes = ["test_batch"], b"labels", 10
    else:
        train_files, test_files, key, classes = ["train"], ["test"], b"fine_labels", 100
    missing = [f for f in train_files + test_files if not os.path.isfile(os.path.join(base, f))]
    if missing:
        archive = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
        raise FileNotFoundError(
            f"{name} not found: expected {', '.join(missing)} in {base}. This tool never "
            f"downloads; get {archive} from the CIFAR page "
            "(https://www.cs.toronto.edu/~kriz/cifar.html) and unpack it there: "
            f"tar -xzf {archive} -C {root}"
        )

    def read(files: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            d = _read_cifar_batch(os.path.join(base, f), (b"data", key), classes)
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    trx, try_ = read(train_files)
    tex, tey = read(test_files)
    return ImageData(name, trx, try_, tex, tey, classes)


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """What a Python 3 pickle of protocol <= 2 uses to rebuild ``bytes``
    (``_codecs.encode(text, "latin1")``), restricted to exactly that: any other codec
    (some compress, some look up further modules) is refused."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"_codecs.encode is only admitted as encode(str, 'latin1') (got encoding {encoding!r})"
        )
    return text.encode("latin-1")


#: The element types a CIFAR batch's arrays may have, as numpy's pickles name them: the
#: pixels are uint8, and a re-packed batch may hold its labels as an integer array. Plain
#: integers only: never object, void, structured or subarray types.
_CIFAR_DTYPES = ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8")


def _empty_bytes(*args: Any) -> bytes:
    """What a Python 3 pickle of protocol <= 2 uses for an empty ``bytes`` (``bytes()``),
    restricted to exactly that."""
    if args:
        _refuse("bytes() is only admitted without arguments, as pickle writes b''")
    return b""


def _refuse(why: str) -> Any:
    raise pickle.UnpicklingError(why)


def _short(obj: Any) -> str:
    """A value from the file, shown in a message: reprlib bounds its size and nesting."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = 40
    return r.repr(obj)


class _NdarrayMark:
    """What ``numpy.ndarray`` stands for in a batch: only ``_reconstruct``'s first argument.
    Shared by every load, so it holds no state a pickle could change."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]

    def __setstate__(self, state: Any) -> None:
        _refuse("it sets the state of numpy.ndarray itself")


_NDARRAY = _NdarrayMark()


class _DtypeSpec:
    """A pickled ``numpy.dtype(code, align, copy)`` and its state, checked: one of
    ``_CIFAR_DTYPES`` and a byte order, nothing else. numpy never sees the pickle's own
    arguments; ``dtype()`` builds the type from the checked ones. Unhashable, as every
    stand-in here: it cannot hide in a dict key or a set, where it would not be checked."""

    __slots__ = ("code", "order", "stated")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, code: str) -> None:
        self.code, self.order, self.stated = code, "=", False

    def __setstate__(self, state: Any) -> None:
        # numpy writes (3, order, subarray, names, fields, elsize, alignment, flags), or
        # version 4 with metadata last; for a plain integer type the middle is
        # (None, None, None, -1, -1, 0).
        if self.stated:
            _refuse("it sets a dtype's state twice")
        self.stated = True
        if not (type(state) is tuple and len(state) in (8, 9) and state[0] in (3, 4)):
            _refuse(f"it holds a dtype state {_short(state)}, not a plain number type's")
        plain = state[2:5] == (None, None, None) and state[5:8] == (-1, -1, 0)
        if not plain or state[8:] not in ((), (None,)):  # 9th: version 4's metadata
            _refuse(f"it holds a dtype state {_short(state)}, not a plain number type's")
        order = _ascii(state[1])
        if order not in ("|", "<", ">", "="):
            _refuse(f"it holds a dtype byte order {_short(state[1])}")
        if order == "|" and np.dtype(self.code).itemsize > 1:
            _refuse(f"it holds dtype {self.code} without a byte order")
        self.order = order

    def dtype(self) -> np.dtype:
        dt = np.dtype(self.code)
        return dt.newbyteorder(self.order) if self.order in "<>" else dt


def _ascii(value: Any) -> Optional[str]:
    """``value`` as text when it is short ASCII str or bytes (a Python 2 batch read with
    encoding='bytes' has bytes where numpy wrote str), else None."""
    if type(value) is bytes and len(value) <= 8:
        value = value.decode("latin-1")
    return value if type(value) is str and len(value) <= 8 and value.isascii() else None


def _dtype_standin(code: Any, align: Any = False, copy: Any = False) -> _DtypeSpec:
    """Stands in for ``numpy.dtype`` while a batch is unpickled."""
    text = _ascii(code)
    if text not in _CIFAR_DTYPES:
        _refuse(f"it holds an array of dtype {_short(code)}, not a plain integer type")
    if type(align) not in (bool, int) or type(copy) not in (bool, int):
        _refuse("it builds a dtype with other arguments than numpy writes")
    return _DtypeSpec(text)  # type: ignore[arg-type]


class _ArraySpec:
    """A pickled numpy array, built only from checked parts (``_build_array``); the
    unpickler's result holds these until ``_resolve_arrays`` swaps in the arrays. A real
    array never stands on the unpickler's stack, so no state from the file reaches
    ``ndarray.__setstate__``."""

    __slots__ = ("array",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, array: Optional[np.ndarray] = None) -> None:
        self.array = array

    def __setstate__(self, state: Any) -> None:
        # numpy writes (1, shape, dtype, is_fortran, data); older numpy the last four only.
        if self.array is not None:
            _refuse("it sets an array's state twice")
        if type(state) is tuple and len(state) == 5 and type(state[0]) is int and state[0] == 1:
            state = state[1:]
        if not (type(state) is tuple and len(state) == 4):
            _refuse(f"it holds an array state {_short(state)}, not numpy's")
        shape, spec, fortran, raw = state
        if type(fortran) not in (bool, int) or fortran:
            _refuse("it holds a Fortran-ordered array; CIFAR's are C-ordered")
        self.array = _build_array(shape, spec, raw)


def _build_array(shape: Any, spec: Any, raw: Any) -> np.ndarray:
    """A new C-contiguous array of at most 2 dimensions, its data copied out of ``raw``,
    whose length must be exactly the shape's: anything else is refused."""
    if not (
        type(shape) is tuple
        and 1 <= len(shape) <= 2
        and all(type(n) is int and n >= 0 for n in shape)
    ):
        _refuse(f"it holds an array of shape {_short(shape)}; CIFAR's have 1 or 2 dimensions")
    if not isinstance(spec, _DtypeSpec):
        _refuse(f"it holds an array whose dtype is {_short(spec)}")
    if type(raw) not in (bytes, bytearray):
        _refuse(f"it holds an array whose data is a {type(raw).__name__}, not bytes")
    dt = spec.dtype()
    count = 1
    for n in shape:
        count *= n  # Python ints: no overflow
    if count * dt.itemsize != len(raw):
        _refuse(
            f"it holds a {spec.code} array of shape {shape} ({count * dt.itemsize} bytes) "
            f"with {len(raw)} bytes of data"
        )
    native = dt.newbyteorder("=")
    if count == 0:
        return np.zeros(shape, native)
    return np.frombuffer(raw, dtype=dt).astype(native).reshape(shape)  # astype: a copy


def _reconstruct_standin(subtype: Any, shape: Any, typecode: Any) -> _ArraySpec:
    """Stands in for ``numpy.core.multiarray._reconstruct``: numpy pickles an array as
    ``_reconstruct(ndarray, (0,), b'b')`` and then sets its state."""
    if subtype is not _NDARRAY or type(shape) is not tuple or shape != (0,):
        _refuse("it calls numpy's _reconstruct with other arguments than numpy writes")
    if typecode not in (b"b", "b"):
        _refuse("it calls numpy's _reconstruct with other arguments than numpy writes")
    return _ArraySpec()


def _frombuffer_standin(buf: Any, spec: Any, shape: Any, order: Any) -> _ArraySpec:
    """Stands in for ``numpy.core.numeric._frombuffer``, what pickle protocol 5 uses
    (the data in band: out-of-band buffers are never passed to the unpickler)."""
    if order != "C" or type(order) is not str:
        _refuse("it holds a Fortran-ordered array; CIFAR's are C-ordered")
    return _ArraySpec(_build_array(shape, spec, buf))


def _resolve_arrays(obj: Any) -> Any:
    """``obj`` with every ``_ArraySpec`` in its dicts and lists replaced by its array (in
    place: the unpickler built these containers just now); any other stand-in left over,
    or one inside a tuple, is refused. Iterative: a deeply nested file cannot exhaust
    the stack."""
    if isinstance(obj, _ArraySpec):
        return _array_of(obj)
    seen = set()
    todo = [obj]
    while todo:
        c = todo.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        if isinstance(c, dict):
            items = list(c.items())
        elif isinstance(c, (list, tuple)):
            items = list(enumerate(c))
        else:
            continue
        for k, v in items:
            if isinstance(v, _ArraySpec):
                if isinstance(c, tuple):
                    _refuse("it holds an array inside a tuple")
                c[k] = _array_of(v)
            elif isinstance(v, (_DtypeSpec, _NdarrayMark)):
                _refuse("it holds a bare numpy dtype or numpy.ndarray")
            elif isinstance(v, (dict, list, tuple)):
                todo.append(v)
    if isinstance(obj, (_DtypeSpec, _NdarrayMark)):
        _refuse("it holds a bare numpy dtype or numpy.ndarray")
    return obj


def _array_of(spec: _ArraySpec) -> np.ndarray:
    if spec.array is None:
        _refuse("it holds an array without its data")
    return spec.array  # type: ignore[return-value]


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler for CIFAR's python batches. Their dicts, lists, bytes, str and ints
    need no global at all; their numpy arrays name numpy's array reconstruction
    (``_reconstruct``, ``ndarray``, ``dtype``; protocol 5: ``_frombuffer``), and a copy
    re-pickled by Python 3 with protocol <= 2 needs ``_codecs.encode`` for bytes (and
    ``bytes()`` for empty ones). Each of
    these names gets a stand-in that checks its arguments and builds only what CIFAR
    batches hold: C-ordered plain-integer arrays of 1 or 2 dimensions, their data exactly
    the shape's length. Every other global - ``os.system``, ``builtins.open``, ``eval`` -
    is refused before it is looked up, so nothing in the file can run, and numpy's own
    constructors never see the file's values."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct_standin
        if name == "_frombuffer" and module in ("numpy.core.numeric", "numpy._core.numeric"):
            return _frombuffer_standin
        if module == "numpy" and name == "ndarray":
            return _NDARRAY
        if module == "numpy" and name == "dtype":
            return _dtype_standin
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if module in ("__builtin__", "builtins") and name == "bytes":
            return _empty_bytes
        where = f"{module}.{name}"  # any str (STACK_GLOBAL): shortened, one line below
        where = where if len(where) <= 80 else where[:77] + "..."
        return _refuse(f"it refers to {where}, which CIFAR batches never contain")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it uses persistent ids, which CIFAR batches never contain")


def _check_sizes(blob: bytes) -> None:
    """Walk the pickle's opcodes (pickletools reads each argument and checks that it is
    all there) before the unpickler runs. The unpickler allocates what a length field
    says before reading the data, and grows its memo to the index a PUT names: a few
    corrupt bytes could ask for gigabytes. Here every length is within the file, and a
    memo index beyond the opcodes seen so far (numpy and pickle number them in order) is
    refused."""
    import pickletools

    puts = ("PUT", "BINPUT", "LONG_BINPUT")
    ops = 0
    for op, arg, pos in pickletools.genops(blob):
        ops += 1
        if op.name in puts and not (type(arg) is int and 0 <= arg <= ops):
            _refuse(f"it stores an object at memo index {arg} after {ops} opcodes")
        if op.name == "FRAME" and not (type(arg) is int and 0 <= arg <= len(blob) - pos):
            _refuse(f"its frame of {arg} bytes runs past the end of the file")


def _read_cifar_batch(path: str, keys: Tuple[bytes, ...], classes: Optional[int] = None) -> Any:
    """One CIFAR python batch through ``_CifarUnpickler`` (bytes keys, as the files were
    written by Python 2): a dict whose ``keys[0]`` is the uint8 pixels, (N, 3072), and
    ``keys[1]`` the N labels, ints in [0, classes) when ``classes`` is given. Raises
    ValueError naming ``path``, on one line, for anything else (MemoryError only when the
    file's own size cannot be held)."""
    bad = f"{path} is not a CIFAR python batch"
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
        _check_sizes(blob)
        d = _resolve_arrays(_CifarUnpickler(io.BytesIO(blob), encoding="bytes").load())
    except MemoryError:
        raise MemoryError(
            f"{path}: not enough memory to read this CIFAR python batch "
            f"({os.path.getsize(path):,} bytes)"
        ) from None
    except OSError:
        raise
    except Exception as exc:  # a corrupt file can fail anywhere in pickle or numpy
        why = " ".join(str(exc).split())[:300] or type(exc).__name__  # one line
        raise ValueError(f"{bad}: {why} (refused without running anything)") from None
    if not isinstance(d, dict) or not all(k in d for k in keys):
        want = ", ".join(repr(k) for k in keys)
        raise ValueError(f"{bad}: expected a dict with keys {want}")
    data = d[keys[0]]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3072
    ):
        if isinstance(data, np.ndarray):
            got = f"{data.dtype} array of shape {data.shape}"
        else:
            got = type(data).__name__
        raise ValueError(f"{bad}: {keys[0]!r} must be a uint8 array of shape (N, 3072), got {got}")
    if len(keys) > 1:
        labels = d[keys[1]]
        if isinstance(labels, np.ndarray) and labels.ndim == 1:
            ok = labels.dtype.kind in "iu"
            values = labels.tolist() if ok else []
        else:
            ok = isinstance(labels, list) and all(type(v) is int for v in labels)
            values = labels if ok else []
        if not ok or len(values) != len(data):
            raise ValueError(
                f"{bad}: {keys[1]!r} must be a list of {len(data)} integer labels (one per row "
                f"of {keys[0]!r})"
            )
        if classes is not None and values and not 0 <= min(values) <= max(values) < classes:
            raise ValueError(
                f"{bad}: {keys[1]!r} holds labels outside 0..{classes - 1} "
                f"({min(values)} to {max(values)})"
            )
    return d


#: The digits split: a fixed permutation (seed 0, no labels used) -> 1,347 train, 450 test.
DIGITS_TEST = 450


def load_digits_split() -> ImageData:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0-16 scaled to 0-255), split
    by a fixed seeded permutation into 1,347 training and 450 test images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    tr, te = perm[DIGITS_TEST:], perm[:DIGITS_TEST]
    return ImageData(
        "digits",
        torch.from_numpy(x[tr]),
        torch.from_numpy(y[tr]),
        torch.from_numpy(x[te]),
        torch.from_numpy(y[te]),
        10,
    )


def read_labeled(path: "str | os.PathLike[str]", n: int, *, what: str = "`labeled`") -> np.ndarray:
    """Labeled indices from ``usl-fast select``'s outputs, checked against a data set.

    Parameters
    ----------
    path : str or os.PathLike (a bytes path is refused: decode it with ``os.fsdecode``)
        A .npy of integer indices (pick order; shape (n,) or one column (n, 1)), a .txt
        with one index per line, or the reference CSV (``Index,ImageID`` header, one index
        per row): read by ``usl_fast._io.read_index_file``, which every index reader uses.
    n : int
        The number of training images the indices point into, >= 1.
    what : str
        How messages name the file (``usl-fast fixmatch`` passes ``"--labeled"``).

    Returns
    -------
    (l,) int64 numpy array, in file order.

    Raises
    ------
    TypeError
        ``n`` not an int (a bool included) or ``path`` neither a str nor an os.PathLike,
        before the file is opened.
    ValueError
        ``n`` < 1, before the file is opened; everything ``read_index_file`` refuses
        (naming the file and, for text, the line); no index at all, an index outside
        [0, n), or one that repeats.
    """
    # Both arguments before the file is opened: a bad n would otherwise surface after the
    # read as numpy's ufunc error or as "indices must lie in [0, True)".
    fspath = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(fspath, str):
        fix = "; decode it with os.fsdecode(path)" if isinstance(fspath, bytes) else ""
        raise TypeError(
            f"`path` must be a str or os.PathLike naming a file, got {path!r} "
            f"({type(path).__name__}){fix}"
        )
    n = as_int(n, "n", 1)
    idx = read_index_file(fspath, what)
    if idx.size == 0:
        raise ValueError(f"{what} {fspath!r} holds no index; it must hold at least one")
    check_index_range(idx, n, what, fspath, "this data set")
    return idx


# --------------------------------------------------------------------------- config


@dataclass
class FixMatchConfig:
    """FixMatch's hyper-parameters. The defaults are the published CIFAR-10 ones (Sohn et
    al., NeurIPS 2020); ``PRESETS["digits"]`` is the small CPU configuration."""

    model: str = "wrn28-2"  # "wrn28-2", "wrn28-8" or "small-cnn"
    steps: int = 2**20
    batch_size: int = 64  # labeled images per step
    mu: int = 7  # unlabeled images per labeled one
    threshold: float = 0.95
    lambda_u: float = 1.0
    lr: float = 0.03
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    ema: float = 0.999
    eval_every: int = 1024
    augment: str = "cifar"  # "cifar" or "digits"
    seed: int = 0

    def validate(self) -> "FixMatchConfig":
        if self.model not in MODELS:
            raise ValueError(f"`model` must be one of {tuple(MODELS)} (got {self.model!r})")
        if self.augment not in ("cifar", "digits"):
            raise ValueError(f"`augment` must be 'cifar' or 'digits' (got {self.augment!r})")
        for name in ("steps", "batch_size", "mu", "eval_every"):
            as_int(getattr(self, name), name, 1)
        as_interval(self.threshold, "threshold", 0.0, 1.0)
        as_interval(self.ema, "ema", 0.0, 1.0, open_high=True)
        for name in ("lambda_u", "lr", "weight_decay", "momentum"):
            as_float(getattr(self, name), name, 0.0)
        as_int(self.seed, "seed", 0)
        return self


MODELS: Dict[str, Callable[[ImageData], nn.Module]] = {
    "wrn28-2": lambda d: WideResNet(28, 2, d.num_classes, d.train_x.shape[1]),
    "wrn28-8": lambda d: WideResNet(28, 8, d.num_classes, d.train_x.shape[1]),
    "small-cnn": lambda d: SmallCNN(d.num_classes, d.train_x.shape[1]),
}

#: Published CIFAR settings (WRN-28-8 and weight decay 1e-3 on CIFAR-100), and the small
#: digits configuration: 2,000 steps of 16 labeled + 112 unlabeled 8x8 images, an EMA
#: horizon (1 / (1 - 0.99) = 100 steps) short enough for such a run. Chosen before any
#: selection method was compared with it.
PRESETS: Dict[str, FixMatchConfig] = {
    "cifar10": FixMatchConfig(),
    "cifar100": FixMatchConfig(model="wrn28-8", weight_decay=1e-3),
    "digits": FixMatchConfig(
        model="small-cnn",
        steps=2000,
        batch_size=16,
        ema=0.99,
        eval_every=500,
        augment="digits",
    ),
}


# --------------------------------------------------------------------------- sampling


class IndexStream:
    """An endless stream of the given indices in batches: one seeded permutation after
    another (each index once per pass), so a labeled set smaller than the batch repeats
    evenly. ``state_dict`` / ``load_state_dict`` make a resumed run draw the same batches."""

    def __init__(self, indices: torch.Tensor, generator: torch.Generator) -> None:
        self.indices = indices.to(torch.int64).cpu()
        self.gen = generator
        self.order = self.indices[torch.randperm(len(self.indices), generator=self.gen)]
        self.pos = 0

    def next(self, size: int) -> torch.Tensor:
        out = []
        while size > 0:
            if self.pos == len(self.order):
                self.order = self.indices[torch.randperm(len(self.indices), generator=self.gen)]
                self.pos = 0
            take = min(size, len(self.order) - self.pos)
            out.append(self.order[self.pos : self.pos + take])
            self.pos += take
            size -= take
        return torch.cat(out)

    def state_dict(self) -> Dict[str, Any]:
        return {"order": self.order.clone(), "pos": self.pos}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.order, self.pos = state["order"].clone(), int(state["pos"])


# --------------------------------------------------------------------------- trainer


@dataclass
class StepStats:
    """One step's numbers: total, labeled and unlabeled losses, the fraction of unlabeled
    images above the threshold (the mask rate) and the learning rate used."""

    loss: float
    loss_x: float
    loss_u: float
    mask_rate: float
    lr: float


@dataclass
class History:
    steps: List[int] = field(default_factory=list)
    test_acc: List[float] = field(default_factory=list)
    raw_test_acc: List[float] = field(default_factory=list)
    mask_rate: List[float] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)


class FixMatch:
    """FixMatch on an in-memory image data set from the given labeled indices.

    Parameters
    ----------
    data : ImageData (``load_cifar``, ``load_digits_split``).
    labeled : (m,) int indices into ``data.train_x`` whose labels are used; every training
        image (labeled ones included, as in the reference) is also unlabeled data.
    config : FixMatchConfig (``PRESETS[...]``), validated.
    device : torch device (default: CUDA if available, else CPU).

    ``train()`` runs to ``config.steps`` (checkpointing and evaluating on the way);
    ``evaluate()`` is the test accuracy of the EMA model; ``save`` / ``FixMatch.resume``.
    Seeds: model init, batch order and augmentations all come from ``config.seed``;
    torch's global RNG is left alone.
    """

    def __init__(
        self,
        data: ImageData,
        labeled: Any,
        config: FixMatchConfig = PRESETS["cifar10"],  # noqa: B008 (never mutated)
        device: Any = None,
    ) -> None:
        self.config = replace(config).validate()
        self.data = data
        n = data.train_x.shape[0]
        lab = np.asarray(labeled)
        if lab.ndim != 1 or lab.size == 0 or lab.dtype.kind not in "iu":
            raise ValueError(
                f"`labeled` must be a non-empty 1-D integer array (got {lab.dtype}, shape {lab.shape})"
            )
        if lab.min() < 0 or lab.max() >= n or np.unique(lab).size != lab.size:
            raise ValueError(f"`labeled` must hold distinct indices in [0, {n})")
        self.labeled = torch.from_numpy(lab.astype(np.int64))
        self.device = (
            torch.device(device)
            if device is not None
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.model = MODELS[c.model](data).to(self.device)
        self.ema_model = copy.deepcopy(self.model)
        for p in self.ema_model.parameters():
            p.requires_grad_(False)
        # No weight decay on biases and BatchNorm parameters (the reference's rule).
        decay = [p for name, p in self.model.named_parameters() if p.dim() > 1]
        no_decay = [p for name, p in self.model.named_parameters() if p.dim() <= 1]
        self.opt = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": c.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=c.lr,
            momentum=c.momentum,
            nesterov=c.nesterov,
        )
        self.gen = torch.Generator()  # batches and augmentations (CPU: same on any device)
        self.gen.manual_seed(c.seed + 1)
        self.labeled_stream = IndexStream(self.labeled, self.gen)
        self.unlabeled_stream = IndexStream(torch.arange(n), self.gen)
        self.weak, self.strong = digits_augment() if c.augment == "digits" else cifar_augment()
        self.step_count = 0
        self.history = History()

    # ------------------------------------------------------------------ steps

    def lr_at(self, step: int) -> float:
        """FixMatch's schedule: lr * cos(7 pi k / (16 K))."""
        return self.config.lr * math.cos(7.0 * math.pi * step / (16.0 * self.config.steps))

    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        # Images stay uint8 in memory; a batch becomes [0, 1] floats when drawn.
        return self.data.train_x[idx].float().div_(255.0)

    def step(self) -> StepStats:
        """One FixMatch step: labeled weak views, unlabeled weak + strong views, one forward
        pass through the network for all three, SGD, then the EMA update."""
        c = self.config
        lr = self.lr_at(self.step_count)
        for g in self.opt.param_groups:
            g["lr"] = lr
        li = self.labeled_stream.next(c.batch_size)
        ui = self.unlabeled_stream.next(c.batch_size * c.mu)
        x_l = self.weak(self._batch(li), self.gen)
        u = self._batch(ui)
        u_w, u_s = self.weak(u, self.gen), self.strong(u, self.gen)
        y_l = self.data.train_y[li].to(self.device)
        self.model.train()
        logits = self.model(torch.cat([x_l, u_w, u_s]).to(self.device))
        z_l, z_w, z_s = logits.split([len(li), len(ui), len(ui)])
        loss_x = F.cross_entropy(z_l, y_l)
        with torch.no_grad():
            conf, pseudo = torch.softmax(z_w.detach(), dim=1).max(dim=1)
            mask = (conf >= c.threshold).float()
        loss_u = (F.cross_entropy(z_s, pseudo, reduction="none") * mask).mean()
        loss = loss_x + c.lambda_u * loss_u
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self._update_ema()
        self.step_count += 1
        parts = (float(loss.detach()), float(loss_x.detach()), float(loss_u.detach()))
        return StepStats(*parts, float(mask.mean()), lr)

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.config.ema
        for pe, p in zip(self.ema_model.parameters(), self.model.parameters()):
            pe.mul_(d).add_(p.detach(), alpha=1.0 - d)
        # BatchNorm statistics are not trained: the EMA model uses the live ones.
        for be, b in zip(self.ema_model.buffers(), self.model.buffers()):
            be.copy_(b)

    @torch.no_grad()
    def evaluate(self, ema: bool = True, batch_size: int = 1024) -> float:
        """Top-1 accuracy on the test split (the EMA model unless ``ema=False``)."""
        model = self.ema_model if ema else self.model
        model.eval()
        correct = 0
        x, y = self.data.test_x, self.data.test_y
        for s in range(0, len(y), batch_size):
            z = model(x[s : s + batch_size].float().div_(255.0).to(self.device))
            correct += int((z.argmax(1).cpu() == y[s : s + batch_size]).sum())
        return correct / len(y)

    def train(
        self,
        steps: Optional[int] = None,
        log: Optional[Callable[[str], Any]] = print,
        checkpoint: Optional[str] = None,
        progress: bool = False,
    ) -> History:
        """Train until step ``steps`` (default ``config.steps``), evaluating (and saving
        ``checkpoint``, when given) every ``config.eval_every`` steps and at the end."""
        c = self.config
        end = c.steps if steps is None else min(int(steps), c.steps)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=end, initial=self.step_count, desc="FixMatch", unit="step")
        t0 = time.perf_counter()
        acc_mask, acc_loss, n_acc = 0.0, 0.0, 0
        try:
            while self.step_count < end:
                st = self.step()
                acc_mask += st.mask_rate
                acc_loss += st.loss
                n_acc += 1
                if bar is not None:
                    bar.update(1)
                if self.step_count % c.eval_every == 0 or self.step_count == end:
                    acc, raw = self.evaluate(), self.evaluate(ema=False)
                    h = self.history
                    h.steps.append(self.step_count)
                    h.test_acc.append(acc)
                    h.raw_test_acc.append(raw)
                    h.mask_rate.append(acc_mask / n_acc)
                    h.loss.append(acc_loss / n_acc)
                    acc_mask, acc_loss, n_acc = 0.0, 0.0, 0
                    if log is not None:
                        log(
                            f"step {self.step_count}/{c.steps}: test acc {100 * acc:.2f}% "
                            f"(EMA; raw {100 * raw:.2f}%), loss {h.loss[-1]:.4f}, "
                            f"mask rate {h.mask_rate[-1]:.3f}, lr {st.lr:.5f}, "
                            f"{time.perf_counter() - t0:.1f} s"
                        )
                    if checkpoint is not None:
                        self.save(checkpoint)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> Dict[str, Any]:
        return {
            "config": asdict(self.config),
            "dataset": self.data.name,
            "labeled": self.labeled.clone(),
            "step": self.step_count,
            "model": self.model.state_dict(),
            "ema_model": self.ema_model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "generator": self.gen.get_state(),
            "labeled_stream": self.labeled_stream.state_dict(),
            "unlabeled_stream": self.unlabeled_stream.state_dict(),
            "history": asdict(self.history),
        }

    def save(self, path: str) -> None:
        """Write a checkpoint atomically (a crash mid-write keeps the previous one).

        Written to a fresh temporary file beside ``path`` (created exclusively, so never
        through a link planted there) and renamed over it. A symbolic link at ``path``
        itself is refused (OutputError, a ValueError). The state holds only tensors,
        dicts, lists, str and numbers: ``resume`` reads it with ``weights_only=True``."""
        from .._io import write_atomic

        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        state = self.state_dict()
        write_atomic(path, lambda f: torch.save(state, f), what="checkpoint")

    @classmethod
    def resume(cls, path: str, data: ImageData, device: Any = None) -> "FixMatch":
        """Rebuild a run from ``save``'s checkpoint on the same data set; training then
        continues exactly where it stopped (same batches and augmentations).

        The file is read with ``torch.load(weights_only=True)``: tensors and plain values
        only, so a file that would build other objects (and could run code while doing
        so) is refused with a ValueError naming it, before anything in it runs. On torch
        older than 2.6, where that loading could run code (CVE-2025-32434), nothing is
        loaded: an ImportError says to upgrade torch."""
        state = _load_checkpoint(path)
        if state.get("dataset") != data.name:
            raise ValueError(
                f"checkpoint {path} was trained on {state.get('dataset')!r}, not {data.name!r}"
            )
        run = cls(data, state["labeled"].numpy(), FixMatchConfig(**state["config"]), device)
        run.model.load_state_dict(state["model"])
        run.ema_model.load_state_dict(state["ema_model"])
        run.opt.load_state_dict(state["optimizer"])
        run.gen.set_state(state["generator"])
        run.labeled_stream.load_state_dict(state["labeled_stream"])
        run.unlabeled_stream.load_state_dict(state["unlabeled_stream"])
        run.step_count = int(state["step"])
        run.history = History(**state["history"])
        return run


#: What ``FixMatch.state_dict`` holds; a file without these keys is not its checkpoint.
_CHECKPOINT_KEYS = (
    "config",
    "dataset",
    "labeled",
    "step",
    "model",
    "ema_model",
    "optimizer",
    "generator",
    "labeled_stream",
    "unlabeled_stream",
    "history",
)


def _load_checkpoint(path: str) -> Dict[str, Any]:
    """``torch.load(path, weights_only=True)``, its errors turned into one line naming the
    file. torch's own message for a refused file suggests ``weights_only=False``, exactly
    what must not be done with a file this tool did not write, so it is not passed on."""
    from .._safe_torch import check_torch_load

    check_torch_load("loading a FixMatch checkpoint")  # torch <= 2.5.1: weights_only can run code
    not_ours = f"{path} is not a checkpoint written by usl-fast fixmatch"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message names the refused global ("unsupported GLOBAL posix.system");
        # only that name is passed on. Garbage bytes end here too, without one.
        import re

        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        why = (
            f"it refers to {found.group(1)}, not a tensor or plain value, and was not loaded"
            if found
            else "not a readable torch file"
        )
        raise ValueError(f"{not_ours}: {why}") from None
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors, ...
        raise ValueError(
            f"{not_ours}: not a readable torch file ({type(exc).__name__})"
        ) from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{not_ours}: it lacks {', '.join(missing)}")
    return state
