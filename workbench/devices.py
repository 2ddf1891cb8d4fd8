"""Where a command runs and in what precision: the one resolver every `--device`/`--dtype` goes through.

`resolve_placement("auto", "auto")` picks cuda when a GPU is visible (else cpu), and bfloat16 on cuda
(float32 elsewhere: this CPU has no fast half-precision matmul; measured here, a 512x576 @ 576x1536
matmul takes 9 ms in fp32, 4 ms in bf16 and 430 ms in fp16). The result names what was actually used,
and that is what the catalog records (`device`, `dtype` columns), never "auto".

The model computes in `dtype`; hooks read activations in it. Dictionaries train in fp32 (their
parameters and Adam state), and metrics (FVU, CE, KL) accumulate in fp32 or fp64 whatever the model ran in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class DeviceError(WorkbenchError):
    """A device or precision that does not exist here, or that the device cannot run."""


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @property
    def device_name(self) -> str:
        """As recorded in the catalog: cpu, cuda:0, mps."""
        if self.device.type == "cuda":
            return f"cuda:{self.device.index or 0}"
        return self.device.type

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    def autocast(self):
        """A context in which matrix products run in this dtype (nothing changes for float32)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def describe(self) -> str:
        """For logs and reports: 'cuda:0 (NVIDIA H200), bfloat16'."""
        where = self.device_name
        if self.device.type == "cuda":
            where += f" ({torch.cuda.get_device_name(self.device)})"
        return f"{where}, {self.dtype_name}"


def available_devices() -> list[str]:
    """The devices torch can use here, for error messages: cpu, then cuda:0..n-1 and mps."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(spec: str = "auto") -> torch.device:
    """auto -> cuda when available, else cpu; cpu, cuda, cuda:N and mps are checked to exist here."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceError(
            f"Unknown device '{spec}'. Use auto, cpu, cuda, cuda:N or mps; here: {', '.join(available_devices())}."
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"--device {spec}: no CUDA GPU is visible here (torch {torch.__version__}, CUDA build: "
                f"{torch.version.cuda or 'no'}). Devices here: {', '.join(available_devices())}. "
                "Use --device cpu (or auto), or install a CUDA build of torch on a GPU machine."
            )
        index = 0 if device.index is None else device.index
        if index >= count:
            raise DeviceError(
                f"--device {spec}: there are {count} CUDA device(s) here ({', '.join(available_devices()[1:])})."
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(
                f"--device mps: Apple's MPS is not available here. Devices: {', '.join(available_devices())}."
            )
        return device
    if device.type == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"Unsupported device '{spec}'. Use auto, cpu, cuda, cuda:N or mps.")


def resolve_dtype(spec: str, device: torch.device, check_support: bool = True) -> torch.dtype:
    """auto -> bfloat16 on cuda, float32 elsewhere; a dtype the device cannot run is refused (unless the device is
    another machine's: a Ray driver resolves what its actors will, and each actor checks its own GPU)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    name = aliases.get(spec, spec)
    if name not in DTYPES:
        raise DeviceError(f"Unknown dtype '{spec}'. Use auto, float32, bfloat16 or float16.")
    dtype = DTYPES[name]
    if check_support and dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(
            f"{torch.cuda.get_device_name(device)} cannot compute in bfloat16 (it needs compute capability 8.0+); "
            "use --dtype float16 or float32."
        )
    return dtype


def resolve_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """The one place a command's --device and --dtype become a torch device and dtype."""
    resolved = resolve_device(device)
    return Placement(resolved, resolve_dtype(dtype, resolved))


def require_cpu(placement: Placement, what: str, float32_only: bool = False) -> None:
    """Refuse, with a clear message, a placement that a command does not support yet."""
    if placement.device.type != "cpu":
        raise DeviceError(
            f"{what} runs on the CPU only so far (asked for {placement.device_name}); give --device cpu. "
            "Its tensors are built on the host; moving them is tracked in the GPU issue's notes."
        )
    if float32_only and placement.dtype != torch.float32:
        raise DeviceError(f"{what} computes in float32 only (asked for {placement.dtype_name}); give --dtype float32.")


@contextmanager
def explain_out_of_memory(what: str, batch_size: int, device: torch.device, hint: str = "") -> Iterator[None]:
    """Turn the device's out-of-memory error inside the block into a DeviceError with the batch size to try."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise DeviceError(
            f"{what} ran out of memory on {device} at a batch of {batch_size}. Try --batch-size "
            f"{max(1, batch_size // 2)} (nothing committed was lost: run the same command again).{hint}"
        ) from None
