"""Node parameters: one table (name, default, range/choices, description), declared with descriptors.

A bad value in a params file must not kill the process: it is recorded, the default is declared
instead, and the configure transition fails with a message naming the parameter (the node stays
up, unconfigured). At runtime rclpy itself rejects out-of-range values (descriptor ranges), and
``check_update`` rejects bad choices. Parameters marked ``live`` apply at once; the others at the
next configure (they decide the model, the device or the topics' QoS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from mafs_core.sizes import parse_input_size
from mafs_core.tta import check_tta


@dataclass(frozen=True)
class Spec:
    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    live: bool = False  # applied without reconfiguring
    read_only: bool = False
    dynamic: bool = False  # any type (checked by check_value): `input_size: 0` in YAML is an integer


# Parameters of earlier releases: setting one fails configure with the new name instead of being ignored.
RENAMED = {"model.input_width": "model.input_size ('WxH', e.g. '640x480', or 'auto')",
           "model.input_height": "model.input_size ('WxH', e.g. '640x480', or 'auto')"}

# thermal.units -> (gain, offset): degrees Celsius = value * gain + offset (fixed mode's units)
THERMAL_UNITS = {"raw": (1.0, 0.0), "kelvin": (1.0, -273.15), "kelvin_x10": (0.1, -273.15),
                 "kelvin_x100": (0.01, -273.15)}

IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]

SPECS: tuple[Spec, ...] = (
    Spec("autostart", True, "configure and activate at start (false: wait for lifecycle transitions)", read_only=True),
    Spec("model.checkpoint", "", "checkpoint file: .safetensors (PyTorch) or .onnx (onnxruntime); empty = the "
         "shipped weights/mafs_t.safetensors"),
    Spec("model.device", "auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N"),
    Spec("model.precision", "auto", "auto (fp16 on cuda, fp32 on cpu), fp32, fp16 or bf16",
         choices=("auto", "fp32", "fp16", "bf16")),
    Spec("model.input_size", "auto", "the network's working resolution: auto (about the size the checkpoint was "
         "trained at, 640x480 for the shipped weights, at the camera's aspect ratio in multiples of 32), WxH "
         "(exactly, e.g. 736x416) or 0 (the RGB camera's own size: cost grows with the camera). Outputs are always "
         "at the RGB camera's resolution", dynamic=True),
    Spec("model.max_input_pixels", 8_300_000, "frames with more pixels than this are refused before any work, "
         "with a throttled warning and a counter (8.3 MP: 3840x2160 passes); 0 = no limit", range=(0, 1_000_000_000)),
    Spec("model.warmup_iterations", 2, "dummy inferences at activation, at the working resolution of the camera "
         "size last seen (model.warmup_size at first): keeps first-call latency off the live path", range=(0, 100)),
    Spec("model.warmup_size", "", "the RGB camera's size (WxH, e.g. 1920x1080) for that warm-up before any frame "
         "has been seen; empty: 640x480. Set it to the camera's size so that the first frames at 1080p do not pay "
         "for the new shapes on the live path"),
    Spec("model.tta_scales", [1.0], "segmentation test-time augmentation: class probabilities averaged over these "
         "factors of the working resolution (1.0 included; [1.0] = off). Each factor is another network pass: "
         "[0.75, 1.0, 1.25] with model.tta_flip is 6 passes (docs/training.md has what it buys)"),
    Spec("model.tta_flip", False, "test-time augmentation: also average each scale's mirrored pass (twice the "
         "passes). The fused image is the plain pass's either way"),
    Spec("thermal.normalization", "checkpoint", "thermal to [0,1]: checkpoint (what the model was trained with), "
         "minmax (per frame), percentile (robust, smoothed) or fixed (a radiometric range); the thermal.* "
         "values below apply unless this is checkpoint", choices=("checkpoint", "minmax", "percentile", "fixed")),
    Spec("thermal.low_percentile", 1.0, "percentile mode: lower bound (%)", range=(0.0, 100.0)),
    Spec("thermal.high_percentile", 99.0, "percentile mode: upper bound (%)", range=(0.0, 100.0)),
    Spec("thermal.smoothing", 0.9, "percentile mode: weight of the previous bounds (0 = none)", range=(0.0, 0.999)),
    Spec("thermal.units", "raw", "fixed mode: what the camera's values are. raw: fixed_low/high are in the "
         "camera's own values (counts); kelvin, kelvin_x10, kelvin_x100 (radiometric cameras' linear-temperature "
         "output, e.g. 30015 = 300.15 K): fixed_low/high are in degrees Celsius",
         choices=tuple(THERMAL_UNITS)),
    Spec("thermal.fixed_low", 0.0, "fixed mode: value mapped to 0 (thermal.units: raw values, or degrees C); "
         "fixed_low = fixed_high = 0 uses the dtype's full range", range=(-1e9, 1e9)),
    Spec("thermal.fixed_high", 0.0, "fixed mode: value mapped to 1", range=(-1e9, 1e9)),
    Spec("registration.homography", IDENTITY, "3x3 row-major homography mapping the thermal camera's own pixels to RGB "
         "pixels (what `mafs register` writes); identity = cameras already aligned, a thermal frame of another "
         "size is then scaled to the RGB size"),
    Spec("objects.min_area", 64, "segmentation/objects: smallest connected component (pixels) of a thing class "
         "(person, car, bike) reported as an object", range=(1, 10_000_000), live=True),
    Spec("overlay.alpha", 0.5, "weight of the class colours in segmentation/overlay", range=(0.0, 1.0)),
    Spec("sync.backend", "auto", "pairing: auto (message_filters if importable, else builtin), message_filters, "
         "builtin", choices=("auto", "message_filters", "builtin"), live=True),
    Spec("sync.queue_size", 10, "messages kept per stream while waiting for a partner", range=(1, 1000), live=True),
    Spec("sync.slop", 0.05, "largest stamp difference (s) of a pair", range=(1e-6, 60.0), live=True),
    Spec("sync.thermal_time_offset", 0.0, "seconds added to thermal stamps before pairing (fixed clock offset)",
         range=(-60.0, 60.0), live=True),
    Spec("max_pair_age", 1.0, "drop a pair older than this (s, node clock minus stamp) when the worker takes it; "
         "0 = never", range=(0.0, 3600.0), live=True),
    Spec("qos.input_reliability", "best_effort", "input subscriptions (REP-2003 sensor data: best_effort)",
         choices=("best_effort", "reliable")),
    Spec("qos.input_depth", 5, "input subscription queue depth", range=(1, 1000)),
    Spec("qos.output_reliability", "reliable", "output publishers", choices=("best_effort", "reliable")),
    Spec("qos.output_depth", 5, "output publisher queue depth", range=(1, 1000)),
    Spec("diagnostics.period", 1.0, "seconds between /diagnostics messages", range=(0.05, 60.0)),
    Spec("diagnostics.silent_timeout", 2.0, "a stream with no message for this long (s) while the other flows "
         "is reported silent", range=(0.1, 3600.0), live=True),
    Spec("diagnostics.warn_period", 5.0, "minimum seconds between two identical warnings", range=(0.0, 3600.0),
         live=True),
)
SPEC = {s.name: s for s in SPECS}


@dataclass
class NodeParams:
    """The parameters as typed Python values (names with '.' -> '_')."""

    autostart: bool
    model_checkpoint: str
    model_device: str
    model_precision: str
    model_input_size: str | int  # dynamically typed: see parse_input_size
    model_max_input_pixels: int
    model_warmup_iterations: int
    model_warmup_size: str
    model_tta_scales: list[float]
    model_tta_flip: bool
    thermal_normalization: str
    thermal_low_percentile: float
    thermal_high_percentile: float
    thermal_smoothing: float
    thermal_units: str
    thermal_fixed_low: float
    thermal_fixed_high: float
    registration_homography: list[float]
    objects_min_area: int
    overlay_alpha: float
    sync_backend: str
    sync_queue_size: int
    sync_slop: float
    sync_thermal_time_offset: float
    max_pair_age: float
    qos_input_reliability: str
    qos_input_depth: int
    qos_output_reliability: str
    qos_output_depth: int
    diagnostics_period: float
    diagnostics_silent_timeout: float
    diagnostics_warn_period: float

    @classmethod
    def from_node(cls, node: Node) -> NodeParams:
        values = {s.name.replace(".", "_"): node.get_parameter(s.name).value for s in SPECS}
        values["registration_homography"] = list(values["registration_homography"])
        values["model_tta_scales"] = list(values["model_tta_scales"])
        return cls(**values)


assert [f.name for f in fields(NodeParams)] == [s.name.replace(".", "_") for s in SPECS]


def descriptor(spec: Spec) -> ParameterDescriptor:
    text = spec.description + (f" (one of: {', '.join(spec.choices)})" if spec.choices else "")
    desc = ParameterDescriptor(name=spec.name, description=text, read_only=spec.read_only,
                               additional_constraints=f"one of {list(spec.choices)}" if spec.choices else "",
                               dynamic_typing=spec.dynamic)
    if spec.range is not None:
        lo, hi = spec.range
        if isinstance(spec.default, bool):
            pass
        elif isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return desc


def declare(node: Node) -> dict[str, str]:
    """Declare every parameter; return {name: message} for overrides rejected (their defaults are used instead)."""
    errors: dict[str, str] = {}
    overrides: dict[str, Parameter] = getattr(node, "_parameter_overrides", {})
    for old, new in RENAMED.items():  # an undeclared name would be ignored without a word
        if old in overrides:
            errors[old] = f"parameter '{old}' was replaced by '{new}'"
    for spec in SPECS:
        desc = descriptor(spec)
        try:
            node.declare_parameter(spec.name, spec.default, desc)
            continue
        except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
            given = overrides[spec.name].value if spec.name in overrides else None
            reason = str(exc).split(":")[0] if isinstance(exc, InvalidParameterTypeException) else str(exc)
        # YAML writes 1 for 1.0: accept an integer where a double is expected (and in range).
        if isinstance(spec.default, float) and type(given) is int and _in_range(spec, float(given)):
            node.declare_parameter(spec.name, float(given), desc, ignore_override=True)
            continue
        errors[spec.name] = f"parameter '{spec.name}' = {given!r} rejected: {_why(spec, given, reason)}"
        node.declare_parameter(spec.name, spec.default, desc, ignore_override=True)
    return errors


def _in_range(spec: Spec, value: float) -> bool:
    return spec.range is None or spec.range[0] <= value <= spec.range[1]


def _why(spec: Spec, given: Any, reason: str) -> str:
    if spec.range is not None and isinstance(given, int | float) and not isinstance(given, bool):
        return f"must be in [{spec.range[0]}, {spec.range[1]}]"
    if type(given) is not type(spec.default):
        return f"must be a {type(spec.default).__name__}, got a {type(given).__name__}"
    return reason


def check_value(name: str, value: Any) -> str | None:
    """The reason ``value`` is not acceptable for ``name`` (beyond type and range, which rclpy checks)."""
    spec = SPEC.get(name)
    if spec is None:
        return None
    if spec.choices and value not in spec.choices:
        return f"parameter '{name}' = {value!r} rejected: must be one of {', '.join(spec.choices)}"
    if name == "registration.homography":
        if len(value) != 9 or not all(math.isfinite(v) for v in value):
            return f"parameter '{name}' rejected: needs 9 finite numbers (row-major 3x3), got {list(value)}"
    if name == "model.input_size" and parse_input_size(value) == "invalid":
        return f"parameter '{name}' = {value!r} rejected: must be auto, 0 or WxH (e.g. 640x480)"
    if name == "model.warmup_size" and value and not isinstance(parse_input_size(value), tuple):
        return f"parameter '{name}' = {value!r} rejected: must be empty or WxH (e.g. 1920x1080)"
    if name == "model.tta_scales":
        try:
            check_tta(value, False)
        except ValueError as exc:
            return f"parameter '{name}' = {list(value)} rejected: {exc}"
    if name == "model.device" and not (value in ("auto", "cpu", "cuda") or value.startswith("cuda:")):
        return f"parameter '{name}' = {value!r} rejected: must be auto, cpu, cuda or cuda:N"
    return None


def validate(p: NodeParams) -> list[str]:
    """Cross-parameter checks run at configure; each message names the parameter(s)."""
    errors = [e for s in SPECS if (e := check_value(s.name, getattr(p, s.name.replace(".", "_")))) is not None]
    if p.thermal_low_percentile >= p.thermal_high_percentile:
        errors.append(f"parameters 'thermal.low_percentile' ({p.thermal_low_percentile}) must be below "
                      f"'thermal.high_percentile' ({p.thermal_high_percentile})")
    if p.thermal_normalization == "fixed" and p.thermal_fixed_high < p.thermal_fixed_low:
        errors.append(f"parameters 'thermal.fixed_low' ({p.thermal_fixed_low}) must be below "
                      f"'thermal.fixed_high' ({p.thermal_fixed_high})")
    if p.model_checkpoint and not Path(p.model_checkpoint).expanduser().is_file():
        errors.append(f"parameter 'model.checkpoint': file not found: {p.model_checkpoint}")
    return errors

