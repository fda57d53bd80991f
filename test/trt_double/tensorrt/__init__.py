"""Test double of TensorRT 10's Python API, executing the ONNX graph with onnxruntime.

It covers the surface ``mobius build-engine`` and the tensorrt backend use, with the checks
the real library makes where a mistake would otherwise pass unnoticed:

* ``IOptimizationProfile.set_shape`` needs min <= opt <= max of one rank; the build refuses
  (returns None and logs an error) a network with dynamic inputs but no profile, a profile
  that leaves a dynamic input unset, names an unknown input or contradicts a fixed dimension,
  and DLA cores the device does not have (none here).
* An engine records the profiles; ``get_tensor_shape`` gives -1 for dynamic dims,
  ``get_tensor_profile_shape`` the (min, opt, max) shapes.
* ``IExecutionContext.set_input_shape`` returns False for a shape outside the profile (wrong
  rank, a fixed dim changed, a dim out of range); ``execute_async_v3`` returns False while any
  input shape is unset, an input address is missing or does not hold the input's bytes on the
  device, an output has neither an allocator nor an address, or the stream does not exist.
  Otherwise it is queued on the stream: it reads its inputs from device memory, runs the
  graph, asks each output's ``IOutputAllocator`` for memory (``reallocate_output_async``),
  writes the result and calls ``notify_shape`` when the stream is synchronised.
* Serialised engines carry the TensorRT version; another version does not deserialize.
* INT8 calibration asks the calibrator for batches of the calibration profile's opt shapes
  and checks that each pointer holds that many bytes on the device.
"""

from __future__ import annotations

import enum
import json
import struct
from pathlib import Path

import _mobius_fake_gpu as gpu
import numpy as np

__version__ = "10.99.0+double"
_MAGIC = b"MOBIUS-TRT-DOUBLE\0"

errors: list[str] = []  # every error any logger saw (tests read it)


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32,
               9: DataType.BOOL, 2: DataType.UINT8, 7: DataType.INT64}  # fmt: skip
_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
          DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8,
          DataType.INT64: np.int64}  # fmt: skip


def nptype(dtype: DataType):
    return _NUMPY[dtype]


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4


