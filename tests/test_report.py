"""`opdkit report`: the page is self-contained, renders in headless Chromium, every image loads,
and the console stays silent. CI installs Debian's chromium (.ci/run) and sets
OPDKIT_REQUIRE_CHROMIUM=1 so the browser test cannot silently skip there."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from conftest import engine_overrides

from opdkit import cli
from opdkit.analysis.report import build_report
from opdkit.engine.config import load_config
from opdkit.engine.runner import run
from opdkit.errors import RunDirError


@pytest.fixture(scope="module")
def two_runs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    dirs = []
    for name, objective in (("tail", "topk_rkl_tail"), ("unnorm", "topk_rkl_unnorm")):
        rule = {"name": "always", "metric": "train/epoch", "above": 0.5, "action": "warn"}
        run(load_config("distill", overrides=engine_overrides(tiny_dir, root / name, **{
            "model.teacher": tiny_dir / "teacher", "objective.name": objective, "optim.steps": 6,
            "run.sample_every": 2, "guard.rules": json.dumps([rule])})))
        dirs.append(root / name)
    (dirs[0] / "probe_prefix.json").write_text(json.dumps({"teacher_alone": 1.0, "teacher_after_0.5": 0.4,
                                                           "verdict": "falls"}))
    return dirs


def test_report_is_self_contained_and_has_every_section(two_runs, tmp_path):
    page = build_report(two_runs, tmp_path / "r.html").read_text()
    assert "<h2>Curves</h2>" in page and "Sampled responses" in page and "Probes" in page and "config.yaml" in page
    assert "always" in page                                      # the alarm table
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) >= 1 + 2 * 2 + 1                         # curves, >= 2 clouds per run, a probe chart
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert "http://" not in page and "https://" not in page


def test_report_command_and_bad_run_dir(two_runs, tmp_path, capsys):
    assert cli.main(["report", *map(str, two_runs), "--out", str(tmp_path / "r.html")]) == 0
    with pytest.raises(RunDirError, match="no metrics.jsonl"):
        build_report([tmp_path], tmp_path / "x.html")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(two_runs, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("OPDKIT_REQUIRE_CHROMIUM"):
            pytest.fail("OPDKIT_REQUIRE_CHROMIUM is set but no chromium is installed")
        pytest.skip("no chromium here (apt-get install chromium)")
    page = build_report(two_runs, tmp_path / "r.html")
    done = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = re.search(r'data-images="(\d+)/(\d+)"', done.stdout)
    assert loaded, "the page's load handler never ran"
    assert int(loaded.group(2)) >= 6 and loaded.group(1) == loaded.group(2), loaded.group(0)
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console


def test_word_clouds_survive_responses_without_words(two_runs, tmp_path):
    import shutil

    from opdkit.analysis.report import RunData, word_clouds
    run_dir = tmp_path / "blank"
    shutil.copytree(two_runs[0], run_dir)
    (run_dir / "samples.jsonl").write_text(json.dumps({"step": 1, "texts": ["   \n\n", " \n the a"]}) + "\n")
    assert word_clouds(RunData(run_dir)) == [(1, None)]
    assert "no words" in build_report([run_dir], tmp_path / "r.html").read_text()
