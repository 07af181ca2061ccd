"""The C contract (onebit/export/c_contract.py) has one source: the generated onebit_contract.h is pinned by
a snapshot, the C templates define none of its names themselves, and a compiled runtime reports them.

Regenerate the snapshot after an intended change with ``ONEBIT_UPDATE_SNAPSHOTS=1``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from onebit.export import c_contract
from onebit.export.c_build import run_make
from onebit.export.c_runtime import TEMPLATES, export_c
from onebit.models import WRNConfig, build_model

from conftest import check_snapshot

SNAPSHOT = Path(__file__).parent / "snapshots" / "onebit_contract.h"


def test_generated_header_matches_snapshot():
    check_snapshot(SNAPSHOT, c_contract.contract_header())


def test_templates_do_not_redefine_the_contract():
    """Every contract name is defined only in the generated header; the sources use the names, never the
    numbers (e.g. the arena alignment, the bytes per tap)."""
    names = ([e.name for e in c_contract.ERRORS] + [f"ONEBIT_{m.upper()}" for m in c_contract.MODES] +
             ["ONEBIT_ARENA_ALIGN", "OB_SLOT_ALIGN", "OB_NCO", "OB_TAP_BYTES"])
    kinds = [c_contract.kind_name(g, k) for g, ks in (("EPI", c_contract.EPILOGUES), ("ACT", c_contract.ACTIVATIONS),
                                                       ("RES", c_contract.RESIDUALS)) for k in ks]
    for path in TEMPLATES.rglob("*"):
        if path.suffix not in (".c", ".h"):
            continue
        text = path.read_text()
        for name in names:
            assert not re.search(rf"#\s*define\s+{name}\b", text), f"{path.name} defines {name}"
        for kind in kinds:
            assert not re.search(rf"\b{kind}\s*=", text), f"{path.name} numbers {kind}"
        assert "typedef struct {" not in text or "} ob_layer;" not in text, f"{path.name} declares ob_layer"
        assert not re.search(r"\barena\b[^;\n]*&\s*15u", text), f"{path.name} hard-codes the arena alignment"


def test_layer_table_uses_only_contract_fields(tmp_path):
    out = export_c(build_model(WRNConfig(depth=8, width=1)), tmp_path / "c")
    model_h = (out / "onebit_model.h").read_text()
    table = model_h[model_h.index("ob_layers[ONEBIT_NUM_LAYERS]"):]
    used = set(re.findall(r"\.(\w+) = ", table))
    assert used and used <= set(c_contract.layer_field_names())
    assert (out / "onebit_contract.h").read_text() == c_contract.contract_header()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on PATH")
def test_compiled_runtime_reports_the_contract(tmp_path):
    """A program built from the export prints the values the C side sees; they equal the Python ones."""
    out = export_c(build_model(WRNConfig(depth=8, width=1)), tmp_path / "c")
    (out / "probe.c").write_text(
        '#include <stdio.h>\n#include <stddef.h>\n#include "onebit.h"\n#include "onebit_internal.h"\n'
        "int main(void) {\n"
        '    printf("%d %d %d %d %d %d\\n", OB_NCO, OB_TAP_BYTES, ONEBIT_ARENA_ALIGN, OB_SLOT_ALIGN, ONEBIT_FLOAT, '
        "ONEBIT_INT);\n"
        '    printf("%d %d %d %d %d\\n", ONEBIT_OK, ONEBIT_EARENA, ONEBIT_EARGS, ONEBIT_ENOINT, ONEBIT_ETHREAD);\n'
        "    static unsigned char a[ONEBIT_ARENA_BYTES_F + 64]; float l[ONEBIT_NUM_CLASSES];\n"
        "    unsigned char *p = a + (ONEBIT_ARENA_ALIGN - (size_t)a % ONEBIT_ARENA_ALIGN) % ONEBIT_ARENA_ALIGN;\n"
        "    uint8_t img[ONEBIT_INPUT_BYTES] = {0};\n"
        '    printf("%d %d\\n", onebit_infer(ONEBIT_FLOAT, img, l, p + 1), onebit_infer(ONEBIT_FLOAT, img, l, p));\n'
        "    return 0;\n}\n")
    run_make(out, "onebit_demo", SOURCES="probe.c onebit.c", WERROR="-Werror")    # the Makefile's rule, a probe
    exe = out / "onebit_demo"
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    assert lines[0].split() == [str(v) for v in (c_contract.NCO, c_contract.TAP_BYTES, c_contract.ARENA_ALIGN,
                                                 c_contract.SLOT_ALIGN, c_contract.MODES["float"],
                                                 c_contract.MODES["int"])]
    assert lines[1].split() == [str(e.value) for e in c_contract.ERRORS]
    codes = {e.name: str(e.value) for e in c_contract.ERRORS}
    assert lines[2].split() == [codes["ONEBIT_EARENA"], codes["ONEBIT_OK"]]   # misaligned arena, aligned arena
