"""Where datasets are found, how broken files are reported, and how samples are split.

Synthetic IDX files spell each sample's id in its first two pixels and the place they were
written to in the third, so a test can tell exactly which samples it got and from where.
"""

import gzip
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import data
from engine.data import DATASETS, Dataset, load_dataset, search_paths
from engine.errors import DataError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TEST_ID_OFFSET = 1000


@pytest.fixture(autouse=True)
def isolated_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the cache and system places at empty temporary folders and forbid downloads."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LBA_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")

    def no_network(name: str, root: Path) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "download_dataset", no_network)


@pytest.fixture
def real_system_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Use the real Debian folder as the system place."""
    if not (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", REAL_FASHION.parent)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_mnist_like(
    folder: Path, *, marker: int = 0, n_train: int = 20, n_test: int = 10, gz: bool = True
) -> None:
    """Write the four IDX files; sample ids are 0.. (train) and 1000.. (test)."""
    suffix = ".gz" if gz else ""
    for prefix, ids in (
        ("train", np.arange(n_train)),
        ("t10k", TEST_ID_OFFSET + np.arange(n_test)),
    ):
        images = np.zeros((len(ids), 28, 28), dtype=np.uint8)
        images[:, 0, 0], images[:, 0, 1], images[:, 0, 2] = ids // 256, ids % 256, marker
        images[:, 27, 27] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", ids % 10)


def ids_of(x: torch.Tensor) -> list[int]:
    pixels = (x[:, 0, 0, :2] * 255).round().long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


def marker_of(ds: Dataset) -> int:
    return round(ds.x_train[0, 0, 0, 2].item() * 255)


# ---- The real Fashion-MNIST ----------------------------------------------------------------


def test_debian_fashion_mnist_has_60000_train_and_10000_test_images(
    real_system_data: None,
) -> None:
    ds = load_dataset("fashion-mnist", download=False)

    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.y_train.unique().tolist() == list(range(10))
    assert ds.y_test.unique().tolist() == list(range(10))
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.x_val is None and ds.y_val is None
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.mean is None and ds.std is None
    assert ds.source == str(REAL_FASHION)


def test_first_n_subset_equals_first_n_of_full_set(real_system_data: None) -> None:
    full = load_dataset("fashion-mnist", download=False)
    subset = load_dataset("fashion-mnist", train_subset=10000, download=False)

    assert torch.equal(subset.x_train, full.x_train[:10000])
    assert torch.equal(subset.y_train, full.y_train[:10000])
    assert torch.equal(subset.x_test, full.x_test)


def test_real_validation_rows_come_from_training_images_after_the_subset(
    real_system_data: None,
) -> None:
    full = load_dataset("fashion-mnist", download=False)
    ds = load_dataset("fashion-mnist", train_subset=10000, val_size=500, download=False)

    def rows(x: torch.Tensor) -> set[bytes]:
        pixels = (x * 255).round().to(torch.uint8).flatten(1).numpy()
        return {row.tobytes() for row in pixels}

    assert rows(ds.x_val) <= rows(full.x_train[10000:])
    assert len(ds.x_val) == 500 and len(ds.x_train) == 10000


def test_normalize_gives_the_known_fashion_mnist_statistics(real_system_data: None) -> None:
    ds = load_dataset("fashion-mnist", normalize=True, download=False)

    assert ds.mean == pytest.approx((0.2860,), abs=1e-3)
    assert ds.std == pytest.approx((0.3530,), abs=1e-3)


# ---- Where files are looked for ------------------------------------------------------------


def test_search_paths_lists_data_dir_lba_data_cache_then_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LBA_DATA", str(tmp_path / "env"))

    assert search_paths("fashion-mnist", tmp_path / "given") == [
        tmp_path / "given",
        tmp_path / "env",
        tmp_path / "cache" / "lba" / "fashion-mnist",
        tmp_path / "system" / "fashion-mnist",
    ]


def test_search_paths_default_to_debian_and_home_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", Path("/usr/share/datasets"))

    assert search_paths("fashion-mnist") == [
        Path.home() / ".cache" / "lba" / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    ]


def test_data_dir_beats_lba_data_beats_cache_beats_debian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given, env = tmp_path / "given", tmp_path / "env"
    cache = tmp_path / "cache" / "lba" / "fashion-mnist"
    system = tmp_path / "system" / "fashion-mnist"
    for marker, folder in enumerate((given, env, cache, system), start=1):
        write_mnist_like(folder, marker=marker)
    monkeypatch.setenv("LBA_DATA", str(env))

    assert marker_of(load_dataset("fashion-mnist", data_dir=given)) == 1
    assert marker_of(load_dataset("fashion-mnist")) == 2
    monkeypatch.delenv("LBA_DATA")
    assert marker_of(load_dataset("fashion-mnist")) == 3
    shutil.rmtree(cache)
    ds = load_dataset("fashion-mnist")
    assert marker_of(ds) == 4 and ds.source == str(system)


@pytest.mark.parametrize("layout", ["", "fashion-mnist", "FashionMNIST/raw"])
@pytest.mark.parametrize("gz", [True, False])
def test_files_are_found_directly_in_a_subfolder_or_in_torchvision_layout(
    tmp_path: Path, layout: str, gz: bool
) -> None:
    folder = tmp_path / "given" / layout
    write_mnist_like(folder, marker=7, gz=gz)

    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "given")

    assert marker_of(ds) == 7 and ds.source == str(folder)
    assert ids_of(ds.x_train) == list(range(20))


def test_mnist_reads_its_own_torchvision_folder_not_fashion_mnists(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "FashionMNIST" / "raw", marker=1)
    write_mnist_like(tmp_path / "MNIST" / "raw", marker=2)

    assert marker_of(load_dataset("mnist", data_dir=tmp_path)) == 2
    assert marker_of(load_dataset("fashion-mnist", data_dir=tmp_path)) == 1


def test_pixels_are_divided_by_255_into_float32(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, n_train=300)

    ds = load_dataset("fashion-mnist", data_dir=tmp_path)

    assert ds.x_train[299, 0, 0, 1].item() == np.float32(43 / 255)
    assert ds.x_train[:, 0, 27, 27].eq(1.0).all()
    assert ds.y_train[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


# ---- Broken, partial and missing files -----------------------------------------------------


def test_truncated_gz_raises_data_error_naming_the_file(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    broken = tmp_path / "train-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])

    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", data_dir=tmp_path)

    assert str(broken) in str(excinfo.value) and "truncated" in str(excinfo.value)


def test_wrong_magic_number_raises_data_error_naming_the_file(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    broken = tmp_path / "t10k-labels-idx1-ubyte.gz"
    payload = bytearray(gzip.decompress(broken.read_bytes()))
    payload[2] = 0x0D  # float32 instead of unsigned byte
    broken.write_bytes(gzip.compress(bytes(payload)))

    with pytest.raises(DataError, match="magic number 0x00000d01") as excinfo:
        load_dataset("fashion-mnist", data_dir=tmp_path)

    assert str(broken) in str(excinfo.value)


def test_uncompressed_file_shorter_than_its_header_declares_is_reported(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, gz=False)
    broken = tmp_path / "train-images-idx3-ubyte"
    broken.write_bytes(broken.read_bytes()[:-100])

    with pytest.raises(DataError, match="20 x 28 x 28") as excinfo:
        load_dataset("fashion-mnist", data_dir=tmp_path)

    assert str(broken) in str(excinfo.value)


def test_not_a_gzip_archive_is_reported(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    broken = tmp_path / "train-labels-idx1-ubyte.gz"
    broken.write_bytes(b"<html>404 Not Found</html>")

    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", data_dir=tmp_path)

    assert str(broken) in str(excinfo.value)


def test_corrupt_file_is_reported_not_skipped_for_a_later_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, system = tmp_path / "env", tmp_path / "system" / "fashion-mnist"
    write_mnist_like(env)
    write_mnist_like(system)
    (env / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b")
    monkeypatch.setenv("LBA_DATA", str(env))

    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist")


def test_partial_set_of_files_names_the_folder_and_the_missing_file(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()

    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", data_dir=tmp_path)

    message = str(excinfo.value)
    assert str(tmp_path) in message and "lacks t10k-labels-idx1-ubyte" in message


def test_images_and_labels_with_different_counts_are_refused(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(19, dtype=np.uint8))

    with pytest.raises(DataError, match="20 train images but .* holds 19 labels"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_label_outside_the_ten_classes_is_refused(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(10, 12, dtype=np.uint8))

    with pytest.raises(DataError, match="label 12 is outside the classes 0..9"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_missing_everywhere_without_download_names_every_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given, env = tmp_path / "given", tmp_path / "env"
    given.mkdir()
    env.mkdir()
    monkeypatch.setenv("LBA_DATA", str(env))
    calls = []
    monkeypatch.setattr(data, "download_dataset", lambda name, root: calls.append(root))

    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", data_dir=given, download=False)

    message = str(excinfo.value)
    for place in search_paths("fashion-mnist", given):
        assert str(place) in message
    assert "downloading is off" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message and "$LBA_DATA" in message
    assert "\n" not in message and calls == []


def test_failed_download_raises_one_error_naming_every_place_and_the_cause(
    tmp_path: Path,
) -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist")

    message = str(excinfo.value)
    assert str(tmp_path / "cache" / "lba" / "fashion-mnist") in message
    assert str(tmp_path / "system" / "fashion-mnist") in message
    assert "$LBA_DATA is not set" in message
    assert "download into" in message and "network is unreachable" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert isinstance(excinfo.value.__cause__, OSError)


def test_download_error_over_several_lines_is_folded_into_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing(name: str, root: Path) -> None:
        raise RuntimeError("Error downloading x.gz:\nTried mirror-a, got:\nHTTP Error 503\n")

    monkeypatch.setattr(data, "download_dataset", failing)

    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist")

    assert "\n" not in str(excinfo.value)
    assert "Tried mirror-a, got: HTTP Error 503" in str(excinfo.value)


def test_mnist_not_found_message_gives_the_file_names_to_put_in_place() -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", download=False)

    message = str(excinfo.value)
    assert "train-images-idx3-ubyte.gz" in message and "MNIST/raw" in message
    assert "apt-get" not in message


def test_successful_download_is_read_from_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = []

    def fake_download(name: str, root: Path) -> None:
        roots.append(root)
        write_mnist_like(root / "FashionMNIST" / "raw", marker=9)

    monkeypatch.setattr(data, "download_dataset", fake_download)

    ds = load_dataset("fashion-mnist")

    cache = tmp_path / "cache" / "lba" / "fashion-mnist"
    assert roots == [cache]
    assert marker_of(ds) == 9 and ds.source == str(cache / "FashionMNIST" / "raw")


def test_data_dir_that_does_not_exist_is_reported_not_skipped(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "system" / "fashion-mnist")

    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "typo")


def test_unknown_dataset_name_lists_the_known_names() -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagenet")

    assert "'imagenet'" in str(excinfo.value)
    assert all(name in str(excinfo.value) for name in DATASETS)
    with pytest.raises(DataError, match="imagenet"):
        search_paths("imagenet")


# ---- The in-process cache ------------------------------------------------------------------


def test_repeated_load_does_not_decompress_again_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mnist_like(tmp_path, marker=1)
    decompressed = []
    real_decompress = gzip.decompress

    def counting(payload: bytes) -> bytes:
        decompressed.append(len(payload))
        return real_decompress(payload)

    monkeypatch.setattr(data.gzip, "decompress", counting)

    load_dataset("fashion-mnist", data_dir=tmp_path)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert len(decompressed) == 4 and marker_of(ds) == 1

    write_mnist_like(tmp_path, marker=2)
    for name in IDX_FILES:
        os.utime(tmp_path / f"{name}.gz", ns=(1, 1))
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert len(decompressed) == 8 and marker_of(ds) == 2


def test_changing_returned_tensors_does_not_change_the_next_load(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    first = load_dataset("fashion-mnist", data_dir=tmp_path)
    first.x_train.zero_()
    first.y_test.fill_(3)

    again = load_dataset("fashion-mnist", data_dir=tmp_path)

    assert ids_of(again.x_train) == list(range(20))
    assert again.y_test.tolist() == list(range(10))


# ---- Subsets and validation splits ---------------------------------------------------------


def test_validation_is_drawn_from_training_samples_after_the_subset(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, n_train=100)

    ds = load_dataset("fashion-mnist", data_dir=tmp_path, train_subset=40, val_size=10, seed=3)

    val_ids = ids_of(ds.x_val)
    assert ids_of(ds.x_train) == list(range(40))
    assert len(val_ids) == 10 and len(set(val_ids)) == 10
    assert all(40 <= i < 100 for i in val_ids)
    assert ds.y_val.tolist() == [i % 10 for i in val_ids]
    assert ids_of(ds.x_test) == list(range(TEST_ID_OFFSET, TEST_ID_OFFSET + 10))


@pytest.mark.parametrize("train_subset", [None, 20])
def test_validation_without_samples_after_the_subset_is_the_end_of_the_training_data(
    tmp_path: Path, train_subset: int | None
) -> None:
    write_mnist_like(tmp_path, n_train=20)

    ds = load_dataset("fashion-mnist", data_dir=tmp_path, train_subset=train_subset, val_size=5)

    assert ids_of(ds.x_train) == list(range(15))
    assert ids_of(ds.x_val) == list(range(15, 20))
    assert ids_of(ds.x_test) == list(range(TEST_ID_OFFSET, TEST_ID_OFFSET + 10))


def test_validation_fraction_counts_the_pool_it_is_taken_from(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, n_train=100)

    after_subset = load_dataset("fashion-mnist", data_dir=tmp_path, train_subset=40, val_size=0.25)
    whole = load_dataset("fashion-mnist", data_dir=tmp_path, val_size=0.25)
    tiny = load_dataset("fashion-mnist", data_dir=tmp_path, val_size=0.001)

    assert len(after_subset.x_val) == 15 and len(after_subset.x_train) == 40
    assert len(whole.x_val) == 25 and len(whole.x_train) == 75
    assert len(tiny.x_val) == 1


def test_validation_draw_is_reproducible_per_seed(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, n_train=100)

    def draw(seed: int) -> list[int]:
        ds = load_dataset(
            "fashion-mnist", data_dir=tmp_path, train_subset=40, val_size=10, seed=seed
        )
        return ids_of(ds.x_val)

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)


def test_val_size_zero_gives_no_validation_split(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)

    for val_size in (0, 0.0):
        ds = load_dataset("fashion-mnist", data_dir=tmp_path, val_size=val_size)
        assert ds.x_val is None and ds.y_val is None and len(ds.x_train) == 20


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"train_subset": 0}, "train_subset=0"),
        ({"train_subset": 101}, "train_subset=101"),
        ({"train_subset": 2.5}, "train_subset=2.5"),
        ({"val_size": -1}, "val_size=-1"),
        ({"val_size": 1.0}, "val_size=1.0"),
        ({"val_size": True}, "val_size=True"),
        ({"train_subset": 40, "val_size": 61}, "only 60 training samples remain"),
        ({"val_size": 100}, "leaves none"),
    ],
)
def test_bad_subset_or_validation_size_is_refused_naming_the_value(
    tmp_path: Path, options: dict, named: str
) -> None:
    write_mnist_like(tmp_path, n_train=100)

    with pytest.raises(DataError, match=named):
        load_dataset("fashion-mnist", data_dir=tmp_path, **options)


# ---- Normalization and devices -------------------------------------------------------------


def test_normalize_uses_channel_statistics_of_the_training_part_only(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, n_train=100)

    ds = load_dataset(
        "fashion-mnist", data_dir=tmp_path, train_subset=40, val_size=20, normalize=True
    )

    assert ds.mean == pytest.approx((ds.x_train.mean().item(),))
    assert ds.std == pytest.approx((ds.x_train.std(correction=0).item(),))
    assert ds.mean != pytest.approx((torch.cat([ds.x_train, ds.x_val]).mean().item(),))


def test_without_normalize_mean_and_std_are_none(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)

    ds = load_dataset("fashion-mnist", data_dir=tmp_path)

    assert ds.mean is None and ds.std is None


def test_to_moves_every_tensor_and_leaves_the_original(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, val_size=5)

    moved = ds.to("meta")

    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert getattr(moved, field).device.type == "meta"
        assert getattr(ds, field).device.type == "cpu"
    assert moved.source == ds.source and moved.input_shape == ds.input_shape


def test_repr_stays_short_without_tensor_values(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)

    text = repr(load_dataset("fashion-mnist", data_dir=tmp_path))

    assert "tensor" not in text and "input_shape=(1, 28, 28)" in text


# ---- CIFAR-10 ------------------------------------------------------------------------------


def write_cifar_like(folder: Path, n: int = 4) -> None:
    """Write five training batches and a test batch; planes hold 10, 20, 30 (R, G, B)."""
    folder.mkdir(parents=True, exist_ok=True)
    planes = np.repeat(np.array([10, 20, 30], dtype=np.uint8), 1024)
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        batch = {b"data": np.tile(planes, (n, 1)), b"labels": [(i + k) % 10 for k in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar10_batches_load_as_n_3_32_32_with_channels_in_order(tmp_path: Path) -> None:
    write_cifar_like(tmp_path / "cifar-10-batches-py")

    ds = load_dataset("cifar10", data_dir=tmp_path, normalize=True)

    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.x_train[:, 1].eq(np.float32(20 / 255)).all()
    assert ds.mean == pytest.approx((10 / 255, 20 / 255, 30 / 255))
    assert ds.y_test.tolist() == [5, 6, 7, 8]
    assert ds.source == str(tmp_path / "cifar-10-batches-py")


class _Trap:
    def __reduce__(self) -> tuple:
        return (os.getpid, ())


def test_cifar_batch_that_calls_a_foreign_function_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_like(folder)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Trap(), b"labels": []}))

    with pytest.raises(DataError, match="getpid is not allowed") as excinfo:
        load_dataset("cifar10", data_dir=tmp_path)

    assert str(folder / "data_batch_3") in str(excinfo.value)


def test_truncated_cifar_batch_raises_data_error_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_like(folder)
    broken = folder / "test_batch"
    broken.write_bytes(broken.read_bytes()[:500])

    with pytest.raises(DataError, match="truncated") as excinfo:
        load_dataset("cifar10", data_dir=tmp_path)

    assert str(broken) in str(excinfo.value)


# ---- Tabular sets --------------------------------------------------------------------------


def test_wine_is_split_80_20_stratified_and_standardized_on_train() -> None:
    ds = load_dataset("wine")

    assert ds.x_train.shape == (142, 13) and ds.x_test.shape == (36, 13)
    assert ds.x_train.dtype == torch.float32 and ds.num_classes == 3
    assert ds.input_shape == (13,) and ds.source == "sklearn.datasets.load_wine"
    for label, total in enumerate((59, 71, 48)):
        assert abs(int((ds.y_test == label).sum()) - 0.2 * total) < 1
    assert ds.x_train.mean(0).abs().max() < 1e-5
    assert (ds.x_train.std(0, correction=0) - 1).abs().max() < 1e-5
    assert ds.x_test.mean(0).abs().max() > 1e-3


def test_circles_has_1500_points_split_80_20_with_balanced_classes() -> None:
    ds = load_dataset("circles")

    assert ds.x_train.shape == (1200, 2) and ds.x_test.shape == (300, 2)
    assert ds.x_train.dtype == torch.float32 and ds.num_classes == 2
    assert ds.y_train.bincount().tolist() == [600, 600]
    assert ds.y_test.bincount().tolist() == [150, 150]


def test_tabular_split_follows_the_seed() -> None:
    assert torch.equal(load_dataset("wine", seed=1).y_test, load_dataset("wine", seed=1).y_test)
    assert not torch.equal(
        load_dataset("wine", seed=0).x_test, load_dataset("wine", seed=1).x_test
    )
    assert not torch.equal(
        load_dataset("circles", seed=0).x_train, load_dataset("circles", seed=1).x_train
    )


def test_tabular_sets_look_in_no_folder() -> None:
    assert search_paths("wine") == [] and search_paths("circles") == []
