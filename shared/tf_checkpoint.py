"""Read a TensorFlow checkpoint into numpy arrays without TensorFlow.

    arrays = load_variables("gpt2/124M/model.ckpt")       # {"model/wte": array, ...}
    list_variables("gpt2/124M/model.ckpt")                 # [("model/h0/attn/c_attn/b", [2304]), ...]

Why a reader of our own: OpenAI published GPT-2 as a TensorFlow checkpoint, and TensorFlow is a large
install with no wheel on some platforms and new Pythons. The one package on PyPI that promises to read
checkpoints without it (tensorflow-checkpoint-reader) has had a single release, in 2023, calls itself "in
development", and vendors TensorFlow's .proto files. The format is small enough to read here in a
few short functions, and the tests check this reader against TensorFlow's own (tf.train.load_variable).

A checkpoint `PREFIX` (e.g. model.ckpt) is a "tensor bundle" of two kinds of files:

* `PREFIX.index`: a sorted string table (LevelDB's table format, TensorFlow's core/lib/io/table). It maps
  each tensor's name to a BundleEntryProto: dtype, shape, which data file, byte offset and size, and a
  crc32c checksum of the bytes. The empty key holds a BundleHeaderProto (number of data files, byte order).
* `PREFIX.data-00000-of-00001` (one file per shard): the tensors' raw bytes, C order, back to back.

The table file is

    data block 0 | data block 1 | ... | metaindex block | index block | footer (48 bytes)

where every block is followed by a 5-byte trailer (1 byte compression type, 0 = none, which is what
TensorFlow writes for bundles; then the masked crc32c of the block and that byte). The footer holds two
block handles (varint offset, varint size), zero-padded to 40 bytes, then an 8-byte magic number. The
index block maps the last key of each data block to that block's handle. Inside a block, entries are

    varint shared | varint non_shared | varint value_length | key[shared:] | value

(each key shares `shared` leading bytes with the previous key), then the restart offsets (uint32 each)
and their count (uint32), which a sequential reader can skip. Protocol buffers are decoded by hand
below: four wire types and the handful of fields a bundle uses, instead of TensorFlow's .proto files.
"""
import struct
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
CRC_MASK_DELTA = 0xA282EAD8

# TensorFlow's DataType enum (types.proto) -> numpy, for the numeric types a bundle stores as raw bytes.
NUMPY_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 8: "<c8", 9: "<i8", 10: "?",
                17: "<u2", 18: "<c16", 19: "<f2", 22: "<u4", 23: "<u8"}


class CheckpointFileError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not a tensor bundle; `path` names it."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


class TensorEntry(NamedTuple):
    dtype: int          # TensorFlow DataType number
    shape: tuple
    shard: int          # which data file
    offset: int         # first byte in that file
    size: int           # number of bytes
    crc32c: int | None  # masked crc32c of the bytes, as TensorFlow stores it


# ---------------------------------------------------------------------------------------------
# Checksums: TensorFlow (like LevelDB, where the table format comes from) stores each crc32c
# "masked", rotated right by 15 bits plus a constant, because the crc of bytes that embed their own
# crcs is prone to accidental matches.
# ---------------------------------------------------------------------------------------------

def _crc32c_function():
    """google-crc32c's crc32c (hardware accelerated), or None with a warning when not installed."""
    try:
        import google_crc32c
    except ImportError:
        warnings.warn("google-crc32c is not installed, so checkpoint checksums are not verified "
                      "(pip install google-crc32c)", stacklevel=3)
        return None
    return google_crc32c.value


