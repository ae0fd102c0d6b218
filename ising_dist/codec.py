"""Spin packing and HDF5's scale-offset encoding of int8 spins: the bytes of /spins.

Packing: two bits a spin, code s + 1 (0 for -1, 2 for +1, 1 for 0: "no sample" in a partly
filled chunk), four spins a byte, the first in the most significant bits. This is the body of
HDF5's scale-offset encoding of int8 spins at minbits=2, minval=-1 (HDF5 source
``H5Zscaleoffset.c``, ``H5Z__scaleoffset_compress``): the tempering loops capture samples
packed (:mod:`ising_dist.kernels`), a quarter of the bytes to copy, gather and write, and the
writers put them into /spins chunks as they are (:mod:`ising_dist.writers`). L is even, so
L·L/4 is whole.

A scale-offset chunk of n int8 values at minbits=2 is a 21-byte header (minbits uint32,
sizeof(minval) = 8 as one byte, minval int64 = -1 little-endian, zeros), the packed values,
and one spare zero byte HDF5 adds (:func:`encoded_nbytes`).
"""

import numpy as np
from numba import njit

SO_HEADER = 21  # scale-offset chunk header: minbits u32, sizeof(minval)=8, minval i64, zeros
PAD_CODE = 0x55  # four packed spins of value 0: "not yet written" (the fill value)


@njit(inline="always")
def _pack(src, dst):
    """src int8 [4n] (values -1, 0, 1) → dst uint8 [n]."""
    for j in range(dst.size):
        i = 4 * j
        dst[j] = (((src[i] + 1) << 6) | ((src[i + 1] + 1) << 4) | ((src[i + 2] + 1) << 2)
                  | (src[i + 3] + 1))


@njit(nogil=True, cache=True)
def pack_spins(spins, packed):
    """Pack C-contiguous int8 spins [..., L, L] into uint8 packed [..., L·L/4]."""
    _pack(spins.reshape(spins.size), packed.reshape(packed.size))


def pack(spins):
    """int8 spins [..., L, L] (values -1, 0, 1) → a new uint8 array [..., L·L/4] of them
    packed (:func:`pack_spins`); L·L must be a multiple of 4."""
    spins = np.ascontiguousarray(spins, np.int8)
    packed = np.empty(spins.shape[:-2] + (spins.shape[-2] * spins.shape[-1] // 4,), np.uint8)
    pack_spins(spins, packed)
    return packed


@njit(nogil=True, cache=True)
def unpack_spins(packed, spins):
    """The inverse of :func:`pack_spins`: uint8 packed [..., L·L/4] → int8 spins [..., L, L]."""
    src = packed.reshape(packed.size)
    dst = spins.reshape(spins.size)
    for j in range(src.size):
        b = src[j]
        i = 4 * j
        dst[i] = ((b >> 6) & 3) - 1
        dst[i + 1] = ((b >> 4) & 3) - 1
        dst[i + 2] = ((b >> 2) & 3) - 1
        dst[i + 3] = (b & 3) - 1


def encoded_nbytes(n):
    """Bytes of a scale-offset chunk of n int8 values at minbits=2 (HDF5 adds one spare byte)."""
    return SO_HEADER + n * 2 // 8 + 1


@njit(inline="always")
def _so_header(dst):
    """The header of a scale-offset chunk of int8 at minbits=2, minval=-1; zeros up to the
    packed values."""
    dst[0] = 2
    dst[1] = 0
    dst[2] = 0
    dst[3] = 0
    dst[4] = 8
    for i in range(5, 13):
        dst[i] = 0xFF                     # minval = -1 as little-endian int64
    for i in range(13, SO_HEADER):
        dst[i] = 0


@njit(nogil=True, cache=True)
def encode_scaleoffset_int8(src, dst):
    """HDF5's scale-offset filter (scaleoffset=0 on int8) applied to ``src`` (int8 values in
    {-1, 0, 1}, 1-d) into ``dst`` (uint8, ``encoded_nbytes(src.size)`` long), with minbits=2
    and minval=-1: a 21-byte header, then the values packed as :func:`pack_spins` does (v + 1,
    2 bits each, most significant bits first), then one zero byte. HDF5 decodes it like its
    own output (for a chunk of one value it would pick minbits=1; minbits=2 reads back the
    same). Returns the bytes written."""
    n = src.size
    nbytes = SO_HEADER + n * 2 // 8 + 1
    _so_header(dst)
    q = n // 4
    _pack(src[:4 * q], dst[SO_HEADER:SO_HEADER + q])
    b = 0
    for i in range(4 * q, n):             # a last partial byte (n not a multiple of 4)
        b |= ((src[i] + 1) & 3) << (6 - 2 * (i - 4 * q))
    for i in range(SO_HEADER + q, nbytes):
        dst[i] = 0
    if n > 4 * q:
        dst[SO_HEADER + q] = b
    return nbytes


@njit(nogil=True, cache=True)
def new_chunk_row(R, cs, B):
    """uint8 [R, encoded_nbytes(4·cs·B)]: a row of R encoded chunks of cs packed samples
    (B bytes each), all "not yet written" (PAD_CODE)."""
    row = np.full((R, SO_HEADER + cs * B + 1), PAD_CODE, np.uint8)
    for r in range(R):
        _so_header(row[r])
        row[r, -1] = 0
    return row
