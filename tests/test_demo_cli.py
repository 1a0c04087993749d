import json

from selfcorrect.cli import main


def test_demo_quick_runs_the_whole_pipeline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SELFCORRECT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(out), "--run.progress", "false"]) == 0
    printed = capsys.readouterr().out
    assert "| Base |" in printed and "| SCoRe |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["base"]["n"] == results["score"]["n"] == 40
    for name in ("config.yaml", "metrics.jsonl", "results.md", "final/config.json"):
        assert (out / name).exists(), name
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["SCoRe", "base"]