def masked_crc32c(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + CRC_MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Protocol buffers, by hand
# ---------------------------------------------------------------------------------------------

def _varint(buf, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at buf[pos]: 7 bits per byte, low bits first, high bit = more."""
    value = shift = 0
    while True:
        byte = buf[pos]  # IndexError past the end: the caller reports a damaged file
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf) -> dict[int, list]:
    """{field number: [values]} of a serialised protobuf message (varints, fixed, bytes)."""
    fields, pos = {}, 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _varint(buf, pos)
        elif wire_type == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire_type == 2:
            length, pos = _varint(buf, pos)
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire_type == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unknown protobuf wire type {wire_type}")
        if pos > len(buf):
            raise ValueError("protobuf field runs past the end of its message")
        fields.setdefault(number, []).append(value)
    return fields


def _shape(tensor_shape_proto: bytes) -> tuple:
    """TensorShapeProto: repeated Dim dim = 2 (int64 size = 1)."""
    dims = _fields(tensor_shape_proto).get(2, [])
    return tuple(_fields(dim).get(1, [0])[0] for dim in dims)


def _entry(value: bytes) -> TensorEntry:
    """BundleEntryProto: dtype 1, shape 2, shard_id 3, offset 4, size 5, crc32c 6, slices 7."""
    f = _fields(value)
    if 7 in f:
        raise ValueError("partitioned (sliced) variables are not supported")
    return TensorEntry(dtype=f.get(1, [0])[0], shape=_shape(f.get(2, [b""])[0]),
                       shard=f.get(3, [0])[0], offset=f.get(4, [0])[0], size=f.get(5, [0])[0],
                       crc32c=f.get(6, [None])[0])


# ---------------------------------------------------------------------------------------------
# The sorted string table
# ---------------------------------------------------------------------------------------------

def _block(table: bytes, handle: bytes, crc32c) -> bytes:
    """The contents of the block a BlockHandle (varint offset, varint size) points to, checked."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + 5 > len(table):
        raise ValueError(f"a block at bytes {offset}..{offset + size + 5} lies past the end")
    contents, kind = table[offset:offset + size], table[offset + size]
    stored = struct.unpack_from("<I", table, offset + size + 1)[0]
    if crc32c and masked_crc32c(crc32c(contents + bytes([kind]))) != stored:
        raise ValueError(f"checksum mismatch in the block at byte {offset}")
    if kind != 0:
        raise ValueError(f"block compression type {kind} (TensorFlow writes bundles uncompressed)")
    return contents


def _block_items(block: bytes):
    """Yield (key, value) of every entry in a block, undoing the key prefix compression."""
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 * (num_restarts + 1)  # the entries stop where the restart array starts
    if end < 0:
        raise ValueError("block restart array larger than the block")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_length, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_length > end:
            raise ValueError("block entry runs past the end of its block")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + value_length]
        pos += value_length


def _table_items(table: bytes, crc32c):
    """Yield (key, value) of every entry of a table file, in key order."""
    if len(table) < FOOTER_BYTES:
        raise ValueError(f"{len(table)} bytes, shorter than the {FOOTER_BYTES}-byte footer")
    footer = table[-FOOTER_BYTES:]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise ValueError("not a TensorFlow table (bad magic number at the end)")
    _, pos = _varint(footer, 0)            # skip the metaindex handle's offset ...
    _, pos = _varint(footer, pos)          # ... and size: bundles keep nothing in it
    index_handle = footer[pos:40]
    for _, data_handle in _block_items(_block(table, index_handle, crc32c)):
        yield from _block_items(_block(table, data_handle, crc32c))


def read_index(prefix, crc32c=None) -> tuple[int, dict[str, TensorEntry]]:
    """(number of data files, {tensor name: TensorEntry}) from PREFIX.index."""
    path = Path(f"{prefix}.index")
    try:
        table = path.read_bytes()
    except OSError as err:
        raise CheckpointFileError(path, err.strerror or err) from err
    try:
        entries, num_shards = {}, None
        for key, value in _table_items(table, crc32c):
            if key == b"":  # BundleHeaderProto: num_shards 1, endianness 2 (0 = little)
                header = _fields(value)
                num_shards = header.get(1, [0])[0]
                if header.get(2, [0])[0] != 0:
                    raise ValueError("big-endian checkpoints are not supported")
            else:
                entries[key.decode("utf-8")] = _entry(value)
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as err:
        raise CheckpointFileError(path, f"damaged index ({err})") from err
    if num_shards is None:
        raise CheckpointFileError(path, "damaged index (no bundle header)")
    return num_shards, entries


# ---------------------------------------------------------------------------------------------
# The tensors
# ---------------------------------------------------------------------------------------------

def data_path(prefix, shard: int, num_shards: int) -> Path:
    return Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")


def list_variables(prefix) -> list[tuple[str, list[int]]]:
    """[(name, shape)] in name order, as tf.train.list_variables gives them."""
    _, entries = read_index(prefix)
    return [(name, list(entry.shape)) for name, entry in sorted(entries.items())]


def load_variables(prefix, names=None, verify: bool = True) -> dict[str, np.ndarray]:
    """{name: numpy array} for `names` (default: every tensor) of checkpoint PREFIX.

    With verify (and google-crc32c installed) every tensor's bytes are checked against the stored
    crc32c, as TensorFlow does. Raises CheckpointFileError naming the file that is at fault.
    """
    crc32c = _crc32c_function() if verify else None
    num_shards, entries = read_index(prefix, crc32c)
    index = Path(f"{prefix}.index")
    names = sorted(entries) if names is None else list(names)
    for name in names:
        if name not in entries:
            raise CheckpointFileError(index, f"it lists no tensor {name!r}")
        if entries[name].shard >= num_shards:
            raise CheckpointFileError(index, f"damaged index ({name} in data file "
                                             f"{entries[name].shard} of {num_shards})")
    arrays, files = {}, {}
    try:
        # In file order, so that a large checkpoint is read front to back.
        for name in sorted(names, key=lambda n: (entries[n].shard, entries[n].offset)):
            entry = entries[name]
            if entry.shard not in files:
                path = data_path(prefix, entry.shard, num_shards)
                try:
                    files[entry.shard] = (path, open(path, "rb"), path.stat().st_size)
                except OSError as err:
                    raise CheckpointFileError(path, err.strerror or err) from err
            arrays[name] = _read_tensor(name, entry, *files[entry.shard], index, crc32c)
    finally:
        for _, f, _ in files.values():
            f.close()
    return {name: arrays[name] for name in names}


def _read_tensor(name, entry: TensorEntry, path: Path, f, file_size: int, index: Path,
                 crc32c) -> np.ndarray:
    if entry.dtype not in NUMPY_DTYPES:
        raise CheckpointFileError(index, f"{name} has TensorFlow dtype {entry.dtype}, "
                                         "which this reader does not support")
    dtype = np.dtype(NUMPY_DTYPES[entry.dtype])
    if entry.size != dtype.itemsize * int(np.prod(entry.shape)):
        raise CheckpointFileError(index, f"damaged index ({name}: {entry.size} bytes do not "
                                         f"hold shape {entry.shape} of {dtype})")
    end = entry.offset + entry.size
    if end > file_size:
        raise CheckpointFileError(path, f"truncated: it has {file_size} bytes, but {name} "
                                        f"is stored at bytes {entry.offset}..{end}")
    buffer = np.empty(entry.size, dtype=np.uint8)  # a writable array: torch can share it
    f.seek(entry.offset)
    if f.readinto(buffer) != entry.size:
        raise CheckpointFileError(path, f"truncated while reading {name}")
    if crc32c and entry.crc32c is not None and masked_crc32c(crc32c(buffer)) != entry.crc32c:
        raise CheckpointFileError(path, f"corrupted: the bytes of {name} (at {entry.offset}..{end}) "
                                        "do not match their stored checksum")
    return buffer.view(dtype).reshape(entry.shape)
