"""Is a shared library whole? Its ELF headers, read far enough to tell before the dynamic loader maps it.

``dlopen`` maps each loadable segment of a library from the file; a segment
that reaches past the end of a truncated file is mapped anyway, and the first
touch of a page beyond the end kills the process with SIGBUS — not an
exception anyone can catch. ``intvit.runtime.load`` checks a module's SHA-256
against its sidecar, which catches damage; this check catches what a forged
or re-signed sidecar lets through, and tells *why* a library is unusable.

ELF-64, little endian (every target intvit builds for: x86-64, AArch64):

* file header, 64 bytes: ``e_ident[16]`` (``\\x7fELF``, class 2 = 64-bit, data 1 =
  little endian), then ``e_type, e_machine`` (H), ``e_version`` (I), ``e_entry,
  e_phoff, e_shoff`` (Q), ``e_flags`` (I), ``e_ehsize, e_phentsize, e_phnum,
  e_shentsize, e_shnum, e_shstrndx`` (H);
* program header, 56 bytes each: ``p_type, p_flags`` (I), ``p_offset, p_vaddr,
  p_paddr, p_filesz, p_memsz, p_align`` (Q); the file must hold
  ``[p_offset, p_offset + p_filesz)`` of every segment;
* section header, 64 bytes each: ``sh_name, sh_type`` (I), ``sh_flags,
  sh_addr, sh_offset, sh_size`` (Q), ``sh_link, sh_info`` (I), ``sh_addralign,
  sh_entsize`` (Q); every section but ``SHT_NOBITS`` (8: ``.bss``) must lie in
  the file.
"""
from __future__ import annotations

import os
import struct

_FILE_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
_SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")
_SHARED_OBJECT = 3          # e_type ET_DYN
_SECTION_NOBITS = 8


class DamagedLibraryError(ValueError):
    """The file is not a whole ELF-64 little-endian shared library; the message says what is wrong."""


def check_library_whole(path) -> None:
    """Raise ``DamagedLibraryError`` unless every segment and section the ELF headers of ``path`` name lies
    inside the file (the headers themselves included)."""
    with open(os.fspath(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size

        def read(offset: int, count: int, what: str) -> bytes:
            if offset + count > size:
                raise DamagedLibraryError(f"it is truncated: its {what} ends at byte {offset + count} of a file "
                                          f"of {size} bytes")
            f.seek(offset)
            return f.read(count)

        if size < _FILE_HEADER.size:
            raise DamagedLibraryError(f"it has {size} bytes, fewer than an ELF header's {_FILE_HEADER.size}")
        (ident, e_type, _machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
         shentsize, shnum, _shstrndx) = _FILE_HEADER.unpack(read(0, _FILE_HEADER.size, "ELF header"))
        if ident[:4] != b"\x7fELF":
            raise DamagedLibraryError("it has no ELF header")
        if ident[4] != 2 or ident[5] != 1:
            raise DamagedLibraryError("it is not a 64-bit little-endian ELF file")
        if e_type != _SHARED_OBJECT:
            raise DamagedLibraryError(f"it is an ELF file of type {e_type}, not a shared library (type 3)")
        if (phnum and phentsize != _PROGRAM_HEADER.size) or (shnum and shentsize != _SECTION_HEADER.size):
            raise DamagedLibraryError("its ELF header gives impossible header entry sizes")
        table = read(phoff, phnum * phentsize, "program header table")
        for i in range(phnum):
            _type, _flags, offset, _vaddr, _paddr, filesz, _memsz, _align = _PROGRAM_HEADER.unpack_from(
                table, i * phentsize)
            if offset + filesz > size:
                raise DamagedLibraryError(f"it is truncated: its segment {i} ends at byte {offset + filesz} of a "
                                          f"file of {size} bytes")
        table = read(shoff, shnum * shentsize, "section header table")
        for i in range(shnum):
            fields = _SECTION_HEADER.unpack_from(table, i * shentsize)
            sh_type, offset, length = fields[1], fields[4], fields[5]
            if sh_type != _SECTION_NOBITS and offset + length > size:
                raise DamagedLibraryError(f"it is truncated: its section {i} ends at byte {offset + length} of a "
                                          f"file of {size} bytes")


_SYMBOL = struct.Struct("<IBBHQQ")      # st_name, st_info, st_other, st_shndx, st_value, st_size
_SECTION_SYMTAB, _SYMBOL_FUNC = 2, 2


def function_symbols(path) -> list[tuple[int, int, str]]:
    """``(address, size, name)`` of every function in the symbol table (``.symtab``, the local functions
    included) of the ELF-64 little-endian library ``path``, by address; ``[]`` for a stripped library.
    Its headers are checked whole first (``check_library_whole``)."""
    check_library_whole(path)
    with open(os.fspath(path), "rb") as f:
        data = f.read()
    shoff, shentsize, shnum = (_FILE_HEADER.unpack_from(data)[i] for i in (6, 11, 12))
    sections = [_SECTION_HEADER.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    found = []
    for sh in sections:
        if sh[1] != _SECTION_SYMTAB:
            continue
        strings = sections[sh[6]]                   # sh_link: the symbol names' string table
        names = data[strings[4]:strings[4] + strings[5]]
        for offset in range(sh[4], sh[4] + sh[5], _SYMBOL.size):
            name, info, _other, shndx, value, size = _SYMBOL.unpack_from(data, offset)
            if info & 0xF == _SYMBOL_FUNC and shndx != 0 and value:
                found.append((value, size, names[name:names.index(b"\0", name)].decode("utf-8", "replace")))
    return sorted(found)
