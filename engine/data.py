"""Datasets for LBA runs, read once into tensors that stay resident during training.

Image sets (Fashion-MNIST, MNIST, CIFAR-10) are read from local files first and downloaded
with torchvision only as the last resort. The places looked in, in order:

1. the ``data_dir`` argument (``--data-dir``),
2. ``$LBA_DATA``,
3. the user cache, ``$XDG_CACHE_HOME/lba/<name>`` or ``~/.cache/lba/<name>``,
4. the system folder ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist``).

In each place the files may lie directly in the folder, in a ``<name>/`` subfolder, or in
torchvision's layout (``FashionMNIST/raw/``, ``MNIST/raw/``, ``cifar-10-batches-py/``); IDX
files may be gzipped or not. The first place holding any of a dataset's files must hold all of
them intact: a truncated, corrupt or incomplete set raises :class:`DataError` rather than
falling through to the next place, so a broken file the user put somewhere is reported.
Files lying directly in a folder carry no dataset name, so MNIST's files put straight into
``--data-dir`` would also be read if Fashion-MNIST were asked for: keep each set in its own
subfolder or torchvision's layout when one folder holds several.

Tabular sets (wine, circles) come from scikit-learn with an 80/20 stratified split, as in the
authors' notebooks.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import pickle
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from engine.errors import DataError

logger = logging.getLogger("lba")

DATASETS = ("fashion-mnist", "mnist", "cifar10", "wine", "circles")

# Module-level so tests (and unusual installs) can point the system place elsewhere.
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_TORCHVISION_FOLDER = {
    "fashion-mnist": "FashionMNIST/raw",
    "mnist": "MNIST/raw",
    "cifar10": "cifar-10-batches-py",
}
_NUM_CLASSES = {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "wine": 3, "circles": 2}


@dataclass
class Dataset:
    """One dataset split into train, optional validation, and test tensors.

    Images are ``(N, C, H, W)`` and tabular data ``(N, d)``, float32; labels are int64.
    ``mean`` and ``std`` hold one value per channel (images) or per feature (tabular) when the
    model should normalize its input, and are None when it should see the raw values.

    Attributes:
        name: One of :data:`DATASETS`.
        x_train: Training inputs.
        y_train: Training labels.
        x_val: Validation inputs carved from the training data, or None.
        y_val: Validation labels, or None.
        x_test: Test inputs.
        y_test: Test labels.
        input_shape: Shape of one sample.
        num_classes: Number of classes.
        mean: Per-channel (or per-feature) mean of ``x_train``, or None.
        std: Per-channel (or per-feature) standard deviation of ``x_train``, or None.
        source: Where the data was read from, for the run record.
    """

    name: str
    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_val: Tensor | None = field(repr=False)
    y_val: Tensor | None = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    source: str

    def to(self, device: torch.device | str) -> Dataset:
        """Return a copy with every tensor on ``device``.

        Args:
            device: Target device, e.g. ``"cuda"``.

        Returns:
            A new Dataset; this one is left where it was.
        """

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            x_train=move(self.x_train),
            y_train=move(self.y_train),
            x_val=move(self.x_val),
            y_val=move(self.y_val),
            x_test=move(self.x_test),
            y_test=move(self.y_test),
        )


def user_cache_dir() -> Path:
    """Return lba's cache folder: ``$XDG_CACHE_HOME/lba``, else ``~/.cache/lba``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lba"


