"""Validation of submitted modules and of task calls, without running any code.

wasmtime validates and compiles the bytes. The exports, imports and signatures
are then read from the binary's sections by a small reader in this module,
because wasmtime-py 51's type accessors abort the whole process on a v128 type
(the C API panics with "support for v128 is not implemented").
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import wasmtime

from rainchanel.errors import InvalidArguments, InvalidModule, UnknownFunction
from rainchanel.wasm.values import NUMERIC_TYPES, to_wasm_values

WASI_MODULE = "wasi_snapshot_preview1"

WASM_PAGE_BYTES = 64 * 1024

# The entry point of a WASI command, called with argv instead of typed values.
WASI_COMMAND_ENTRY = "_start"

# Value type bytes of the WebAssembly binary format.
_VALUE_TYPES = {
    0x7F: "i32",
    0x7E: "i64",
    0x7D: "f32",
    0x7C: "f64",
    0x7B: "v128",
    0x70: "funcref",
    0x6F: "externref",
}

_SECTION_TYPE = 1
_SECTION_IMPORT = 2
_SECTION_FUNCTION = 3
_SECTION_MEMORY = 5
_SECTION_EXPORT = 7

_KIND_FUNCTION = 0
_KIND_NAMES = {0: "function", 1: "table", 2: "memory", 3: "global", 4: "tag"}


@dataclass(frozen=True)
class FunctionSignature:
    """Parameter and result types of a function, by their wasm text names."""

    params: tuple[str, ...]
    results: tuple[str, ...]


@dataclass(frozen=True)
class ModuleInfo:
    """Exports, imports and memory of a module, as the server needs them to accept tasks."""

    functions: Mapping[str, FunctionSignature]  # exported functions by export name
    imports: tuple[str, ...]  # "module.name" of every import
    is_wasi: bool  # imports anything from wasi_snapshot_preview1
    min_memory_bytes: int | None  # declared minimum of the module's own memory


def configure_features(config: wasmtime.Config) -> None:
    """Turn off the proposals whose binary encodings the section reader does not parse.

    Both the validating engine and the workers' engines use this, so a module
    the server accepts is one every worker can compile.
    """
    config.wasm_gc = False
    config.wasm_function_references = False
    config.wasm_exceptions = False
    config.wasm_stack_switching = False
    config.wasm_custom_page_sizes = False
    config.wasm_threads = False
    config.wasm_memory64 = False
    config.wasm_multi_memory = False


def new_validation_engine() -> wasmtime.Engine:
    """Create an Engine for validating and compiling modules, never for running them."""
    config = wasmtime.Config()
    config.strategy = "cranelift"
    configure_features(config)
    return wasmtime.Engine(config)


def inspect_module(engine: wasmtime.Engine, module_bytes: bytes) -> ModuleInfo:
    """Validate and compile a module and describe its exports, imports and memory.

    Raises InvalidModule for bytes that are not a valid module and for any
    import a worker does not provide: only functions from
    wasi_snapshot_preview1 are allowed. Safe to call from several threads.
    """
    _module, info = compile_module(engine, module_bytes)
    return info


def compile_module(engine: wasmtime.Engine, module_bytes: bytes) -> tuple[wasmtime.Module, ModuleInfo]:
    """Compile a module for engine and describe it, with the checks of inspect_module."""
    if not isinstance(module_bytes, (bytes, bytearray)) or module_bytes[:4] != b"\0asm":
        # wasmtime.Module would parse bytes that do not start with a NUL byte as WAT text.
        raise InvalidModule(
            "not a WebAssembly module: the bytes do not start with the \\0asm magic number; "
            "submit a compiled .wasm binary"
        )
    module_bytes = bytes(module_bytes)
    try:
        module = wasmtime.Module(engine, module_bytes)
    except wasmtime.WasmtimeError as exc:
        raise InvalidModule(f"not a WebAssembly module: {_validator_reason(str(exc))}") from exc

    info, import_kinds = _read_module(module_bytes)
    _check_imports(info.imports, import_kinds)
    return module, info


def read_module_info(module_bytes: bytes) -> ModuleInfo:
    """Read exports, imports and memory from a module that wasmtime has validated.

    Raises InvalidModule for a type encoding outside the features enabled by
    configure_features.
    """
    info, _import_kinds = _read_module(module_bytes)
    return info


def _read_module(module_bytes: bytes) -> tuple[ModuleInfo, list[str]]:
    """Return the module's description and the kind of each of its imports."""
    sections = _read_sections(module_bytes)
    types = _read_types(sections.get(_SECTION_TYPE))
    imports, imported_function_types = _read_imports(sections.get(_SECTION_IMPORT))
    function_types = imported_function_types + _read_function_type_indices(sections.get(_SECTION_FUNCTION))

    functions: dict[str, FunctionSignature] = {}
    for name, kind, index in _read_exports(sections.get(_SECTION_EXPORT)):
        if kind == _KIND_FUNCTION:
            functions[name] = types[function_types[index]]

    info = ModuleInfo(
        functions=MappingProxyType(functions),
        imports=tuple(f"{module}.{name}" for module, name, _kind in imports),
        is_wasi=any(module == WASI_MODULE for module, _name, _kind in imports),
        min_memory_bytes=_read_min_memory_bytes(sections.get(_SECTION_MEMORY)),
    )
    return info, [kind for _module, _name, kind in imports]


