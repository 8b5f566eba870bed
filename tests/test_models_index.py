"""Lazy model families (issue 22): a name imports only the module that registers it.

Each check runs in a fresh interpreter, since the registry and ``sys.modules`` of the test
process already hold every family.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object as its last line."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


_LOADED = (
    "import json, sys; "
    "fam = sorted(m.split('.')[-1] for m in sys.modules if m.startswith('pipeline.models.') and m.count('.') == 2); "
    "print(json.dumps({'families': fam, 'timm': 'timm' in sys.modules, 'torchvision': 'torchvision' in sys.modules}))"
)


def test_the_committed_index_matches_what_each_module_registers():
    """``index`` rebuilds it in a fresh process, leaves first: a stale file exits 1 and names the fix."""
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.models", "index"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout


def test_every_indexed_name_is_registered_by_its_module_alone():
    from pipeline.models._index import MODULE_OF

    code = (
        "import importlib, json\n"
        "from pipeline.models import registry\n"
        f"index = {MODULE_OF!r}\n"
        "missing = []\n"
        "for module in sorted(set(index.values())):\n"
        "    before = set(registry._REGISTRY)\n"
        "    importlib.import_module('pipeline.models.' + module)\n"
        "    missing += [n for n, m in index.items() if m == module and n not in registry._REGISTRY]\n"
        "print(json.dumps({'missing': missing, 'all': sorted(registry._REGISTRY), 'listed': registry.list_models()}))\n"
    )
    got = _fresh(code)
    assert got["missing"] == []
    assert got["all"] == sorted(MODULE_OF) == got["listed"]


def test_simple_cnn_imports_neither_timm_nor_torchvision_nor_other_families():
    got = _fresh("from pipeline.models import create_model; create_model('simple_cnn', 10)\n" + _LOADED)
    assert not got["timm"] and not got["torchvision"]
    assert "simple_cnn" in got["families"]
    assert not {"standard", "van", "res2net", "resneat", "attn_resnet"} & set(got["families"])


def test_a_torchvision_name_imports_its_family_only():
    got = _fresh("from pipeline.models import model_info; model_info('alexnet')\n" + _LOADED)
    assert "standard" in got["families"]
    assert not {"van", "res2net", "resneat", "replknet", "attn_resnet"} & set(got["families"])


def test_a_stale_index_entry_falls_back_to_loading_every_family():
    code = (
        "import pipeline.models._index as ix\n"
        "ix.MODULE_OF['van_b0'] = 'simple_cnn'\n"  # wrong module: the lookup must still find it
        "ix.MODULE_OF.pop('res2net50_ts', None)\n"  # absent from the index
        "from pipeline.models import model_info\n"
        "a, b = model_info('van_b0').family, model_info('res2net50_ts').family\n"
        "import json; print(json.dumps({'families': [a, b]}))\n"
    )
    assert _fresh(code)["families"] == ["van", "res2net"]


def test_an_unknown_name_still_gets_close_matches_from_every_family():
    code = (
        "from common.errors import PipelineError\n"
        "from pipeline.models import model_info\n"
        "try:\n    model_info('van_b9')\nexcept PipelineError as e:\n    msg = str(e)\n"
        "import json; print(json.dumps({'msg': msg}))\n"
    )
    msg = _fresh(code)["msg"]
    assert "unknown model 'van_b9'" in msg and "van_b0" in msg


def test_index_command_reports_a_stale_file_and_write_makes_it_current(tmp_path, monkeypatch, capsys):
    from pipeline.models import __main__ as cli

    stale = tmp_path / "_index.py"
    stale.write_text('MODULE_OF: dict[str, str] = {"simple_cnn": "van"}\n')
    monkeypatch.setattr(cli, "INDEX_FILE", stale)
    assert cli.main(["index"]) == 1
    assert "is stale: run python -m pipeline.models index --write" in capsys.readouterr().err
    assert cli.main(["index", "--write"]) == 0
    assert '"simple_cnn": "simple_cnn"' in stale.read_text()
    assert cli.main(["index"]) == 0
    assert "up to date" in capsys.readouterr().out