def search_paths(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """List the places looked in for ``name``, in the order they are tried.

    Args:
        name: One of :data:`DATASETS`.
        data_dir: A folder given by the user; it comes first.

    Returns:
        The folders, first to last; empty for the scikit-learn sets, which need no files.

    Raises:
        DataError: ``name`` is not a known dataset.
    """
    _check_name(name)
    if name not in _TORCHVISION_FOLDER:
        return []
    places = []
    if data_dir is not None:
        places.append(Path(data_dir).expanduser())
    if os.environ.get("LBA_DATA"):
        places.append(Path(os.environ["LBA_DATA"]).expanduser())
    places.append(user_cache_dir() / name)
    places.append(SYSTEM_DATA_DIR / name)
    return places


def download_dataset(name: str, root: Path) -> None:
    """Fetch an image dataset with torchvision into ``root``, in torchvision's layout.

    Args:
        name: ``"fashion-mnist"``, ``"mnist"`` or ``"cifar10"``.
        root: Folder to download into; created if missing.
    """
    # Imported here: reading local files must not need torchvision.
    from torchvision import datasets

    cls = {
        "fashion-mnist": datasets.FashionMNIST,
        "mnist": datasets.MNIST,
        "cifar10": datasets.CIFAR10,
    }[name]
    root.mkdir(parents=True, exist_ok=True)
    # One call fetches both splits' archives.
    cls(str(root), train=True, download=True)


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    train_subset: int | None = None,
    val_size: int | float = 0,  # noqa: PYI041 - an int is a count, a float a fraction
    seed: int = 0,
    normalize: bool = False,
    download: bool = True,
) -> Dataset:
    """Load a dataset as float32 inputs and int64 labels.

    ``train_subset=N`` keeps the FIRST N training samples, as the paper does. ``val_size`` (a
    count if int, a fraction if float) carves validation data from the training data, never
    from test: if samples remain after the subset, it is a random draw (seeded by ``seed``)
    from those, and the N training samples are untouched; otherwise it is the last samples of
    the training data, which then shrinks (the seed is not used). A fraction counts the pool it
    is taken from, and a non-zero fraction takes at least one sample.

    Args:
        name: One of :data:`DATASETS`.
        data_dir: Folder to look in before ``$LBA_DATA``, the cache and the system folder.
        train_subset: Keep only the first this many training samples.
        val_size: Validation samples to carve from the training data; 0 for none.
        seed: Seeds the validation draw and the scikit-learn split and sample generation.
        normalize: Fill ``mean``/``std`` from the training inputs for in-model normalization.
        download: Download with torchvision into the user cache if no place has the files.

    Returns:
        The dataset, on the CPU.

    Raises:
        DataError: Unknown name, bad subset or validation size, files missing, truncated or
            corrupt, or a download that failed.
    """
    _check_name(name)
    started = time.perf_counter()
    if name in _TORCHVISION_FOLDER:
        train_x, train_y, test_x, test_y, source = _read_image_set(name, data_dir, download)
    elif name == "wine":
        train_x, train_y, test_x, test_y, source = _wine(seed)
    else:
        train_x, train_y, test_x, test_y, source = _circles(seed)

    # Pick samples on the stored arrays, so only the kept ones are converted to float.
    train_idx, val_idx = _split_indices(len(train_y), train_subset, val_size, seed)
    x_train, y_train = _to_inputs(train_x[train_idx]), _to_labels(train_y[train_idx])
    x_test, y_test = _to_inputs(test_x), _to_labels(test_y)
    x_val = y_val = None
    if val_idx is not None:
        x_val, y_val = _to_inputs(train_x[val_idx]), _to_labels(train_y[val_idx])

    # Wine is standardized with statistics of the samples trained on only, so nothing leaks.
    if name == "wine":
        mu, sd = _mean_std(x_train)
        x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
        x_val = None if x_val is None else (x_val - mu) / sd

    mean = std = None
    if normalize:
        mu, sd = _mean_std(x_train)
        mean, std = tuple(mu.flatten().tolist()), tuple(sd.flatten().tolist())

    logger.debug("loaded %s from %s in %.3f s", name, source, time.perf_counter() - started)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        input_shape=tuple(x_train.shape[1:]),
        num_classes=_NUM_CLASSES[name],
        mean=mean,
        std=std,
        source=source,
    )


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# ---- Choosing the training, validation and test samples ------------------------------------


def _split_indices(
    n_full: int, train_subset: int | None, val_size: float, seed: int
) -> tuple[np.ndarray | slice, np.ndarray | slice | None]:
    if train_subset is None:
        n_train = n_full
    elif isinstance(train_subset, bool) or not isinstance(train_subset, (int, np.integer)):
        raise DataError(f"train_subset={train_subset!r} must be a whole number of samples")
    elif not 1 <= train_subset <= n_full:
        raise DataError(f"train_subset={train_subset} must lie in 1..{n_full}, the training size")
    else:
        n_train = int(train_subset)

    rest = n_full - n_train
    pool = rest if rest > 0 else n_train
    n_val = _validation_count(val_size, pool)
    if n_val == 0:
        return slice(0, n_train), None
    if rest > 0:
        if n_val > rest:
            raise DataError(
                f"val_size={val_size!r} asks for {n_val} samples but only {rest} training "
                f"samples remain after train_subset={n_train}"
            )
        # Drawn, not the next block, so each seed gives its own validation set.
        picked = np.random.default_rng(seed).choice(rest, size=n_val, replace=False)
        return slice(0, n_train), np.sort(picked) + n_train
    if n_val >= n_train:
        raise DataError(
            f"val_size={val_size!r} takes {n_val} of {n_train} training samples and leaves none "
            "to train on"
        )
    return slice(0, n_train - n_val), slice(n_train - n_val, n_train)


