"""models/ is pure inference: importing and using it never pulls in Ray, Prefect or fsspec."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import samflow.models.registry, samflow.models.check, samflow.models.sam, samflow.models.sam2
import samflow.models.clip, samflow.models.dinov2, samflow.models.owlv2, samflow.models.realesrgan
from samflow.models.registry import load_model
load_model("clip", "tiny://clip", device="cpu")
banned = sorted(m for m in sys.modules if m.split(".")[0] in {"ray", "prefect", "fsspec", "s3fs"})
print(",".join(banned))
"""


def test_models_never_import_orchestration_or_storage():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
