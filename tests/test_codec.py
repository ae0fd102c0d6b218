"""The codec against HDF5 itself: spin packing, and our scale-offset chunks byte for byte
against the chunks HDF5's own filter writes, read back through HDF5's decoder."""

import h5py
import numpy as np
import pytest

from ising_dist.codec import (encode_scaleoffset_int8, encoded_nbytes, pack, pack_spins,
                              unpack_spins)
from ising_dist.store import LIBVER, chunk_samples


def random_spins(rng, shape):
    return (2 * rng.integers(0, 2, shape) - 1).astype(np.int8)


def test_pack_spins_layout_and_round_trip():
    """Two bits a spin, code s + 1, first spin in the most significant bits; 0 (the writer's
    "not yet written") survives too."""
    s = np.array([[-1, 1, 1, -1], [0, 0, 1, 1]], np.int8).reshape(1, 2, 4)
    packed = np.empty((1, 2), np.uint8)
    pack_spins(s, packed)
    assert packed.tolist() == [[0b00101000, 0b01011010]]
    rng = np.random.default_rng(0)
    s = rng.integers(-1, 2, (3, 5, 6, 6)).astype(np.int8)
    packed = np.empty((3, 5, 9), np.uint8)
    pack_spins(s, packed)
    assert np.array_equal(pack(s), packed)
    back = np.empty_like(s)
    unpack_spins(packed, back)
    assert np.array_equal(back, s)


def hdf5_encoded(path, values):
    """The chunk HDF5 itself writes for ``values`` (one chunk, scale-offset filter)."""
    with h5py.File(path, "w", libver=LIBVER) as f:
        # (an extensible dataset, like /spins: h5py cannot read back HDF5's single-chunk index)
        d = f.create_dataset("x", data=values, chunks=values.shape, scaleoffset=0,
                             maxshape=(None,) + values.shape[1:])
        mask, raw = d.id.read_direct_chunk((0,) * values.ndim)
    assert mask == 0
    return raw


def ours(values):
    dst = np.zeros(encoded_nbytes(values.size), np.uint8)
    assert encode_scaleoffset_int8(values.reshape(-1), dst) == dst.size
    return bytes(dst)


@pytest.mark.parametrize("n", [4, 8, 7, 128, 1024 * 16, chunk_samples(6) * 36,
                               chunk_samples(64) * 64 * 64])
def test_encoder_matches_hdf5_byte_for_byte(tmp_path, n):
    rng = np.random.default_rng(n)
    values = random_spins(rng, n)
    values[:2] = [-1, 1]  # both values present: HDF5 picks minbits=2 as we do
    raw = hdf5_encoded(tmp_path / "ref.h5", values)
    assert len(raw) == encoded_nbytes(n) == 21 + n * 2 // 8 + 1
    assert ours(values) == raw


def write_and_read_one_chunk(path, values):
    """Write our encoding of ``values`` as the only chunk of a scale-offset dataset; read the
    dataset back through HDF5's decoder."""
    with h5py.File(path, "w", libver=LIBVER) as f:
        d = f.create_dataset("spins", shape=values.shape, dtype=np.int8, chunks=values.shape,
                             scaleoffset=0)
        d.id.write_direct_chunk((0, 0, 0, 0), ours(values), filter_mask=0)
    with h5py.File(path, "r") as f:
        return f["spins"][()]


@pytest.mark.parametrize("value", [1, -1])
def test_uniform_chunks_read_back(tmp_path, value):
    """HDF5 would store a one-valued chunk with minbits=1; our minbits=2 chunk reads the same."""
    L, cs = 4, 8
    values = np.full((1, cs, L, L), value, np.int8)
    assert ours(values) != hdf5_encoded(tmp_path / "ref.h5", values)
    assert np.array_equal(write_and_read_one_chunk(tmp_path / "uniform.h5", values), values)


def test_padding_value_zero_reads_back_as_unwritten(tmp_path):
    values = random_spins(np.random.default_rng(0), (1, 8, 2, 2))
    values[0, 5:] = 0
    assert np.array_equal(write_and_read_one_chunk(tmp_path / "pad.h5", values), values)