def _validation_count(val_size: float, pool: int) -> int:
    if isinstance(val_size, bool):
        raise DataError(f"val_size={val_size!r} must be a count (int) or a fraction (float)")
    if isinstance(val_size, (int, np.integer)):
        if val_size < 0:
            raise DataError(f"val_size={val_size} must be a count >= 0")
        return int(val_size)
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise DataError(f"val_size={val_size} must be a fraction in [0, 1)")
        return 0 if val_size == 0.0 else max(1, round(val_size * pool))
    raise DataError(f"val_size={val_size!r} must be a count (int) or a fraction (float)")


def _to_inputs(x: np.ndarray) -> Tensor:
    if x.dtype == np.uint8:
        # Pixels / 255 in one pass, straight to float32.
        return torch.from_numpy(np.divide(x, np.float32(255), dtype=np.float32))
    # A copy: the stored arrays are cached and read-only.
    return torch.from_numpy(np.array(x, dtype=np.float32))


def _to_labels(y: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(y, dtype=np.int64))


def _mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
    # Per channel for images, per feature for tables; a constant one divides by 1, not 0.
    dims = (0, 2, 3) if x.ndim == 4 else (0,)
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.squeeze(0), std.squeeze(0)


# ---- scikit-learn sets ---------------------------------------------------------------------


