"""The shipped instance-type catalog (``arbiter/data/instance_types.csv``): every row is a
valid :class:`InstanceType`, every type our price and capacity sources mention is in
it, and its numbers agree with independent sources (moto's copy of AWS
DescribeInstanceTypes, Cyclenerd's GCP machine types and, where the shared data set
is present, SkyPilot's Azure catalog).

See ``arbiter/data/instance_types.PROVENANCE.md`` for where each row comes from.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import moto
import pytest

from arbiter.domain.accelerators import CANONICAL, canonical_accelerator
from arbiter.domain.market import InstanceType, Provider

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "arbiter" / "data" / "instance_types.csv"
DATA = Path(__file__).parent / "data"
HEADER = "provider,name,vcpus,memory_gib,accelerator,accelerator_count,accelerator_memory_gib"
MOTO_TYPES = Path(moto.__file__).parent / "ec2" / "resources" / "instance_types.json.gz"

# Required types that are deliberately not in the catalog: their accelerator has no
# canonical name in arbiter.domain.accelerators, so no valid row can be written.
NOT_IN_CATALOG: dict[tuple[str, str], str] = {}

# AWS rows written from AWS's published specifications because moto's data lacks them.
AWS_NOT_IN_MOTO = {
    "dl1.24xlarge",
    "g2.2xlarge",
    "g2.8xlarge",
    *(f"g3.{s}" for s in ("4xlarge", "8xlarge", "16xlarge")),
    "g3s.xlarge",
    *(f"g4ad.{s}" for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")),
    *(f"p2.{s}" for s in ("xlarge", "8xlarge", "16xlarge")),
    *(f"p3.{s}" for s in ("2xlarge", "8xlarge", "16xlarge")),
}

# moto names a few devices differently from the canonical names.
MOTO_NAMES = {
    "T4g": "T4G",
    "RTX PRO Server 6000": "RTX-PRO-6000",
    "Qualcomm AI100": "QUALCOMM-AI100",
    "Radeon Pro V520": "RADEON-PRO-V520",
}

# Where the catalog knowingly differs from moto's accelerator memory (GiB per device).
MOTO_MEMORY_OVERRIDES = {"TRAINIUM2": 96.0}  # moto reports 512 GiB per Trainium2 device

# Cyclenerd's accelerator names that canonical_accelerator does not resolve by itself.
GCP_NAMES = {"H100-80GB-Mega": "H100"}

# SkyPilot's Azure catalog (no licence; used only to cross-check, never copied) has
# known mistakes. Values are SkyPilot's GPU count, which the catalog corrects.
SKYPILOT_WRONG_COUNTS = {
    # ND H100 v5 has 8 H100 GPUs (Microsoft's ND-H100-v5 size table), not 12.
    "Standard_ND96is_H100_v5": 12,
    "Standard_ND96isr_H100_v5": 12,
    # Fractional GPU sizes: SkyPilot rounds the partition up to one whole GPU.
    "Standard_NV6ads_A10_v5": 1,
    "Standard_NV12ads_A10_v5": 1,
    "Standard_NV18ads_A10_v5": 1,
    "Standard_NV4as_v4": 1,
    "Standard_NV8as_v4": 1,
    "Standard_NV16as_v4": 1,
}
SKYPILOT_WRONG_MEMORY = {"Standard_ND96amsr_A100_v4": 1800}  # Microsoft documents 1900 GiB
SKYPILOT_NOT_IN_CATALOG = {"Standard_ND40s_v3"}  # NDv3 preview (Graphcore IPU), no GPU
SKYPILOT_COARSER_NAMES = {"H100-NVL": "H100"}  # SkyPilot does not tell the 94 GB NVL apart


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _shared_data() -> Path | None:
    """The project's shared public-data collection, when it is checked out next to
    the repository (it is not part of the repository)."""
    for candidate in (ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return _read(CATALOG)


@pytest.fixture(scope="module")
def by_key(rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["provider"], r["name"]): r for r in rows}


@pytest.fixture(scope="module")
def moto_types() -> dict[str, Any]:
    with gzip.open(MOTO_TYPES, "rt", encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _instance_type(row: dict[str, str]) -> InstanceType:
    return InstanceType(
        provider=Provider(row["provider"]),
        name=row["name"],
        vcpus=int(row["vcpus"]),
        memory_gib=float(row["memory_gib"]),
        accelerator=row["accelerator"],
        accelerator_count=float(row["accelerator_count"]),
        accelerator_memory_gib=float(row["accelerator_memory_gib"]),
    )


# --- shape -----------------------------------------------------------------------------


def test_file_has_the_exact_header_no_quoting_and_is_sorted(rows: list[dict[str, str]]) -> None:
    text = CATALOG.read_text(encoding="utf-8")
    assert text.splitlines()[0] == HEADER
    assert text.endswith("\n") and '"' not in text
    keys = [(r["provider"], r["name"]) for r in rows]
    assert keys == sorted(keys)
    assert len(keys) == len(set(keys)), "duplicate (provider, name)"


def test_every_row_is_a_valid_instance_type(rows: list[dict[str, str]]) -> None:
    assert rows
    for row in rows:
        it = _instance_type(row)
        assert it.provider in set(Provider)
        assert it.accelerator in CANONICAL, row
        assert it.accelerator_count > 0, row
        assert it.accelerator_memory_gib is not None and it.accelerator_memory_gib > 0
        assert re.fullmatch(r"\d+\.\d", row["accelerator_memory_gib"]), row
        assert re.fullmatch(r"\d+(\.\d{1,4})?", row["accelerator_count"]), row
        assert re.fullmatch(r"\d+", row["vcpus"]), row


def test_accelerator_memory_agrees_with_the_canonical_model(rows: list[dict[str, str]]) -> None:
    """One device (or, for a fractional size, its slice) carries the model's memory,
    within 10 % (AWS reports usable memory, e.g. 22.4 GiB for a 24 GB A10G or L4)."""
    for row in rows:
        nominal = CANONICAL[row["accelerator"]]
        if nominal is None:
            continue
        count = float(row["accelerator_count"])
        expected = nominal * count if count < 1 else nominal
        assert float(row["accelerator_memory_gib"]) == pytest.approx(expected, rel=0.10), row


def test_fractional_counts_are_exact_fractions(rows: list[dict[str, str]]) -> None:
    for row in rows:
        count = float(row["accelerator_count"])
        if count < 1:
            fraction = Fraction(count).limit_denominator(8)
            assert fraction.numerator == 1, row
            assert float(fraction) == pytest.approx(count, abs=5e-5), row


# --- coverage --------------------------------------------------------------------------


def test_every_required_type_is_in_the_catalog(
    by_key: dict[tuple[str, str], dict[str, str]],
) -> None:
    required = {(r["provider"], r["name"]) for r in _read(DATA / "required_instance_types.csv")}
    assert len(required) > 150
    assert set(NOT_IN_CATALOG) <= required
    missing = required - set(by_key) - set(NOT_IN_CATALOG)
    assert not missing, sorted(missing)
    for key, device in NOT_IN_CATALOG.items():
        assert key not in by_key
        assert canonical_accelerator(device) is None, f"{device} now has a canonical name"


def test_required_list_matches_the_shared_data_files() -> None:
    """``tests/data/required_instance_types.csv`` is derived from the shared data set;
    re-derive it when that set is available."""
    shared = _shared_data()
    if shared is None:
        pytest.skip("shared data collection not checked out next to the repository")
    derived = {("gcp", r["machine_type"]) for r in _read(shared / "gcp_gpu_machine_types.csv")}
    derived |= {
        ("gcp", r["machine_type"]) for r in _read(shared / "gcp_gpu_catalog_2025-10-02.csv")
    }
    derived |= {("aws", r["instance_type"]) for r in _read(shared / "aws_spot_advisor_gpu.csv")}
    derived |= {
        (r["cloud"], r["instance_type"])
        for r in _read(shared / "multicloud_gpu_price_changes_train.csv")
    }
    recorded = {(r["provider"], r["name"]) for r in _read(DATA / "required_instance_types.csv")}
    assert recorded == derived


# --- AWS against moto ------------------------------------------------------------------


def _moto_accelerator(info: dict[str, Any]) -> tuple[str | None, float, float]:
    """(canonical name, count, memory GiB per device or slice) from moto's record."""
    if "GpuInfo" in info:
        (gpu,) = info["GpuInfo"]["Gpus"]
        memory = gpu["MemoryInfo"]["SizeInMiB"] / 1024
        name = MOTO_NAMES.get(gpu["Name"]) or canonical_accelerator(gpu["Name"], memory)
        count = gpu["Count"] or gpu["GpuPartitionSize"] * gpu["LogicalGpuCount"]
        return name, float(count), memory
    (device,) = (
        info.get("NeuronInfo", {}).get("NeuronDevices")
        or info["InferenceAcceleratorInfo"]["Accelerators"]
    )
    memory = device["MemoryInfo"]["SizeInMiB"] / 1024
    return canonical_accelerator(device["Name"]), float(device["Count"]), memory


