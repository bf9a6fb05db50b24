"""Canonical accelerator names, so that one GPU model is one name across clouds.

Providers spell models differently (AWS ``A100`` with 40 or 80 GiB, GCP
``nvidia-a100-80gb``, Azure ``A100`` in ``Standard_ND96amsr_A100_v4``). Policies and
workloads use the canonical names below; adapters map vendor names with
:func:`canonical_accelerator`.
"""

from __future__ import annotations

import re

CANONICAL: dict[str, float | None] = {
    # name: memory per accelerator in GiB (None where it varies or is not a GPU)
    "B200": 180,
    "B300": 288,
    "GB200": 186,
    "H200": 141,
    "H100": 80,
    "H100-NVL": 94,
    "A100": 40,
    "A100-80GB": 80,
    "L40S": 48,
    "L4": 24,
    "A10G": 24,
    "A10": 24,
    "T4": 16,
    "T4G": 16,
    "V100": 16,
    "V100-32GB": 32,
    "P100": 16,
    "P4": 8,
    "P40": 24,
    "K80": 12,
    "M60": 8,
    "RTX-PRO-6000": 96,
    "RTX-PRO-4500": 32,
    "K520": 4,
    "MI300X": 192,
    "MI25": 16,
    "V620": 32,
    "V710": 24,
    "RADEON-PRO-V520": 8,
    "GAUDI": 32,
    "QUALCOMM-AI100": 16,
    "INFERENTIA": None,
    "INFERENTIA2": 32,
    "TRAINIUM": 32,
    "TRAINIUM2": 96,
    "TPU": None,
}

_ALIASES = {
    "A100-40GB": "A100",
    "A100-SXM4-40GB": "A100",
    "A100-80": "A100-80GB",
    "H100-80GB": "H100",
    "H100-MEGA-80GB": "H100",
    "H100-MEGA": "H100",
    "H200-141GB": "H200",
    "TESLA-T4": "T4",
    "TESLA-V100": "V100",
    "TESLA-P100": "P100",
    "TESLA-P4": "P4",
    "TESLA-K80": "K80",
    "TESLA-M60": "M60",
    "RTX-PRO-6000-BLACKWELL": "RTX-PRO-6000",
    "RTX-PRO-SERVER-6000": "RTX-PRO-6000",
    "TESLA-A100": "A100",
    "GRID-K520": "K520",
    "QUALCOMM-AI100": "QUALCOMM-AI100",
    "AI100": "QUALCOMM-AI100",
    "CLOUD-AI-100": "QUALCOMM-AI100",
    "RTXPRO6000": "RTX-PRO-6000",
    "RADEON-INSTINCT-MI25": "MI25",
    "INSTINCT-MI300X": "MI300X",
    "INFERENTIA1": "INFERENTIA",
    "TRAINIUM1": "TRAINIUM",
    "HL-205": "GAUDI",
}


def canonical_accelerator(name: str, memory_gib: float | None = None) -> str | None:
    """The canonical name of a vendor's accelerator name, or None if unknown.

    ``memory_gib`` (per accelerator) disambiguates families sold in two sizes: an
    ``A100`` with more than 60 GiB is ``A100-80GB``; a ``V100`` with 32 is ``V100-32GB``.
    """
    key = re.sub(r"[\s_]+", "-", name.strip().upper())
    for prefix in ("NVIDIA-", "AMD-", "AWS-", "HABANA-", "QUALCOMM-"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    key = _ALIASES.get(key, key)
    if key not in CANONICAL:
        return None
    if memory_gib is not None:
        if key == "A100" and memory_gib > 60:
            return "A100-80GB"
        if key == "V100" and memory_gib > 24:
            return "V100-32GB"
    return key


# Board power of one accelerator at typical inference load, in kW (vendor TDP figures,
# rounded). Used to turn grid carbon intensity into grams per hour; host power and the
# data centre's PUE are added by the caller.
POWER_KW: dict[str, float] = {
    "B200": 1.0,
    "B300": 1.1,
    "GB200": 1.2,
    "H200": 0.7,
    "H100": 0.7,
    "H100-NVL": 0.4,
    "A100": 0.4,
    "A100-80GB": 0.4,
    "L40S": 0.35,
    "L4": 0.072,
    "A10G": 0.15,
    "A10": 0.15,
    "T4": 0.07,
    "T4G": 0.07,
    "V100": 0.3,
    "V100-32GB": 0.3,
    "P100": 0.25,
    "P4": 0.075,
    "P40": 0.25,
    "K80": 0.3,
    "M60": 0.3,
    "K520": 0.225,
    "RTX-PRO-6000": 0.6,
    "RTX-PRO-4500": 0.2,
    "MI300X": 0.75,
    "MI25": 0.3,
    "V620": 0.3,
    "V710": 0.16,
    "RADEON-PRO-V520": 0.225,
    "GAUDI": 0.35,
    "QUALCOMM-AI100": 0.075,
    "INFERENTIA": 0.05,
    "INFERENTIA2": 0.13,
    "TRAINIUM": 0.2,
    "TRAINIUM2": 0.5,
    "TPU": 0.3,
}
DEFAULT_POWER_KW = 0.3
PUE = 1.15
"""Power usage effectiveness assumed for hyperscale data centres (published ~1.1-1.2)."""