class BuilderFlag(enum.Enum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 5
    DISABLE_TIMING_CACHE = 6
    TF32 = 7
    OBEY_PRECISION_CONSTRAINTS = 10
    PREFER_PRECISION_CONSTRAINTS = 11
    BF16 = 17


class DeviceType(enum.Enum):
    GPU = 0
    DLA = 1


class NetworkDefinitionCreationFlag(enum.Enum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class Dims(tuple):
    """A shape (TensorRT's Dims: a sequence of ints, -1 for a dynamic one)."""

    def __new__(cls, values=()):
        return super().__new__(cls, (int(v) for v in values))


class Logger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def __init__(self, min_severity: Logger.Severity = Severity.WARNING) -> None:
        self.min_severity = min_severity
        self.messages: list[tuple[Logger.Severity, str]] = []

    def log(self, severity: Logger.Severity, msg: str) -> None:
        self.messages.append((severity, msg))
        if severity <= Logger.ERROR:
            errors.append(msg)


class IHostMemory:
    """Serialised bytes (``bytes(m)``, ``m.nbytes``)."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)

    def __len__(self) -> int:
        return len(self._data)


class ITensor:
    def __init__(self, name: str, dtype: DataType, shape: Dims) -> None:
        self.name, self.dtype, self.shape = name, dtype, shape


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._onnx: bytes | None = None

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, i: int) -> ITensor:
        return self._inputs[i]

    def get_output(self, i: int) -> ITensor:
        return self._outputs[i]


class _ParserError:
    def __init__(self, desc: str) -> None:
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return self._desc


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        if not isinstance(network, INetworkDefinition) or not isinstance(logger, Logger):
            raise TypeError("OnnxParser(network, logger)")
        self.network, self.logger = network, logger
        self._errors: list[_ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> _ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors.clear()

    def parse_from_file(self, model: str) -> bool:
        try:
            data = Path(model).read_bytes()
        except OSError as exc:
            self._errors.append(_ParserError(f"cannot read {model}: {exc}"))
            return False
        return self.parse(data)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx

        try:
            proto = onnx.load_model_from_string(bytes(model))
            onnx.checker.check_model(proto)
        except Exception as exc:  # onnx raises several types
            self._errors.append(_ParserError(f"ONNX parse failed: {str(exc)[:200]}"))
            return False

        def tensor(value) -> ITensor:
            t = value.type.tensor_type
            if t.elem_type not in _ONNX_TYPES:
                raise ValueError(f"{value.name}: unsupported type {t.elem_type}")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            return ITensor(value.name, _ONNX_TYPES[t.elem_type], Dims(dims))

        inits = {i.name for i in proto.graph.initializer}
        try:
            self.network._inputs = [tensor(v) for v in proto.graph.input if v.name not in inits]
            self.network._outputs = [tensor(v) for v in proto.graph.output]
        except ValueError as exc:
            self._errors.append(_ParserError(str(exc)))
            return False
        self.network._onnx = bytes(model)
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:
        lo, mid, hi = Dims(min), Dims(opt), Dims(max)
        if not (len(lo) == len(mid) == len(hi)):
            raise ValueError(f"{input}: min/opt/max shapes of different ranks")
        if any(not (0 <= a <= b <= c) for a, b, c in zip(lo, mid, hi)):
            raise ValueError(f"{input}: need 0 <= min <= opt <= max, got {lo}, {mid}, {hi}")
        self._shapes[input] = (lo, mid, hi)

    def get_shape(self, input: str) -> list[Dims]:
        return list(self._shapes.get(input, ()))

    def __bool__(self) -> bool:
        return bool(self._shapes)


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data) or b"timing-cache-double"

    def serialize(self) -> IHostMemory:
        return IHostMemory(self.data)

    def combine(self, other: ITimingCache, ignore_mismatch: bool) -> bool:
        return True

    def reset(self) -> bool:
        return True


class IInt8Calibrator:
    def __init__(self) -> None:
        self._trt_initialised = True

    def get_batch_size(self) -> int:
        return 1

    def get_batch(self, names):
        return None

    def read_calibration_cache(self):
        return None

    def write_calibration_cache(self, cache) -> None:
        pass


class IInt8EntropyCalibrator2(IInt8Calibrator):
    pass


class IInt8MinMaxCalibrator(IInt8Calibrator):
    pass


class IBuilderConfig:
    def __init__(self) -> None:
        self._pools: dict[MemoryPoolType, int] = {}
        self._flags: set[BuilderFlag] = set()
        self._profiles: list[IOptimizationProfile] = []
        self._calibration_profile: IOptimizationProfile | None = None
        self._timing: ITimingCache | None = None
        self.int8_calibrator: IInt8Calibrator | None = None
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        if not isinstance(pool, MemoryPoolType) or int(pool_size) < 0:
            raise TypeError("set_memory_pool_limit(MemoryPoolType, int >= 0)")
        self._pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self._pools.get(pool, 1 << 40)

    def set_flag(self, flag: BuilderFlag) -> None:
        if not isinstance(flag, BuilderFlag):
            raise TypeError(f"set_flag takes a BuilderFlag, got {flag!r}")
        self._flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self._flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self._flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not isinstance(profile, IOptimizationProfile) or not profile:
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        if not isinstance(profile, IOptimizationProfile) or not profile:
            return False
        self._calibration_profile = profile
        return True

    def get_calibration_profile(self) -> IOptimizationProfile | None:
        return self._calibration_profile

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if not isinstance(cache, ITimingCache):
            raise TypeError("set_timing_cache takes an ITimingCache")
        self._timing = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing


def _profile_errors(network: INetworkDefinition, profile: IOptimizationProfile) -> list[str]:
    out = []
    inputs = {t.name: t for t in network._inputs}
    for name in profile._shapes:
        if name not in inputs:
            out.append(f"optimization profile sets {name!r}, which is not a network input")
    for t in network._inputs:
        if -1 not in t.shape:
            continue
        if t.name not in profile._shapes:
            out.append(f"{t.name}: dynamic input without a shape in the optimization profile")
            continue
        for dims in profile._shapes[t.name]:
            if len(dims) != len(t.shape) or any(
                fixed != -1 and d != fixed for d, fixed in zip(dims, t.shape)
            ):
                out.append(f"{t.name}: profile shape {dims} contradicts the network's {t.shape}")
    return out


class Builder:
    def __init__(self, logger: Logger) -> None:
        if not isinstance(logger, Logger):
            raise TypeError("Builder(logger)")
        self.logger = logger
        self.num_DLA_cores = 0
        self.platform_has_fast_fp16 = True
        self.platform_has_fast_int8 = True

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(int(flags))

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _fail(self, msg: str) -> None:
        self.logger.log(Logger.ERROR, msg)

    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> IHostMemory | None:
        if network._onnx is None:
            self._fail("network has no layers (nothing was parsed into it)")
            return None
        dynamic = [t.name for t in network._inputs if -1 in t.shape]
        if dynamic and not config._profiles:
            self._fail(f"network has dynamic inputs {dynamic} but no optimization profile")
            return None
        problems = [e for p in config._profiles for e in _profile_errors(network, p)]
        if problems:
            for e in problems:
                self._fail(e)
            return None
        if config.default_device_type == DeviceType.DLA or config.DLA_core >= 0:
            if config.DLA_core >= self.num_DLA_cores:
                self._fail(f"DLA core {config.DLA_core} requested; this device has none")
                return None
        if config.get_flag(BuilderFlag.INT8) and config.int8_calibrator is not None:
            calib = config._calibration_profile or (config._profiles or [None])[0]
            if not self._calibrate(network, config.int8_calibrator, calib):
                return None
        profiles = [
            {n: [list(d) for d in s] for n, s in p._shapes.items()} for p in config._profiles
        ]
        header = json.dumps({
            "version": __version__, "device": gpu.DEVICE_NAME, "profiles": profiles,
            "flags": sorted(f.name for f in config._flags),
        }).encode()  # fmt: skip
        gpu.stats["engine_builds"] += 1
        return IHostMemory(_MAGIC + struct.pack("<Q", len(header)) + header + network._onnx)

    def _calibrate(self, network, calibrator, profile) -> bool:
        if not getattr(calibrator, "_trt_initialised", False):
            raise TypeError("the calibrator's __init__ must call its TensorRT base __init__")
        cache = calibrator.read_calibration_cache()
        if cache:
            return True
        names = [t.name for t in network._inputs]
        shapes = {
            t.name: tuple(profile._shapes[t.name][1]) if profile and t.name in profile._shapes
            else tuple(t.shape)
            for t in network._inputs
        }  # fmt: skip
        batches = 0
        while True:
            ptrs = calibrator.get_batch(names)
            if not ptrs:
                break
            if len(ptrs) != len(names):
                self._fail(f"calibrator gave {len(ptrs)} pointers for {len(names)} inputs")
                return False
            for t, ptr in zip(network._inputs, ptrs):
                nbytes = (
                    int(np.prod(shapes[t.name], dtype=np.int64))
                    * np.dtype(_NUMPY[t.dtype]).itemsize
                )
                if not gpu.has_device(int(ptr), nbytes):
                    self._fail(
                        f"calibration input {t.name}: {nbytes} bytes of shape "
                        f"{shapes[t.name]} are not on the device at {int(ptr):#x}"
                    )
                    return False
            batches += 1
        if batches == 0:
            self._fail("INT8 calibration got no batches")
            return False
        calibrator.write_calibration_cache(IHostMemory(b"calibration-table-double"))
        return True


class _EngineTensor:
    def __init__(self, name: str, mode: TensorIOMode, dtype: DataType, shape: Dims) -> None:
        self.name, self.mode, self.dtype, self.shape = name, mode, dtype, shape


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes, logger: Logger) -> None:
        self.logger = logger
        self._header, self._onnx = header, onnx_bytes
        network = INetworkDefinition(0)
        if not OnnxParser(network, logger).parse(onnx_bytes):
            raise ValueError("engine holds no readable graph")
        self._tensors = [
            _EngineTensor(t.name, TensorIOMode.INPUT, t.dtype, t.shape) for t in network._inputs
        ] + [_EngineTensor(t.name, TensorIOMode.OUTPUT, t.dtype, t.shape) for t in network._outputs]
        self._by_name = {t.name: t for t in self._tensors}
        self._profiles = [
            {n: tuple(Dims(d) for d in s) for n, s in p.items()} for p in header["profiles"]
        ]
        self._session = None
        self.contexts = 0

    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return max(1, len(self._profiles))

    def get_tensor_name(self, index: int) -> str:
        return self._tensors[index].name

    def _tensor(self, name: str) -> _EngineTensor | None:
        return self._by_name.get(name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        t = self._tensor(name)
        return t.mode if t else TensorIOMode.NONE

    def get_tensor_shape(self, name: str) -> Dims:
        t = self._tensor(name)
        return t.shape if t else Dims()

    def get_tensor_dtype(self, name: str) -> DataType:
        t = self._tensor(name)
        if t is None:
            raise ValueError(f"no tensor {name!r}")
        return t.dtype

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        t = self._tensor(name)
        if t is None or t.mode != TensorIOMode.INPUT:
            raise ValueError(f"{name!r} is not an input of this engine")
        if not self._profiles:
            return [t.shape] * 3
        if not 0 <= profile_index < len(self._profiles):
            raise ValueError(f"profile {profile_index} does not exist")
        return list(self._profiles[profile_index].get(name, (t.shape,) * 3))

    def serialize(self) -> IHostMemory:
        header = json.dumps(self._header).encode()
        return IHostMemory(_MAGIC + struct.pack("<Q", len(header)) + header + self._onnx)

    def create_execution_context(self) -> IExecutionContext:
        self.contexts += 1
        return IExecutionContext(self)

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 2
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                self._onnx, options, providers=["CPUExecutionProvider"]
            )
        return self._session


class Runtime:
    def __init__(self, logger: Logger) -> None:
        if not isinstance(logger, Logger):
            raise TypeError("Runtime(logger)")
        self.logger = logger
        self.DLA_core = -1

    def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        if not data.startswith(_MAGIC):
            self.logger.log(Logger.ERROR, "deserialize: not a serialised engine (magic)")
            return None
        n = len(_MAGIC)
        try:
            (size,) = struct.unpack("<Q", data[n : n + 8])
            header = json.loads(data[n + 8 : n + 8 + size])
            onnx_bytes = data[n + 8 + size :]
        except (struct.error, ValueError):
            self.logger.log(Logger.ERROR, "deserialize: corrupt engine")
            return None
        if header.get("version") != __version__:
            self.logger.log(
                Logger.ERROR,
                f"the engine was built with TensorRT {header.get('version')}, this is "
                f"{__version__}: serialization is not compatible",
            )
            return None
        try:
            return ICudaEngine(header, onnx_bytes, self.logger)
        except ValueError as exc:
            self.logger.log(Logger.ERROR, f"deserialize: {exc}")
            return None


class IOutputAllocator:
    """Base of an output allocator: subclasses must call ``IOutputAllocator.__init__``."""

    def __init__(self) -> None:
        self._trt_initialised = True

    def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
        return 0

    def reallocate_output_async(
        self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
    ) -> int:
        return self.reallocate_output(tensor_name, memory, size, alignment)

    def notify_shape(self, tensor_name: str, shape: Dims) -> None:
        pass


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self._shapes: dict[str, Dims] = {}
        self._addresses: dict[str, int] = {}
        self._allocators: dict[str, IOutputAllocator] = {}
        self.active_optimization_profile = 0
        self.launches = 0

    def _error(self, msg: str) -> bool:
        self.engine.logger.log(Logger.ERROR, msg)
        return False

    def set_input_shape(self, name: str, shape) -> bool:
        t = self.engine._tensor(name)
        if t is None or t.mode != TensorIOMode.INPUT:
            return self._error(f"set_input_shape: {name!r} is not an input")
        dims = Dims(shape)
        lo, _, hi = self.engine.get_tensor_profile_shape(name, self.active_optimization_profile)
        if len(dims) != len(t.shape):
            return self._error(f"set_input_shape: {name} has rank {len(t.shape)}, got {dims}")
        for d, fixed, a, b in zip(dims, t.shape, lo, hi):
            if (fixed != -1 and d != fixed) or not a <= d <= b:
                return self._error(
                    f"set_input_shape: {name} shape {dims} is outside the optimization profile "
                    f"[{lo}, {hi}]"
                )
        self._shapes[name] = dims
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        if name in self._shapes:
            return self._shapes[name]
        return self.engine.get_tensor_shape(name)

    @property
    def all_input_dimensions_specified(self) -> bool:
        return all(
            t.name in self._shapes for t in self.engine._tensors if t.mode == TensorIOMode.INPUT
        )

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self.engine._tensor(name) is None:
            return self._error(f"set_tensor_address: no tensor {name!r}")
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def set_output_allocator(self, name: str, output_allocator: IOutputAllocator) -> bool:
        t = self.engine._tensor(name)
        if t is None or t.mode != TensorIOMode.OUTPUT:
            return self._error(f"set_output_allocator: {name!r} is not an output")
        if not getattr(output_allocator, "_trt_initialised", False):
            raise TypeError(
                "the output allocator's __init__ must call IOutputAllocator.__init__(self)"
            )
        self._allocators[name] = output_allocator
        return True

    def get_output_allocator(self, name: str) -> IOutputAllocator | None:
        return self._allocators.get(name)

    def _nbytes(self, t: _EngineTensor, shape) -> int:
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(_NUMPY[t.dtype]).itemsize

    def execute_async_v3(self, stream_handle: int) -> bool:
        if int(stream_handle) not in gpu.streams:
            return self._error(f"execute_async_v3: stream {int(stream_handle):#x} is not a stream")
        inputs = [t for t in self.engine._tensors if t.mode == TensorIOMode.INPUT]
        outputs = [t for t in self.engine._tensors if t.mode == TensorIOMode.OUTPUT]
        for t in inputs:
            if t.name not in self._shapes:
                return self._error(f"execute_async_v3: input {t.name} has no shape set")
            nbytes = self._nbytes(t, self._shapes[t.name])
            if t.name not in self._addresses:
                return self._error(f"execute_async_v3: input {t.name} has no address")
            if nbytes and not gpu.has_device(self._addresses[t.name], nbytes):
                return self._error(
                    f"execute_async_v3: input {t.name} needs {nbytes} device bytes at "
                    f"{self._addresses[t.name]:#x}"
                )
        for t in outputs:
            if t.name not in self._allocators and t.name not in self._addresses:
                return self._error(
                    f"execute_async_v3: output {t.name} has neither an address nor an allocator"
                )
        shapes = dict(self._shapes)
        addresses = dict(self._addresses)
        allocators = dict(self._allocators)
        self.launches += 1
        gpu.stats["launches"] += 1

        def run() -> None:
            feed = {}
            for t in inputs:
                nbytes = self._nbytes(t, shapes[t.name])
                raw = bytes(gpu.device_view(addresses[t.name], nbytes)) if nbytes else b""
                feed[t.name] = np.frombuffer(raw, dtype=_NUMPY[t.dtype]).reshape(shapes[t.name])
            values = self.engine.session().run([t.name for t in outputs], feed)
            for t, value in zip(outputs, values):
                value = np.ascontiguousarray(value, dtype=_NUMPY[t.dtype])
                ptr = addresses.get(t.name, 0)
                alloc = allocators.get(t.name)
                if alloc is not None:
                    ptr = int(alloc.reallocate_output_async(
                        t.name, ptr, max(value.nbytes, 1), 256, int(stream_handle)
                    ))  # fmt: skip
                if value.nbytes and not gpu.has_device(ptr, value.nbytes):
                    raise gpu.FakeCudaError(
                        gpu.INVALID_DEVICE_POINTER,
                        f"output {t.name}: {value.nbytes} bytes do not fit at {ptr:#x}",
                    )
                if value.nbytes:
                    gpu.device_view(ptr, value.nbytes)[:] = value.tobytes()
                if alloc is not None:
                    alloc.notify_shape(t.name, Dims(value.shape))

        gpu.enqueue(int(stream_handle), run)
        return True
