"""XLA flags of the test session and of the processes tests start: N fake CPU devices, and the
compile settings the suite runs with (tests only, never a run's: they compile 25-30% faster and
run slower, and nothing here asserts speed; float semantics are unchanged)."""

COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def xla_flags(devices: int | None = None, base: str = "") -> str:
    """`base` (XLA_FLAGS given) plus the suite's compile flags and, when given, `devices`
    fake CPU devices (replacing any device count in `base`)."""
    count = "--xla_force_host_platform_device_count"
    flags = [f for f in base.split() if not (devices and f.startswith(count))]
    flags += [f for f in COMPILE_FLAGS if f.split("=")[0] not in base]
    if devices:
        flags.append(f"{count}={devices}")
    return " ".join(flags)