def check_call(info: ModuleInfo, func: str, args: object) -> list:
    """Check that func is callable with args and return the args to store.

    Raises UnknownFunction when func is not an exported function and
    InvalidArguments when the arguments do not match its signature. For a WASI
    command's "_start", args is the argv after the program name: a list of strings.
    """
    signature = info.functions.get(func) if isinstance(func, str) else None
    if signature is None:
        exported = ", ".join(sorted(info.functions)) or "none"
        raise UnknownFunction(
            f"unknown function {func!r}: the module exports no function of that name; exported functions: {exported}"
        )

    if func == WASI_COMMAND_ENTRY and info.is_wasi:
        return _check_command_args(signature, args)

    unsupported = [t for t in signature.params + signature.results if t not in NUMERIC_TYPES]
    if unsupported:
        raise InvalidArguments(
            f"function {func!r} cannot be called: its signature ({_format_signature(signature)}) "
            f"uses {', '.join(sorted(set(unsupported)))}; only i32, i64, f32 and f64 parameters "
            "and results can be passed as JSON"
        )
    to_wasm_values(signature.params, args)  # raises InvalidArguments
    return list(args)


def _check_command_args(signature: FunctionSignature, args: object) -> list:
    if signature.params or signature.results:
        raise InvalidArguments(
            f"function '_start' cannot be called as a WASI command: its type is "
            f"{_format_signature(signature)}, expected () -> ()"
        )
    if not isinstance(args, list):
        raise InvalidArguments(
            f"invalid args {args!r}: a WASI command takes a JSON array of strings (argv after the program name)"
        )
    for index, value in enumerate(args):
        if not isinstance(value, str):
            raise InvalidArguments(
                f"invalid argument {index}: a WASI command argument must be a string, got {value!r}"
            )
        if "\0" in value:
            raise InvalidArguments(f"invalid argument {index}: {value!r} contains a NUL character")
    return list(args)


def _check_imports(imports: tuple[str, ...], kinds: list[str]) -> None:
    unsupported = []
    for name, kind in zip(imports, kinds):
        if kind != "function":
            unsupported.append(f"{name} ({kind})")
        elif not name.startswith(WASI_MODULE + "."):
            unsupported.append(name)
    if unsupported:
        raise InvalidModule(
            f"unsupported imports: {', '.join(unsupported)}; workers provide only functions from "
            f"{WASI_MODULE}, so define these in the module or remove them"
        )


def _format_signature(signature: FunctionSignature) -> str:
    return f"({', '.join(signature.params)}) -> ({', '.join(signature.results)})"