def _wine(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    x, y = load_wine(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    return x_tr, y_tr, x_te, y_te, "sklearn.datasets.load_wine"


def _circles(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    from sklearn.datasets import make_circles
    from sklearn.model_selection import train_test_split

    x, y = make_circles(n_samples=1500, factor=0.2, noise=0.2, random_state=seed)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    source = f"sklearn.datasets.make_circles(1500, factor=0.2, noise=0.2, random_state={seed})"
    return x_tr, y_tr, x_te, y_te, source


# ---- Finding image files -------------------------------------------------------------------


def _read_image_set(
    name: str, data_dir: str | Path | None, allow_download: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    _check_given_places(data_dir)
    places = search_paths(name, data_dir)
    found = _find_files(name, places)
    if found is None:
        cache = user_cache_dir() / name
        if not allow_download:
            raise DataError(_not_found_message(name, places, "downloading is off"))
        logger.info("%s not found locally; downloading into %s", name, cache)
        try:
            download_dataset(name, cache)
        except Exception as err:  # any failure ends in the same advice
            # torchvision reports each mirror on its own line; the CLI prints one line.
            cause = " ".join(str(err).split())
            reason = f"the download into {cache} failed ({type(err).__name__}: {cause})"
            raise DataError(_not_found_message(name, places, reason)) from err
        found = _find_files(name, [cache])
        if found is None:
            reason = f"the download into {cache} left no readable files"
            raise DataError(_not_found_message(name, places, reason))

    folder, files = found
    if name == "cifar10":
        return (*_read_cifar(files), str(folder))
    x_train = _read_idx(files["train-images-idx3-ubyte"], 3)
    y_train = _read_idx(files["train-labels-idx1-ubyte"], 1)
    x_test = _read_idx(files["t10k-images-idx3-ubyte"], 3)
    y_test = _read_idx(files["t10k-labels-idx1-ubyte"], 1)
    for split, x, y, x_key, y_key in (
        ("train", x_train, y_train, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("test", x_test, y_test, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ):
        if x.shape[1:] != (28, 28):
            raise DataError(f"{files[x_key]}: images are {x.shape[1]}x{x.shape[2]}, not 28x28")
        if len(x) != len(y):
            raise DataError(
                f"{files[x_key]} holds {len(x)} {split} images but {files[y_key]} holds "
                f"{len(y)} labels; the counts must match"
            )
        _check_labels(files[y_key], y)
    return x_train[:, None], y_train, x_test[:, None], y_test, str(folder)


def _check_given_places(data_dir: str | Path | None) -> None:
    # A folder the user named but that is not there is most likely a typo: say so.
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DataError(f"data_dir {str(data_dir)!r} is not a folder")
    lba_data = os.environ.get("LBA_DATA")
    if lba_data and not Path(lba_data).expanduser().is_dir():
        raise DataError(f"$LBA_DATA={lba_data!r} is not a folder")


def _layouts(name: str, place: Path) -> list[Path]:
    return [place, place / name, place / _TORCHVISION_FOLDER[name]]


def _find_files(name: str, places: list[Path]) -> tuple[Path, dict[str, Path]] | None:
    wanted = _CIFAR_FILES if name == "cifar10" else _IDX_FILES
    for place in places:
        for folder in _layouts(name, place):
            if not folder.is_dir():
                continue
            files = {}
            for key in wanted:
                # The uncompressed file is preferred: it skips the gzip step.
                for candidate in (folder / key, folder / f"{key}.gz"):
                    if candidate.is_file():
                        files[key] = candidate
                        break
            if not files:
                continue
            missing = [key for key in wanted if key not in files]
            if missing:
                raise DataError(
                    f"{folder} holds part of {name} but lacks {', '.join(missing)}; add the "
                    "missing files or remove the partial set"
                )
            return folder, files
    return None


def _not_found_message(name: str, places: list[Path], reason: str) -> str:
    looked = "; ".join(f"{i}) {place}" for i, place in enumerate(places, start=1))
    checked = f"each folder checked directly, in {name}/ and in {_TORCHVISION_FOLDER[name]}/"
    if not os.environ.get("LBA_DATA"):
        checked += "; $LBA_DATA is not set"
    if name == "cifar10":
        fix = (
            "put the cifar-10-batches-py folder (from cifar-10-python.tar.gz) into --data-dir "
            "or $LBA_DATA"
        )
    else:
        names = ", ".join(f"{key}.gz" for key in _IDX_FILES)
        fix = f"put the four files {names} into --data-dir or $LBA_DATA"
        if name == "fashion-mnist":
            fix = f"run `apt-get install dataset-fashion-mnist`, or {fix}"
    return f"{name} not found in {looked} ({checked}); {reason}. To fix: {fix}"


# ---- Decoding files ------------------------------------------------------------------------


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    stat = path.stat()
    return _decode_idx(str(path), stat.st_mtime_ns, stat.st_size, ndim)


# Keyed by (path, mtime, size): repeated runs in one process decode each file once, and a
# replaced file is read again. The arrays are read-only, so callers cannot spoil the cache.
@functools.lru_cache(maxsize=16)
def _decode_idx(path: str, mtime_ns: int, size: int, ndim: int) -> np.ndarray:
    raw = _read_bytes(Path(path))
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes is shorter than an IDX header ({header})")
    magic = int.from_bytes(raw[:4], "big")
    # IDX magic: two zero bytes, type 0x08 (unsigned byte), then the number of dimensions.
    if magic != 0x0800 + ndim:
        raise DataError(
            f"{path}: magic number 0x{magic:08x} is not 0x{0x0800 + ndim:08x} (unsigned-byte "
            f"IDX with {ndim} dimension{'s' if ndim > 1 else ''}); the file is corrupt or not "
            "an IDX file"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path}: holds {len(raw)} bytes but its header ({' x '.join(map(str, dims))}) "
            f"needs {expected}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{path}: cannot be read ({type(err).__name__}: {err}); the archive is truncated "
            "or corrupt, replace it"
        ) from err


def _check_labels(path: Path, y: np.ndarray) -> None:
    bad = y[(y < 0) | (y >= 10)]
    if len(bad):
        raise DataError(f"{path}: label {int(bad[0])} is outside the classes 0..9")


class _CifarUnpickler(pickle.Unpickler):
    # A pickle can run any code it names; a CIFAR batch only needs numpy's array rebuilders.
    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            # Protocol 2 pickles written by Python 3 spell bytes this way.
            ("_codecs", "encode"),
            # Pickle protocol 5 rebuilds arrays from a buffer instead.
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a batch")
        return super().find_class(module, name)


def _read_cifar(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    batches = [_read_cifar_batch(files[key]) for key in _CIFAR_FILES]
    x_train = np.concatenate([x for x, _ in batches[:-1]])
    y_train = np.concatenate([y for _, y in batches[:-1]])
    x_test, y_test = batches[-1]
    return x_train, y_train, x_test, y_test


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    stat = path.stat()
    return _decode_cifar_batch(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _decode_cifar_batch(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"{path}: not a readable CIFAR-10 batch ({type(err).__name__}: {err}); the file is "
            "truncated or corrupt, replace it"
        ) from err
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: data is {data.dtype} {data.shape}, not uint8 (N, 3072); the file is corrupt"
        )
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels; counts must match")
    _check_labels(Path(path), labels)
    images = data.reshape(-1, 3, 32, 32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels
