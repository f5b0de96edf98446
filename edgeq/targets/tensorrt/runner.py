"""A built engine as a runner: numpy in, numpy out, through cuda-python (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.runtime.sessions import component_runner
from edgeq.targets.tensorrt.engines import cuda_check, gpu_identity, load_cudart


def engine_runner(build: Path, info: dict[str, Any]):
    """A manifest component's engines (one, or one per timestep group)."""
    return component_runner(lambda p: TrtRunner(p, info["tensorrt"]), build, info, key="engine")


class TrtRunner:
    """A deserialized engine: numpy in, numpy out, through cuda-python (no torch)."""

    def __init__(self, plan: Path, info: dict[str, Any]):
        import tensorrt as trt

        built = info.get("version")
        if built and built != trt.__version__:
            raise EdgeqError(
                f"{plan} was built with TensorRT {built}, this machine has {trt.__version__}",
                f"rebuild the engines here: edgeq engines {plan.parent.parent}",
            )
        cc = gpu_identity()["compute_capability"]
        if info.get("compute_capability") and info["compute_capability"] != cc:
            raise EdgeqError(
                f"{plan} was built for compute capability {info['compute_capability']}, this GPU is {cc}",
                f"rebuild the engines here: edgeq engines {plan.parent.parent}",
            )
        self.trt = trt
        self.cudart = load_cudart()
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise EdgeqError(f"TensorRT could not load {plan}", f"rebuild it: edgeq engines {plan.parent.parent}")
        self.context = self.engine.create_execution_context()
        self.stream = cuda_check(self.cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self._buffers: dict[str, tuple[int, int]] = {}
        self.profile_shapes = info.get("profile_shapes", {})

    def _check_range(self, name: str, shape: tuple[int, ...]) -> None:
        """Refuse, before running, a shape outside the engine's optimization profile."""
        if name not in self.profile_shapes:
            return
        lo, _, hi = self.profile_shapes[name]
        for axis, (v, a, b) in enumerate(zip(shape, lo, hi)):
            if not a <= v <= b:
                raise EdgeqError(
                    f"{name} axis {axis} is {v}; this engine was built for {a}..{b}",
                    "use a batch/resolution inside the [tensorrt] profile ranges, or rebuild with wider ones",
                )

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                cuda_check(self.cudart.cudaFree(ptr))
            ptr = int(cuda_check(self.cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cud = self.cudart
        h2d, d2h = cud.cudaMemcpyKind.cudaMemcpyHostToDevice, cud.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.input_names:
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            arr = np.ascontiguousarray(feeds[name], dtype=dtype)
            self._check_range(name, arr.shape)
            self.context.set_input_shape(name, arr.shape)
            ptr = self._buffer(name, arr.nbytes)
            cuda_check(cud.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
            self.context.set_tensor_address(name, ptr)
        outs = {}
        for name in self.output_names:
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            arr = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype)
            ptr = self._buffer(name, arr.nbytes)
            self.context.set_tensor_address(name, ptr)
            outs[name] = arr
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for name, arr in outs.items():
            cuda_check(cud.cudaMemcpyAsync(arr.ctypes.data, self._buffers[name][0], arr.nbytes, d2h, self.stream))
        cuda_check(cud.cudaStreamSynchronize(self.stream))
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in outs.items()}

    def __del__(self):
        try:
            for ptr, _ in self._buffers.values():
                self.cudart.cudaFree(ptr)
        except Exception:
            pass
