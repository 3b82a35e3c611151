"""Device profiles: bundled YAMLs load, every validation error names its field path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from edge_smsp.core.errors import ProfileError
from edge_smsp.devices.profiles import (
    BUNDLED_PROFILES_DIR,
    ConnectionSpec,
    DeviceProfile,
    bundled_profiles,
    load_profile,
    parse_memory,
    profile_from_dict,
    resolve_profile_path,
)

MIB = 1024**2
BUNDLED = ("jetson_nano", "jetson_orin_nano", "raspberry_pi_4", "raspberry_pi_5", "localhost")


def _document(name: str = "raspberry_pi_4") -> dict:
    return yaml.safe_load((BUNDLED_PROFILES_DIR / f"{name}.yaml").read_text())


def _write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "device.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_profile_loads_by_name_and_path(name: str) -> None:
    profile = load_profile(name)
    assert isinstance(profile, DeviceProfile)
    assert profile.name == name
    assert load_profile(BUNDLED_PROFILES_DIR / f"{name}.yaml") == profile
    assert profile.batch_size == 1
    assert profile.latency_percentile in ("p50", "p90", "p99")
    assert profile.memory_budget_bytes > 64 * MIB
    assert profile.providers[-1] == "CPUExecutionProvider"
    if name.startswith("jetson"):
        assert profile.providers[:2] == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        assert profile.runtime_overhead_bytes is not None
    else:
        assert profile.providers == ("CPUExecutionProvider",)
    if name == "localhost":
        assert profile.connection.transport == "local"
    else:
        assert profile.connection.transport == "ssh"
        assert profile.connection.user and profile.connection.host
        assert profile.connection.key_file is not None and profile.connection.key_file.is_absolute()


def test_bundled_profiles_are_exactly_the_five() -> None:
    assert set(bundled_profiles()) == set(BUNDLED)


def test_connection_keys_are_exactly_the_contract() -> None:
    for name in BUNDLED:
        keys = set(_document(name)["connection"])
        assert keys == {"transport", "host", "port", "user", "key_file", "known_hosts", "python", "workdir"}
    spec = load_profile("jetson_nano").connection
    assert isinstance(spec, ConnectionSpec)
    assert spec.port == 22 and spec.python == "python3" and spec.workdir.startswith("~")
    # No python named: the transport's own (the local transport runs this interpreter).
    assert load_profile("localhost").connection.python is None


# Each bundled device's real software stack (see the comment in its YAML).
STACKS = {
    "jetson_nano": ("3.6", 15),  # JetPack 4.6: Python 3.6.9, onnxruntime-gpu 1.10/1.11
    "jetson_orin_nano": ("3.10", 20),  # JetPack 6: Python 3.10, onnxruntime-gpu 1.17+
    "raspberry_pi_4": ("3.11", 18),  # Raspberry Pi OS bookworm, PyPI's aarch64 onnxruntime 1.15+
    "raspberry_pi_5": ("3.11", 18),
    "localhost": ("3.11", 21),  # edge-smsp's own: Python 3.11+, onnxruntime 1.20+
}


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_profiles_carry_their_devices_software_stack(name: str) -> None:
    profile = load_profile(name)
    assert (profile.python_version, profile.max_opset) == STACKS[name]
    assert profile.to_dict()["python_version"] == STACKS[name][0]
    assert profile.to_dict()["max_opset"] == STACKS[name][1]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("connection", "port"), 0, "connection.port: must be 1-65535"),
        (("connection", "port"), "22", "connection.port: must be 1-65535"),
        (
            ("memory_budget",),
            "5 gigs",
            "memory_budget: cannot parse '5 gigs' (use 512MiB, 2GiB or a MiB integer)",
        ),
        (
            ("adapt_memory_budget",),
            "lots",
            "adapt_memory_budget: cannot parse 'lots' (use 512MiB, 2GiB or a MiB integer)",
        ),
        (("threads",), "four", "threads: must be an integer"),
        (("threads",), 0, "threads: must be 1-256"),
        (("input_size",), 22.5, "input_size: must be an integer"),
        (("latency_target_ms",), -5, "latency_target_ms: must be a positive number"),
        (("latency_percentile",), "p95", "latency_percentile: must be one of p50, p90, p99"),
        (
            ("providers",),
            ["CPUExecutionProvider", "QuantumExecutionProvider"],
            "providers[1]: unknown execution",
        ),
        (("providers",), "CPUExecutionProvider", "providers: must be a non-empty list"),
        (("throughput_gmacs",), True, "throughput_gmacs: must be a number"),
        (
            ("latency_target_ms",),
            "1e-300",  # how YAML 1.1 reads 1e-300 written without a dot
            "latency_target_ms: must be a number, got '1e-300' (YAML read it as text: write 1.0e-300, unquoted)",
        ),
        (("connection", "transport"), "telnet", "connection.transport: must be one of ssh, local"),
        (("connection", "key_file"), 42, "connection.key_file: must be a non-empty string"),
        (("connection",), "pi@raspberrypi", "connection: must be a mapping"),
        (("colour",), "red", "colour: unknown field"),
        (("connection", "proxy"), "x", "connection.proxy: unknown field"),
        (("python_version",), 3.1, 'python_version: must be a quoted string such as "3.6", got 3.1'),
        (("python_version",), "3.x", "python_version: must be MAJOR.MINOR"),
        (
            ("python_version",),
            "3.5",
            "python_version: the device runtime needs Python 3.6 or newer, got '3.5'",
        ),
        (("max_opset",), 14, "max_opset: must be 15-"),
        (("max_opset",), 999, "max_opset: must be 15-"),
        (("max_opset",), "15", "max_opset: must be an integer opset 15-"),
        (("max_opset",), True, "max_opset: must be an integer opset 15-"),
    ],
)
def test_invalid_field_names_its_path(
    tmp_path: Path, path: tuple[str, ...], value: object, message: str
) -> None:
    document = _document()
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ProfileError) as caught:
        load_profile(_write(tmp_path, document))
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert str(tmp_path / "device.yaml") in text


def test_adaptation_budget_is_its_own_key_or_the_inference_budget(tmp_path: Path) -> None:
    document = _document()
    plain = load_profile(_write(tmp_path, document))
    assert plain.adapt_memory_budget_bytes is None
    assert plain.adaptation_budget_bytes == plain.memory_budget_bytes
    document["adapt_memory_budget"] = "768MiB"
    roomy = load_profile(_write(tmp_path, document))
    assert roomy.adaptation_budget_bytes == 768 * 2**20 != roomy.memory_budget_bytes
    assert roomy.to_dict()["adapt_memory_budget_bytes"] == 768 * 2**20


@pytest.mark.parametrize("missing", ["name", "memory_budget", "providers", "connection", "latency_target_ms"])
def test_missing_field_is_named(missing: str) -> None:
    document = _document()
    del document[missing]
    with pytest.raises(ProfileError, match=f"^{missing}: required field is missing$"):
        profile_from_dict(document)


def test_ssh_needs_host_and_user() -> None:
    document = _document()
    document["connection"]["user"] = None
    with pytest.raises(ProfileError, match=r"^connection\.user: required when transport is ssh"):
        profile_from_dict(document)
    document = _document()
    del document["connection"]["host"]
    with pytest.raises(ProfileError, match=r"^connection\.host: required when transport is ssh"):
        profile_from_dict(document)


@pytest.mark.parametrize(
    ("where", "key"), [("connection", "password"), ("connection", "key_passphrase"), ("", "password")]
)
def test_passwords_rejected(where: str, key: str) -> None:
    document = _document()
    (document[where] if where else document)[key] = "hunter2"
    prefix = f"{where}." if where else ""
    with pytest.raises(ProfileError) as caught:
        profile_from_dict(document)
    assert (
        str(caught.value)
        == f"{prefix}{key}: passwords are not allowed in profiles; use key_file or ssh-agent"
    )
    assert "hunter2" not in str(caught.value)


def test_malformed_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: pi\nmemory_budget: 1GiB\nproviders: [CPUExecutionProvider\nthreads: 4\n")
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    text = str(caught.value)
    assert "malformed YAML at line 4" in text
    assert "\n" not in text


def test_non_mapping_document(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ProfileError, match="top level: must be a mapping"):
        load_profile(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * MIB),
        ("2GiB", 2 * 1024 * MIB),
        ("1.5GiB", 1536 * MIB),
        ("64 mib", 64 * MIB),
        ("256", 256 * MIB),
        (300, 300 * MIB),
        ("4096KiB", 4 * MIB),
    ],
)
def test_memory_parsing(text: object, expected: int) -> None:
    assert parse_memory(text, "memory_budget") == expected


@pytest.mark.parametrize("text", ["5 gigs", "12MB", "", "GiB", True, None, [1]])
def test_memory_parsing_rejects(text: object) -> None:
    with pytest.raises(
        ProfileError, match=r"^memory_budget: cannot parse .*\(use 512MiB, 2GiB or a MiB integer\)$"
    ):
        parse_memory(text, "memory_budget")


@pytest.mark.parametrize("text", [0, "0MiB", -3])
def test_memory_must_be_positive(text: object) -> None:
    with pytest.raises(ProfileError, match="^memory_budget: must be positive"):
        parse_memory(text, "memory_budget")


def test_resolve_bare_name_and_unknown_name() -> None:
    assert resolve_profile_path("jetson_nano") == BUNDLED_PROFILES_DIR / "jetson_nano.yaml"
    assert resolve_profile_path("jetson_nano.yaml") == BUNDLED_PROFILES_DIR / "jetson_nano.yaml"
    with pytest.raises(ProfileError, match="not a bundled profile.*raspberry_pi_5"):
        resolve_profile_path("toaster")
    with pytest.raises(ProfileError, match="no such file"):
        load_profile("/nonexistent/dir/device.yaml")


def test_relative_key_file_resolves_against_profile_dir(tmp_path: Path) -> None:
    document = _document()
    document["connection"]["key_file"] = "keys/id_ed25519"
    document["connection"]["port"] = 2222
    profile = load_profile(_write(tmp_path, document))
    assert profile.connection.key_file == tmp_path / "keys" / "id_ed25519"
    assert profile.connection.port == 2222
    payload = profile.to_dict()
    assert payload["connection"]["key_file"] == str(tmp_path / "keys" / "id_ed25519")
    assert payload["memory_budget_bytes"] == 1024 * MIB


def test_optional_fields_and_defaults() -> None:
    document = copy.deepcopy(_document("localhost"))
    document.pop("latency_overhead_ms")
    document.pop("batch_size")
    profile = profile_from_dict(document)
    assert profile.batch_size == 1
    assert profile.latency_overhead_ms == 0.0
    assert profile.runtime_overhead_bytes is None
    assert profile.connection.host == "127.0.0.1"
    document.pop("python_version")
    document.pop("max_opset")
    assert (profile_from_dict(document).python_version, profile_from_dict(document).max_opset) == (None, None)
    document["runtime_overhead"] = "300MiB"
    assert profile_from_dict(document).runtime_overhead_bytes == 300 * MIB
