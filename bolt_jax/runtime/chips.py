"""Published figures of accelerators, one home for all of them: the dense bf16 peak of every device MFU is reported
for (`PEAK_BF16_FLOPS`) and its HBM bandwidth (`HBM_BYTES_PER_S`, what the benchmarks set decode against), both found
for a running device by `for_device_kind`, and the full figures (HBM size, interconnect) of the chips an
ahead-of-time compile predicts step times for (`CHIPS`, bolt_jax.aot), each with its source."""

from __future__ import annotations

import os
from dataclasses import dataclass

GIB = 1024 ** 3
DEFAULT_GPU_MEM_FRACTION = 0.75  # of a GPU's memory, what jax's allocator takes when it starts (jax's default)


def gpu_mem_fraction() -> float:
    """The share of a GPU's memory jax's allocator takes when the process starts: XLA_PYTHON_CLIENT_MEM_FRACTION where
    set (to a number in (0, 1]), else jax's default 0.75. A program larger than that share fails on the GPU, though
    the device holds more."""
    try:
        value = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", DEFAULT_GPU_MEM_FRACTION))
    except ValueError:
        return DEFAULT_GPU_MEM_FRACTION
    return value if 0 < value <= 1 else DEFAULT_GPU_MEM_FRACTION

# Keys are matched against jax's device kind, lower-cased, the longest key first ("NVIDIA H100 PCIe" is "h100 pcie",
# not "h100"); a device no key matches gets None, so a rate is not reported rather than invented.
# Dense bf16 peak FLOP/s per device (vendor datasheets, without sparsity): H100 SXM 989, PCIe 756, NVL 835.
PEAK_BF16_FLOPS = {
    "h100": 989e12, "h100 pcie": 756e12, "h100 nvl": 835e12, "h200": 989e12, "h800": 989e12, "gh200": 989e12,
    "a100": 312e12, "a800": 312e12, "l40s": 362e12, "b200": 2250e12, "tpu v4": 275e12, "tpu v5 lite": 197e12,
    "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v5": 459e12, "tpu v6 lite": 918e12, "tpu v6e": 918e12,
}
# HBM bandwidth per device, bytes/s (vendor datasheets): H100 SXM 3.35 TB/s, PCIe 2.0, NVL 3.9; H200 4.8; GH200 (96
# GB HBM3) 4.0; A100 80GB 2.0; B200 8.0; TPU v4 1.2, v5e 0.819, v5p 2.765, v6e 1.64.
HBM_BYTES_PER_S = {
    "h100": 3.35e12, "h100 pcie": 2.0e12, "h100 nvl": 3.9e12, "h200": 4.8e12, "gh200": 4.0e12, "a100": 2.0e12,
    "b200": 8.0e12, "tpu v4": 1228e9, "tpu v5 lite": 819e9, "tpu v5e": 819e9, "tpu v5p": 2765e9, "tpu v5": 2765e9,
    "tpu v6 lite": 1640e9, "tpu v6e": 1640e9,
}


def for_device_kind(table: dict[str, float], device_kind: str) -> float | None:
    """The figure of `table` (PEAK_BF16_FLOPS or HBM_BYTES_PER_S) for a device jax reports as `device_kind`, or
    None where no key matches (CPU, a GPU not listed)."""
    kind = device_kind.lower()
    return next((table[key] for key in sorted(table, key=len, reverse=True) if key in kind), None)


