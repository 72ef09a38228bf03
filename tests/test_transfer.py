"""Host <-> device copies: same values, dtype and shape; the source is never touched."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from segtrt import transfer
from segtrt.transfer import Downloader, Uploader, host_copy


def _ct(shape=(1, 5, 6, 7), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 3000, size=shape).astype(np.int16)


def test_cpu_upload_shares_the_array_without_modifying_it():
    image = _ct()
    before = image.copy()
    tensor = Uploader(torch.device("cpu"))(image)
    assert tensor.dtype == torch.int16 and tuple(tensor.shape) == image.shape
    assert np.shares_memory(tensor.numpy(), image)
    np.testing.assert_array_equal(image, before)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_cuda_uploads_reuse_one_staging_buffer(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    uploader = Uploader(torch.device("cuda"))
    large, small = _ct((1, 9, 16, 16), 1).astype(dtype), _ct((2, 4, 8, 8), 2).astype(dtype)
    first = uploader(large)
    buffer = uploader.buffer
    second = uploader(small)  # fits: the same page-locked buffer is reused
    assert uploader.buffer is buffer and buffer.is_pinned()
    # the first upload has landed before the buffer was overwritten by the second
    np.testing.assert_array_equal(first.cpu().numpy(), large)
    np.testing.assert_array_equal(second.cpu().numpy(), small)
    assert first.device.type == "cuda" and first.dtype == torch.from_numpy(large).dtype
    uploader.release()
    assert uploader.buffer is None


def test_cpu_download_is_the_tensors_own_memory():
    tensor = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    array = Downloader(torch.device("cpu"))(tensor)
    assert array.dtype == np.uint8 and array.shape == (2, 3, 4)
    assert np.shares_memory(array, tensor.numpy())
    np.testing.assert_array_equal(array, tensor.numpy())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.float16, torch.float32])
def test_cuda_downloads_reuse_one_page_locked_buffer_and_return_owned_copies(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    downloader = Downloader(torch.device("cuda"))
    large = torch.randint(0, 100, (9, 16, 16), device="cuda").to(dtype)
    small = torch.randint(0, 100, (4, 8, 8), device="cuda").to(dtype)
    first = downloader(large)
    buffer = downloader.buffer
    assert buffer.is_pinned()
    second = downloader(small.transpose(0, 2))  # not contiguous: copied in its logical order
    assert downloader.buffer.data_ptr() == buffer.data_ptr()  # reused, not grown
    np.testing.assert_array_equal(first, large.cpu().numpy())  # not overwritten by the second download
    np.testing.assert_array_equal(second, small.transpose(0, 2).cpu().numpy())
    assert second.shape == (8, 8, 4) and not np.shares_memory(second, buffer.numpy())
    downloader.release()
    assert downloader.buffer is None


def test_packed_order_finds_the_memory_order_of_transposed_volumes():
    from segtrt.transfer import packed_order

    c = np.zeros((1, 4, 5, 6), np.float32)
    assert packed_order(c) is None  # contiguous already
    fortran = np.asfortranarray(np.zeros((4, 5, 6), np.int16))
    assert packed_order(fortran) == (2, 1, 0) and fortran.transpose(2, 1, 0).flags.c_contiguous
    xyz = np.zeros((6, 5, 4), np.float32)  # e.g. a volume stored x, y, z, viewed as (1, z, y, x)
    view = xyz.transpose(2, 1, 0)[None]
    order = packed_order(view)
    assert order is not None and view.transpose(order).flags.c_contiguous
    np.testing.assert_array_equal(view.transpose(order).transpose(np.argsort(order)), view)
    assert packed_order(c[:, ::2]) is None  # a strided slice: no order packs it
    assert packed_order(c[:, ::-1]) is None  # a flip
    assert packed_order(np.broadcast_to(np.zeros((1, 5, 6)), (3, 5, 6))) is None


@pytest.mark.gpu
def test_cuda_upload_of_a_transposed_volume_gives_the_array_order():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    xyz = _ct((7, 6, 5), 3)  # stored x-major
    view = xyz.transpose(2, 1, 0)[None]  # (1, z, y, x), not contiguous
    before = view.copy()
    tensor = Uploader(torch.device("cuda"))(view)
    assert tuple(tensor.shape) == view.shape and tensor.is_contiguous()
    np.testing.assert_array_equal(tensor.cpu().numpy(), before)
    np.testing.assert_array_equal(view, before)


@pytest.mark.parametrize("elements", [1, 7, 4096, 100_003])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_host_copy_splits_large_copies_over_threads_and_copies_every_element(monkeypatch, elements, dtype):
    monkeypatch.setattr(transfer, "PARALLEL_COPY_BYTES", 1024)  # split anything of 1 KiB or more
    src = np.random.default_rng(elements).integers(0, 250, size=(elements,)).astype(dtype).reshape(elements, 1)
    before = src.copy()
    dst = np.zeros_like(src)
    host_copy(dst, src)
    np.testing.assert_array_equal(dst, src)
    np.testing.assert_array_equal(src, before)
    split = transfer._copy_parts(src)
    assert split == (1 if src.nbytes < 1024 else min(transfer.COPY_THREADS, os.cpu_count(), src.nbytes // 512))
    if split > 1:
        assert any(t.name.startswith("segtrt-copy") for t in threading.enumerate())


def test_host_copy_of_strided_views_and_mismatches(monkeypatch):
    monkeypatch.setattr(transfer, "PARALLEL_COPY_BYTES", 1024)
    volume = _ct((1, 40, 30, 20))
    flipped = volume[:, ::-1]  # not C-contiguous: one plain copy, same values
    dst = np.empty(flipped.shape, flipped.dtype)
    host_copy(dst, flipped)
    np.testing.assert_array_equal(dst, flipped)
    with pytest.raises(ValueError, match="into"):
        host_copy(np.empty((1, 40, 30, 20), np.float32), volume)
    with pytest.raises(ValueError, match="into"):
        host_copy(np.empty((1, 40, 30, 21), np.int16), volume)


def test_host_copy_copies_every_element_whatever_the_split():
    src = np.random.default_rng(0).integers(-1000, 1000, size=(1, 7, 5, 3)).astype(np.int16)
    with ThreadPoolExecutor(3) as pool:
        for parts in (1, 2, 3, 7, 105):
            dst = np.zeros_like(src)
            host_copy(dst, src, parts, pool)
            np.testing.assert_array_equal(dst, src)