def test_aws_rows_match_moto(rows: list[dict[str, str]], moto_types: dict[str, Any]) -> None:
    aws = [r for r in rows if r["provider"] == "aws"]
    assert {r["name"] for r in aws} - set(moto_types) == AWS_NOT_IN_MOTO
    for row in aws:
        info = moto_types.get(row["name"])
        if info is None:
            continue
        assert int(row["vcpus"]) == info["VCpuInfo"]["DefaultVCpus"], row
        assert float(row["memory_gib"]) == info["MemoryInfo"]["SizeInMiB"] / 1024, row
        name, count, memory = _moto_accelerator(info)
        assert row["accelerator"] == name, row
        assert float(row["accelerator_count"]) == count, row
        memory = MOTO_MEMORY_OVERRIDES.get(row["accelerator"], memory)
        assert float(row["accelerator_memory_gib"]) == pytest.approx(memory, abs=0.05), row


def test_aws_types_missing_from_moto_are_still_missing(moto_types: dict[str, Any]) -> None:
    """When moto gains one of them, its data should replace our hand-written row."""
    assert not AWS_NOT_IN_MOTO & set(moto_types)


# --- GCP against Cyclenerd -------------------------------------------------------------


def test_gcp_rows_match_cyclenerd(rows: list[dict[str, str]]) -> None:
    source = {r["machine_type"]: r for r in _read(DATA / "gcp_gpu_machine_types.csv")}
    gcp = {r["name"]: r for r in rows if r["provider"] == "gcp"}
    assert set(gcp) == set(source)
    for name, row in gcp.items():
        src = source[name]
        assert int(row["vcpus"]) == int(src["vcpus"]), row
        assert float(row["memory_gib"]) == float(src["memory_gb"]), row
        expected = GCP_NAMES.get(src["accelerator"]) or canonical_accelerator(src["accelerator"])
        assert row["accelerator"] == expected, row
        assert float(row["accelerator_count"]) == float(src["accelerator_count"]), row