@dataclass(frozen=True)
class Chip:
    """One accelerator's published figures. `link_bytes_per_s` is what one chip can send per second over all its
    links together, one way (half the bidirectional figure a datasheet quotes): the rate a ring collective's bytes
    leave a chip when every link is busy, so the communication time it gives is a lower bound."""
    name: str
    device_kind: str  # what jax reports for it; its peak and HBM bandwidth are found by it, as a running device's
    hbm_bytes: float
    link_bytes_per_s: float
    link: str  # the interconnect's name
    # GPUs only: what one GPU sends per second, one way, to GPUs in other hosts (its share of the host's network
    # adapters), the rate a ring across hosts runs at
    network_bytes_per_s: float = 0.0
    network: str = ""
    # GPUs only, what XLA's GPU compiler reads of the device when it compiles without one (bolt_jax.aot.topology):
    # streaming multiprocessors, L2 bytes, boost clock, compute capability, and the memory the driver reports
    sms: int = 0
    l2_bytes: int = 0
    clock_ghz: float = 0.0
    compute_capability: str = ""
    device_memory_bytes: int = 0

    @property
    def peak_flops(self) -> float:
        return self._figure(PEAK_BF16_FLOPS)

    @property
    def hbm_bytes_per_s(self) -> float:
        return self._figure(HBM_BYTES_PER_S)

    def _figure(self, table: dict[str, float]) -> float:
        figure = for_device_kind(table, self.device_kind)
        if figure is None:
            raise ValueError(f"chip {self.name}: no figure for device kind {self.device_kind!r} in chips.py's tables")
        return figure

    def describe(self) -> str:
        return (f"{self.name}: {self.peak_flops / 1e12:.0f} TFLOP/s bf16, {self.hbm_bytes / GIB:.0f} GiB HBM at "
                f"{self.hbm_bytes_per_s / 1e9:,.0f} GB/s, {self.link} {self.link_bytes_per_s / 1e9:,.0f} GB/s one way"
                + (f"; between hosts {self.network} {self.network_bytes_per_s / 1e9:,.0f} GB/s one way"
                   if self.network_bytes_per_s else ""))


CHIPS: dict[str, Chip] = {
    # cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16; 16 GiB HBM2 at 819 GB/s; ICI 400 GB/s bidirectional per chip
    # (the older page: 1600 Gbps, one way), 4 ports, 2D torus.
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GIB, 200e9, "ICI"),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16; 95 GiB HBM2e at 2765 GB/s; ICI 1200 GB/s bidirectional per
    # chip (4800 Gbps one way), 3D torus.
    "v5p": Chip("v5p", "TPU v5", 95 * GIB, 600e9, "ICI"),
    # NVIDIA H100 Tensor Core GPU datasheet, SXM5: 989 TFLOP/s bf16 dense (1979 with sparsity); 80 GB HBM3 at
    # 3.35 TB/s (nvidia-smi: 81,559 MiB, so GB here are GiB); NVLink 900 GB/s bidirectional (NVSwitch, 8 per node).
    # 132 SMs, 50 MB L2, 1980 MHz boost (the datasheet's; nvidia-smi's clocks.max.sm on our H100), compute 9.0.
    # Between hosts: a DGX H100's eight ConnectX-7 adapters, one 400 Gb/s InfiniBand NDR port per GPU (50 GB/s).
    "h100": Chip("h100", "NVIDIA H100 80GB HBM3", 80 * GIB, 450e9, "NVLink",
                 network_bytes_per_s=50e9, network="InfiniBand NDR", sms=132,
                 l2_bytes=50 * 1024 ** 2, clock_ghz=1.98, compute_capability="9.0",
                 device_memory_bytes=81559 * 1024 ** 2),
    # NVIDIA H200 datasheet, SXM: 989 TFLOP/s bf16 dense; 141 GB HBM3e at 4.8 TB/s (nvidia-smi: 143,771 MiB);
    # NVLink 900 GB/s bidirectional.
    # The same GH100 die as the H100: 132 SMs, 50 MB L2, 1980 MHz, compute 9.0; a DGX H200's network as the H100's.
    "h200": Chip("h200", "NVIDIA H200", 141 * GIB, 450e9, "NVLink",
                 network_bytes_per_s=50e9, network="InfiniBand NDR", sms=132, l2_bytes=50 * 1024 ** 2, clock_ghz=1.98,
                 compute_capability="9.0",
                 device_memory_bytes=143771 * 1024 ** 2),
}