def _validator_reason(message: str) -> str:
    """Flatten wasmtime's multi-line error chain into one line."""
    parts = []
    for line in message.splitlines():
        line = " ".join(line.split())
        if not line or line == "Caused by:":
            continue
        parts.append(re.sub(r"^[0-9]+: ", "", line))
    return ": ".join(parts) or "unknown error"


class _Reader:
    """Cursor over a byte string with the binary format's LEB128 decoding."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def at_end(self) -> bool:
        return self.position >= len(self.data)

    def byte(self) -> int:
        value = self.data[self.position]
        self.position += 1
        return value

    def unsigned(self) -> int:
        result = 0
        shift = 0
        while True:
            value = self.byte()
            result |= (value & 0x7F) << shift
            shift += 7
            if value < 0x80:
                return result

    def name(self) -> str:
        length = self.unsigned()
        raw = self.data[self.position : self.position + length]
        self.position += length
        return raw.decode("utf-8")

    def value_type(self) -> str:
        code = self.byte()
        if code not in _VALUE_TYPES:
            raise InvalidModule(
                f"unsupported module: value type 0x{code:02x} is not supported by RainChanel workers"
            )
        return _VALUE_TYPES[code]

    def limits(self) -> tuple[int, int | None]:
        flags = self.byte()
        minimum = self.unsigned()
        maximum = self.unsigned() if flags & 0x01 else None
        return minimum, maximum


def _read_sections(module_bytes: bytes) -> dict[int, bytes]:
    reader = _Reader(module_bytes)
    reader.position = 8  # magic number and version
    sections: dict[int, bytes] = {}
    while not reader.at_end():
        section_id = reader.byte()
        size = reader.unsigned()
        sections[section_id] = module_bytes[reader.position : reader.position + size]
        reader.position += size
    return sections


def _read_types(section: bytes | None) -> list[FunctionSignature]:
    if section is None:
        return []
    reader = _Reader(section)
    types = []
    for _ in range(reader.unsigned()):
        form = reader.byte()
        if form != 0x60:
            raise InvalidModule(f"unsupported module: type form 0x{form:02x} is not a plain function type")
        params = tuple(reader.value_type() for _ in range(reader.unsigned()))
        results = tuple(reader.value_type() for _ in range(reader.unsigned()))
        types.append(FunctionSignature(params=params, results=results))
    return types


def _read_imports(section: bytes | None) -> tuple[list[tuple[str, str, str]], list[int]]:
    """Return (module, name, kind) per import and the type index of each imported function."""
    if section is None:
        return [], []
    reader = _Reader(section)
    imports = []
    function_types = []
    for _ in range(reader.unsigned()):
        module = reader.name()
        name = reader.name()
        kind = reader.byte()
        if kind == _KIND_FUNCTION:
            function_types.append(reader.unsigned())
        elif kind == 1:  # table: element type and limits
            reader.value_type()
            reader.limits()
        elif kind == 2:  # memory
            reader.limits()
        elif kind == 3:  # global: value type and mutability
            reader.value_type()
            reader.byte()
        else:
            raise InvalidModule(f"unsupported module: import {module}.{name} has unsupported kind {kind}")
        imports.append((module, name, _KIND_NAMES[kind]))
    return imports, function_types


def _read_function_type_indices(section: bytes | None) -> list[int]:
    if section is None:
        return []
    reader = _Reader(section)
    return [reader.unsigned() for _ in range(reader.unsigned())]


def _read_exports(section: bytes | None) -> list[tuple[str, int, int]]:
    if section is None:
        return []
    reader = _Reader(section)
    exports = []
    for _ in range(reader.unsigned()):
        name = reader.name()
        kind = reader.byte()
        index = reader.unsigned()
        exports.append((name, kind, index))
    return exports


def _read_min_memory_bytes(section: bytes | None) -> int | None:
    if section is None:
        return None
    reader = _Reader(section)
    if reader.unsigned() == 0:
        return None
    minimum_pages, _maximum_pages = reader.limits()
    return minimum_pages * WASM_PAGE_BYTES