# --- Azure against SkyPilot (cross-check only) -----------------------------------------


def test_azure_rows_agree_with_skypilot_except_its_known_mistakes(
    by_key: dict[tuple[str, str], dict[str, str]],
) -> None:
    shared = _shared_data()
    if shared is None:
        pytest.skip("SkyPilot's Azure catalog has no licence and is not vendored into tests")
    skypilot = {r["instance_type"]: r for r in _read(shared / "azure_gpu_catalog_skypilot_us.csv")}
    assert set(SKYPILOT_WRONG_COUNTS) | set(SKYPILOT_WRONG_MEMORY) <= set(skypilot)
    for name, src in skypilot.items():
        row = by_key.get(("azure", name))
        if name in SKYPILOT_NOT_IN_CATALOG:
            assert row is None
            continue
        assert row is not None, name
        assert int(row["vcpus"]) == float(src["vcpus"]), name
        memory = SKYPILOT_WRONG_MEMORY.get(name)
        if memory is None:
            assert float(row["memory_gib"]) == float(src["memory_gib"]), name
        else:
            assert float(src["memory_gib"]) == memory != float(row["memory_gib"]), name
        if not src["accelerator_count"]:  # e.g. NC*ads_A10_v4: no accelerator in the source
            continue
        count = float(src["accelerator_count"])
        wrong = SKYPILOT_WRONG_COUNTS.get(name)
        if wrong is None:
            assert float(row["accelerator_count"]) == count, name
        else:
            assert count == wrong != float(row["accelerator_count"]), name
        vendor_name = src["accelerator"].removeprefix("Radeon ")
        ours = SKYPILOT_COARSER_NAMES.get(row["accelerator"], row["accelerator"])
        assert canonical_accelerator(vendor_name) == ours, name
