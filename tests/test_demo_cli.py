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


def test_demo_runs_on_one_thread_and_gives_the_threads_back(monkeypatch):
    """The demo's numbers must not depend on the machine's core count (float sums split over
    threads round differently), so it pins one thread, and leaves the caller's setting as it was."""
    import torch

    from selfcorrect import demo

    seen = []
    monkeypatch.setattr(demo, "_run_demo", lambda cfg, quick: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        demo.run_demo(demo.demo_config(quick=True), quick=True)
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
